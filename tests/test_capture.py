"""The capture must not change the model, and its streamed reductions must equal the stored-maps computation."""

import pytest
import torch

from attnseg.backbones import load_backbone
from attnseg.errors import BadConfigError
from attnseg.method.config import MethodConfig, method_config
from attnseg.method.heads import aggregate_heads, head_weights
from attnseg.method.layers import layer_similarity, reference_affinity, resize_self_attention
from attnseg.method.pipeline import TokenLayout, run_method
from attnseg.method.streaming import AttentionPlan, CapturePlan, StreamingReducer, attend
from attnseg.testing import joint_read_plan

MEAN_HEADS = MethodConfig(head_aggregation="mean")


def _reducer(
    latent, keep, map_size, reference_grid, propagation, config: MethodConfig = MEAN_HEADS
) -> StreamingReducer:
    return StreamingReducer(CapturePlan({}, map_size, reference_grid, propagation), latent, keep, config)


def _inputs(backbone):
    g = torch.Generator().manual_seed(0)
    noisy = torch.randn(2, 4, 16, 16, generator=g)
    cond = backbone.encode_text(["a photo of cat and grass.", "a photo of wall."])
    return noisy, torch.tensor([100, 100]), cond


def test_unet_output_unchanged_by_capture(tiny_sd):
    backbone = load_backbone(tiny_sd)
    noisy, t, cond = _inputs(backbone)
    plain = backbone.denoiser(noisy, t, **cond).sample
    config = MethodConfig()
    plan = backbone.capture_plan((16, 16), config)
    reducer = StreamingReducer(plan, (16, 16), 12, config)
    with backbone.capturing(plan, reducer):
        captured_out = backbone.denoiser(noisy, t, **cond).sample
    assert torch.allclose(plain, captured_out, atol=1e-5)
    after = backbone.denoiser(noisy, t, **cond).sample  # processors were restored
    assert torch.allclose(plain, after, atol=1e-6)
    result = reducer.finish()
    assert len(result.grids) == 7 and result.layer_scores.shape == (2, 7)
    assert result.affinity.shape == (2, 256, 256)


def test_attend_streams_what_stored_maps_would_give():
    torch.manual_seed(0)
    b, h, p, n, d = 1, 3, 16, 5, 4
    q, k_txt, v_txt = torch.randn(b, h, p, d), torch.randn(b, h, n, d), torch.randn(b, h, n, d)
    k_img, v_img = torch.randn(b, h, p, d), torch.randn(b, h, p, d)
    weight = torch.randn(6, h * d)
    reducer = _reducer((4, 4), 3, (4, 4), (4, 4), {"L"})
    feature = torch.randn(b, p, 8)
    reducer.set_reference(feature, (4, 4))
    out_cross = attend(
        q,
        k_txt,
        v_txt,
        scale=d**-0.5,
        mask=None,
        reducer=reducer,
        out_proj_weight=weight,
        plan=AttentionPlan("L", read_cross=True, text_keys=slice(None)),
    )
    attend(
        q,
        k_img,
        v_img,
        scale=d**-0.5,
        mask=None,
        reducer=reducer,
        plan=AttentionPlan("L", read_self=True, image_keys=slice(None)),
    )
    probs = (q @ k_txt.transpose(-1, -2) * d**-0.5).softmax(-1)
    assert torch.allclose(out_cross, probs @ v_txt, atol=1e-5)
    full = aggregate_heads(probs, None)
    expected = torch.cat([full[..., :3], full[..., 3:].sum(-1, keepdim=True)], -1)
    captured = reducer.finish()
    assert torch.allclose(captured.cross[0], expected, atol=1e-6)
    self_attn = (q @ k_img.transpose(-1, -2) * d**-0.5).softmax(-1).mean(1)
    ref = reference_affinity(feature)
    assert torch.allclose(captured.layer_scores[0, 0], layer_similarity(ref, self_attn)[0], atol=1e-5)
    assert torch.allclose(captured.affinity, self_attn, atol=1e-6)


@pytest.mark.parametrize("propagation", [{"J"}, set()])
def test_joint_attend_restricts_softmax_per_block(propagation):
    torch.manual_seed(1)
    b, h, n, p, d = 1, 2, 3, 4, 4  # joint sequence: [text (3), image (4)]
    q, k, v = (torch.randn(b, h, n + p, d) for _ in range(3))
    reducer = _reducer((2, 2), 3, (2, 2), (2, 2), propagation)
    reducer.set_reference(torch.randn(b, p, 5), (2, 2))
    plan = joint_read_plan(n, p)
    out = attend(
        q, k, v, scale=d**-0.5, mask=None, plan=plan, reducer=reducer, out_proj_weight=torch.randn(5, h * d)
    )
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(out, reference, atol=1e-5)  # text rows and image rows both exact
    logits = q[:, :, n:] @ k.transpose(-1, -2) * d**-0.5
    captured = reducer.finish()
    cross = logits[..., :n].softmax(-1).mean(1)
    assert torch.allclose(captured.cross[0][..., :3], cross, atol=1e-6)
    self_attn = logits[..., n:].softmax(-1).mean(1)
    assert torch.allclose(
        captured.layer_scores[0, 0], layer_similarity(reducer.reference, self_attn)[0], atol=1e-5
    )
    if propagation:
        assert torch.allclose(captured.affinity, self_attn, atol=1e-6)
    else:
        assert captured.affinity is None


def test_scoring_only_layers_compute_just_the_reference_rows():
    torch.manual_seed(2)
    b, h, p, d = 1, 2, 64, 4  # an 8×8 layer scored against a 4×4 reference
    q, k, v = (torch.randn(b, h, p, d) for _ in range(3))
    reducer = _reducer((8, 8), 2, (8, 8), (4, 4), set())
    reducer.set_reference(torch.randn(b, 16, 6), (4, 4))
    reducer.add_cross("S", torch.softmax(torch.randn(b, h, p, 3), -1), (8, 8), torch.randn(b, h, p, d), None)
    out = attend(
        q,
        k,
        v,
        scale=d**-0.5,
        mask=None,
        reducer=reducer,
        plan=AttentionPlan("S", read_self=True, image_keys=slice(None)),
    )
    assert torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-5)
    full = (q @ k.transpose(-1, -2) * d**-0.5).softmax(-1).mean(1)
    expected = layer_similarity(reducer.reference, resize_self_attention(full, (8, 8), (4, 4), True))
    assert torch.allclose(reducer.finish().layer_scores[:, 0], expected, atol=1e-5)


def test_vanilla_plan_reads_only_what_it_needs(tiny_sd):
    backbone = load_backbone(tiny_sd)
    goca = backbone.capture_plan((16, 16), method_config("goca"))
    vanilla = backbone.capture_plan((16, 16), method_config("vanilla", refine="none"))
    assert sum(p.read_self for p in goca.plans.values()) == 7
    assert sum(p.read_self for p in vanilla.plans.values()) == 0 and vanilla.reference_grid is None
    assert goca.reference_grid == (16, 16) and goca.map_size == (16, 16)  # second up level with attention


def test_resize_to_reference_grid_is_used_for_scores():
    attn = torch.softmax(torch.randn(1, 64, 64), -1)
    small = resize_self_attention(attn, (8, 8), (4, 4), True)
    assert small.shape == (1, 16, 16)


def test_propagation_layers_knob_picks_the_last_finest_decoder_layers(tiny_sd):
    backbone = load_backbone(tiny_sd)
    everything = backbone.capture_plan((16, 16), method_config("goca"))
    assert everything.propagation_layers == {
        "up_blocks.2.attentions.0.transformer_blocks.0",
        "up_blocks.2.attentions.1.transformer_blocks.0",
    }
    last = backbone.capture_plan((16, 16), method_config("goca", propagation_layers=1))
    assert last.propagation_layers == {"up_blocks.2.attentions.1.transformer_blocks.0"}


@pytest.mark.parametrize("propagation", [{"J"}, set()], ids=["propagation-path", "fused-path"])
def test_goca_heads_are_weighted_by_the_output_and_mean_heads_never_compute_weights(propagation, monkeypatch):
    torch.manual_seed(3)
    b, h, n, p, d = 1, 3, 3, 4, 4  # joint sequence: [text (3), image (4)]
    q, k, v = (torch.randn(b, h, n + p, d) for _ in range(3))
    weight = torch.randn(5, h * d)
    plan = joint_read_plan(n, p)
    captured = {}
    for heads in ("goca", "mean"):
        reducer = _reducer((2, 2), 3, (2, 2), None, propagation, MethodConfig(head_aggregation=heads))
        attend(q, k, v, scale=d**-0.5, mask=None, plan=plan, reducer=reducer, out_proj_weight=weight)
        captured[heads] = reducer.finish()
        assert captured[heads].head_aggregation == heads
    out_img = torch.nn.functional.scaled_dot_product_attention(q, k, v)[:, :, n:]
    probs = (q[:, :, n:] @ k[:, :, :n].transpose(-1, -2) * d**-0.5).softmax(-1)
    goca = aggregate_heads(probs, head_weights(out_img, weight))
    assert len(captured["goca"].cross) == 1 and torch.allclose(
        captured["goca"].cross[0][..., :3], goca, atol=1e-5
    )
    assert torch.allclose(captured["mean"].cross[0][..., :3], probs.mean(1), atol=1e-6)
    assert not torch.allclose(goca, probs.mean(1), atol=1e-4)

    def refuse(*args):
        raise AssertionError("head weights computed for a mean-heads config")

    monkeypatch.setattr("attnseg.method.streaming.head_weights", refuse)
    reducer = _reducer((2, 2), 3, (2, 2), None, propagation, MEAN_HEADS)
    attend(q, k, v, scale=d**-0.5, mask=None, plan=plan, reducer=reducer, out_proj_weight=weight)
    assert torch.equal(reducer.finish().cross[0], captured["mean"].cross[0])


def test_method_refuses_a_capture_reduced_for_other_heads():
    reducer = _reducer((2, 2), 2, (2, 2), None, set(), MEAN_HEADS)
    reducer.add_cross("L", torch.softmax(torch.randn(1, 2, 4, 3), -1), (2, 2), torch.randn(1, 2, 4, 4), None)
    layout = TokenLayout([[[0]]], [], [0], [])
    assert run_method(reducer.finish(), layout, method_config("vanilla", refine="none")).class_maps.shape == (
        1,
        1,
        2,
        2,
    )
    with pytest.raises(BadConfigError, match="capture again"):
        run_method(reducer.finish(), layout, method_config("goca", refine="none"))
