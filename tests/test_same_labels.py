"""Every speed or memory optimisation leaves the labels as they were: each is compared with the plain way."""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from attnseg.method.config import MethodConfig
from attnseg.method.labels import assign_labels
from attnseg.method.streaming import AttentionPlan, CapturePlan, StreamingReducer, attend
from attnseg.prompts import PromptBuilder
from attnseg.segmentor import Segmentor
from attnseg.testing import joint_read_plan
from attnseg.world import model as wm
from attnseg.world.render import CLASSES, render_scenes

NAMES = {c.id: c.name for c in CLASSES}
EMBEDDED = wm.models_dir().is_dir() and any(wm.models_dir().glob("world-*/model_index.json"))
needs_embedded = pytest.mark.skipif(not EMBEDDED, reason="no world model is shipped in this build")


@pytest.fixture(scope="module")
def embedded():
    # The capture path itself: the presence step (on by default) encodes the image again for its own test.
    return Segmentor.from_pretrained(None, device="cpu", dtype="float32", presence="off")


@pytest.fixture(scope="module")
def scenes():
    return [
        (Image.fromarray(s.image), [NAMES[i] for i in s.present]) for _, s in render_scenes("test", 4, seed=3)
    ]


def _same(a, b, atol: float = 1e-4) -> None:
    assert a.classes == b.classes
    assert torch.equal(a.labels, b.labels)
    assert torch.allclose(a.scores, b.scores, atol=atol)


# -- chunked attention ----------------------------------------------------------------------------------
def _reduce(budget_mib: float, plan: AttentionPlan, q, k, v, mask, weight, propagation: set[str]):
    config = MethodConfig(attention_chunk_mib=budget_mib)
    reducer = StreamingReducer(CapturePlan({}, (4, 4), (2, 2), propagation), (4, 4), 3, config)
    reducer.set_reference(torch.randn(1, 4, 6, generator=torch.Generator().manual_seed(9)), (2, 2))
    out = attend(q, k, v, scale=0.5, mask=mask, plan=plan, reducer=reducer, out_proj_weight=weight)
    return out, reducer.finish(), reducer.transient_bytes


@pytest.mark.parametrize("propagation", [{"J"}, set()], ids=["propagation-path", "fused-path"])
@pytest.mark.parametrize("masked", [False, True])
def test_chunked_attention_gives_the_unchunked_reductions(propagation, masked):
    torch.manual_seed(0)
    h, n, p, d = 3, 5, 16, 4  # joint sequence [text (5), image (16 = 4×4)], a mask per head
    q, k, v = (torch.randn(1, h, n + p, d) for _ in range(3))
    mask = torch.randn(1, h, n + p, n + p) if masked else None
    weight = torch.randn(7, h * d)
    plan = joint_read_plan(n, p)
    whole = _reduce(1e6, plan, q, k, v, mask, weight, propagation)
    # 4 bytes × 21 keys × 1 head: one query row of one head per chunk, the smallest the budget allows.
    tiny = _reduce(84 / 2**20, plan, q, k, v, mask, weight, propagation)
    assert tiny[2] < whole[2]
    assert torch.allclose(whole[0], tiny[0], atol=1e-6)
    a, b = whole[1], tiny[1]
    assert torch.allclose(a.cross[0], b.cross[0], atol=1e-6)
    assert torch.allclose(a.layer_scores, b.layer_scores, atol=1e-6)
    assert (a.affinity is None) == (not propagation)
    if propagation:
        assert torch.allclose(a.affinity, b.affinity, atol=1e-6)


@needs_embedded
def test_chunk_size_leaves_labels_unchanged(embedded, scenes):
    default = [embedded.segment(image, classes) for image, classes in scenes]
    for budget in (1e6, 0.05):  # one chunk per call; a few query rows per chunk
        chunked = embedded.with_config(attention_chunk_mib=budget)
        for (image, classes), before in zip(scenes, default):
            _same(before, chunked.segment(image, classes))


# -- one encode per image ----------------------------------------------------------------------------------
@needs_embedded
def test_one_encode_per_image_gives_the_labels_of_one_encode_per_prompt(embedded, scenes, monkeypatch):
    seg = copy.copy(embedded)
    builder = embedded.builder
    seg.builder = PromptBuilder(builder.tokenizer, 12, builder.template)  # a small budget: several prompts
    image, _ = scenes[0]
    classes = [c.name for c in CLASSES]
    once = seg.segment(image, classes)
    assert len(once.meta["prompts"]) >= 3

    backbone = seg.backbone
    encoded = []
    real_encode, real_capture = backbone.encode_images, backbone.capture

    def encode(pixels):
        encoded.append(pixels.shape[0])
        return real_encode(pixels)

    def per_prompt(pixels, prompts, keep, config, generator, image_rows=None):
        return real_capture(pixels[image_rows], prompts, keep, config, generator)  # the pixels once per row

    monkeypatch.setattr(backbone, "encode_images", encode)
    seg.segment(image, classes)
    assert encoded == [1]
    monkeypatch.setattr(backbone, "capture", per_prompt)
    _same(once, seg.segment(image, classes))
    assert encoded[1] == len(once.meta["prompts"])


# -- batches across class lists -----------------------------------------------------------------------------
@needs_embedded
def test_batched_class_lists_give_the_labels_of_one_image_at_a_time(embedded, scenes):
    lists = [classes for _, classes in scenes]
    assert len({tuple(c) for c in lists}) > 1
    alone = [embedded.segment(image, classes) for image, classes in scenes]
    batched = embedded.with_config()
    batched.batch_size = len(scenes)
    together = batched.segment_each([image for image, _ in scenes], lists)
    assert together[0].meta["timings"]["batch_images"] == len(scenes)
    for before, after in zip(alone, together):
        _same(before, after)
        assert before.meta["diagnostics"][0]["layer_weights"] == pytest.approx(
            after.meta["diagnostics"][0]["layer_weights"], abs=1e-5
        )


def test_segment_each_on_a_tiny_model_matches_segment(tiny_sd, random_image):
    seg = Segmentor.from_pretrained(tiny_sd, method="vanilla", device="cpu", batch_size=2)
    other = random_image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    results = seg.segment_each([random_image, other], [["cat", "wall"], ["grass"]], seed=1)
    assert [r.classes for r in results] == [["cat", "wall"], ["grass"]]
    assert results[0].meta["timings"]["batch_rows"] == 2
    single = seg.segment(random_image, ["cat", "wall"], seed=1)
    # A random model's maps are nearly flat: batched-BLAS noise is stretched by min-max (see test_segment).
    assert torch.allclose(results[0].scores, single.scores, atol=2e-2)


# -- labels at the image size -------------------------------------------------------------------------------
def test_fast_argmax_gives_the_strided_argmax_ties_included():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(2, 5, 33, 47, generator=g).mul(4).round().div(4)  # many exact ties, also with τ
    background = torch.rand(2, 2, 33, 47, generator=g)
    for tau, bg in ((0.5, None), (0.25, background)):
        base = torch.full_like(scores[:, :1], tau)
        if bg is not None:
            base = torch.maximum(base, bg.amax(1, keepdim=True))
        slow = torch.cat([base, scores], 1).argmax(1)
        assert torch.equal(assign_labels(scores, tau, bg), slow)
        assert torch.equal(assign_labels(scores[0], tau, None if bg is None else bg[0]), slow[0])
