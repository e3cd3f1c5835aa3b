"""Protocols: what each prompts, how τ is chosen (never on the scored split), and numbers known by hand."""

from __future__ import annotations

import json
from pathlib import Path

import eval_layouts as L
import numpy as np
import pytest

from attnseg.errors import BadConfigError
from attnseg.eval.datasets import get_dataset
from attnseg.eval.fake import ColorKeySegmentor
from attnseg.eval.runner import EvalConfig, run_eval


def _cfg(root: Path, out: Path, dataset: str, **kw: object) -> EvalConfig:
    return EvalConfig(dataset=dataset, root=str(root), out=str(out), progress=False, **kw)  # type: ignore[arg-type]


def test_oracle_tags_never_prompts_an_absent_class(tmp_path: Path) -> None:
    masks = L.build("ade20k", tmp_path / "d", n=6)
    seg = ColorKeySegmentor()
    run_eval(_cfg(tmp_path / "d", tmp_path / "run", "ade20k"), lambda: seg)
    ds = get_dataset("ade20k", tmp_path / "d")
    assert len(seg.calls) == 6
    prompted = [[x.split("|")[0] for x in names] for _, names in seg.calls]
    for s, names in zip(ds.samples, prompted):
        gt = ds.load_mask(s)
        present = {ds.class_names[c] for c in np.unique(gt) if c != 255}
        assert set(names) == present  # every GT class, nothing else
    assert masks  # the layout was built


def test_open_prompts_every_class_split_over_prompts(tmp_path: Path) -> None:
    L.build("ade20k", tmp_path / "d", n=2)
    seg = ColorKeySegmentor()
    m = run_eval(
        _cfg(
            tmp_path / "d", tmp_path / "run", "ade20k", protocol="open", classes_per_prompt=40, batch_size=2
        ),
        lambda: seg,
    )
    assert [n for n, _ in seg.calls] == [2, 2, 2, 2]  # both images per forward, 150 classes in 4 prompts
    assert [len(c) for _, c in seg.calls] == [40, 40, 40, 30]
    ds = get_dataset("ade20k", tmp_path / "d")
    assert [x.split("|")[0] for _, c in seg.calls for x in c] == ds.class_names
    assert "wall" in seg.calls[0][1] and "building|edifice" in seg.calls[0][1]  # synonyms handed over
    assert m["mIoU"] == 1.0 and m["protocol"]["name"] == "open" and m["protocol"]["oracle"] is False


def test_no_synonyms(tmp_path: Path) -> None:
    L.build("voc21", tmp_path / "d", n=2)
    seg = ColorKeySegmentor()
    run_eval(
        _cfg(tmp_path / "d", tmp_path / "run", "voc21", protocol="open", synonyms=False, tau=0.5), lambda: seg
    )
    assert all("|" not in c for _, names in seg.calls for c in names)
    assert "background" not in seg.calls[0][1]  # background is the τ channel, never a prompt


def test_known_numbers_with_a_repainted_class(tmp_path: Path) -> None:
    """Every 'dog' pixel painted as 'person': IoU(dog) = 0, IoU(person) = |person| / (|person| + |dog|)."""
    masks = L.build("voc21", tmp_path / "d", n=8, paint_as={"dog": "person"})
    m = run_eval(
        _cfg(tmp_path / "d", tmp_path / "run", "voc21", protocol="open", tau=0.5), lambda: ColorKeySegmentor()
    )
    px = {v: sum(int((mk == v).sum()) for mk in masks.values()) for v in (0, 1, 12, 15, 20)}
    assert px[12] > 0 and px[15] > 0
    iou = m["per_class_iou"]
    assert iou["dog"] == 0.0
    assert iou["person"] == pytest.approx(px[15] / (px[15] + px[12]))
    assert iou["background"] == 1.0 and iou["aeroplane"] == 1.0 and iou["tv monitor"] == 1.0
    present = [1.0, 1.0, 0.0, px[15] / (px[15] + px[12]), 1.0]
    assert m["mIoU"] == pytest.approx(sum(present) / 5)
    assert iou["cat"] is None  # absent from GT and prediction: NaN, not 0, and not in the mean
    total = sum(px.values())
    assert m["pixel_accuracy"] == pytest.approx((total - px[12]) / total)
    assert m["counts"]["pixels"] == total


def test_no_background_tau_rule_leaves_void_pixels(tmp_path: Path) -> None:
    """On ADE (no background) a class missing from the colour key is void under the τ rule, a miss."""
    masks = L.build("ade20k", tmp_path / "d", n=4, paint_as={"wall": "not a class"})
    seg = lambda: ColorKeySegmentor()  # noqa: E731
    m = run_eval(_cfg(tmp_path / "d", tmp_path / "r", "ade20k", no_background="tau", tau=0.5), seg)
    wall = sum(int((mk == 1).sum()) for mk in masks.values())
    assert m["counts"]["void_pixels"] == wall
    assert m["per_class_iou"]["wall"] == 0.0
    assert "void" in m["protocol"]["description"]


def test_tau_search_refused_where_tau_changes_nothing(tmp_path: Path) -> None:
    L.build("ade20k", tmp_path / "d", n=2)
    with pytest.raises(BadConfigError, match="τ changes nothing"):
        run_eval(_cfg(tmp_path / "d", tmp_path / "r", "ade20k", tau_search="test-oracle"), ColorKeySegmentor)


def test_heldout_tau_is_chosen_on_the_train_split_only(tmp_path: Path) -> None:
    L.build("voc21", tmp_path / "d", n=6, split="val")
    train = L.build("voc21", tmp_path / "d", n=5, split="train")
    seg = ColorKeySegmentor(noise=0.3)
    cfg = _cfg(
        tmp_path / "d",
        tmp_path / "run",
        "voc21",
        protocol="open",
        tau_search="heldout",
        tau_grid=(0.2, 0.5, 0.8, 0.97),
    )
    m = run_eval(cfg, lambda: seg)
    tau = json.loads((tmp_path / "run" / "tau.json").read_text())
    assert tau["on"]["split"] == "train" and tau["on"]["images"] == 5 and tau["oracle"] is False
    best = max(range(4), key=lambda k: tau["mIoU"][k])
    assert tau["chosen"] == tau["grid"][best] == m["tau"]
    assert m["protocol"]["tau_mode"] == "heldout" and m["protocol"]["oracle_tau"] is False
    held_ids = {
        json.loads(x)["id"] for x in (tmp_path / "run/records/tau-r0of1.jsonl").read_text().splitlines()
    }
    assert held_ids == set(train)
    main = [json.loads(x) for x in (tmp_path / "run/records/main-r0of1.jsonl").read_text().splitlines()]
    assert {r["tau"] for r in main} == {m["tau"]} and not (held_ids & {r["id"] for r in main})


def test_heldout_on_the_scored_split_is_refused(tmp_path: Path) -> None:
    L.build("voc21", tmp_path / "d", n=3)
    with pytest.raises(BadConfigError, match="shares 3 images with the scored split"):
        run_eval(
            _cfg(tmp_path / "d", tmp_path / "r", "voc21", tau_search="heldout", tau_split="val"),
            ColorKeySegmentor,
        )
    L.build("world", tmp_path / "w", n=3)
    L.build("world", tmp_path / "w2", n=3)  # another folder, same split and seed: the same scenes
    with pytest.raises(BadConfigError, match="shares 3 images"):
        run_eval(
            _cfg(
                tmp_path / "w", tmp_path / "r2", "world", tau_search="heldout", tau_root=str(tmp_path / "w2")
            ),
            ColorKeySegmentor,
        )
    with pytest.raises(BadConfigError, match="no default held-out split"):
        run_eval(_cfg(tmp_path / "w", tmp_path / "r3", "world", tau_search="heldout"), ColorKeySegmentor)


def test_world_heldout_from_another_render(tmp_path: Path) -> None:
    L.build("world", tmp_path / "val", n=4, split="val")
    L.build("world", tmp_path / "train", n=4, split="train")
    cfg = _cfg(
        tmp_path / "val", tmp_path / "r", "world", tau_search="heldout", tau_root=str(tmp_path / "train")
    )
    m = run_eval(cfg, lambda: ColorKeySegmentor(noise=0.2))
    assert m["tau_search"]["on"]["split"] == "train" and m["tau"] in m["tau_search"]["grid"]


def test_test_oracle_sweep_is_labelled_and_equals_best_fixed_tau(tmp_path: Path) -> None:
    L.build("context60", tmp_path / "d", n=5)
    seg = lambda: ColorKeySegmentor(noise=0.3)  # noqa: E731
    grid = (0.3, 0.6, 0.9)
    m = run_eval(
        _cfg(
            tmp_path / "d",
            tmp_path / "o",
            "context60",
            protocol="open",
            tau_search="test-oracle",
            tau_grid=grid,
        ),
        seg,
    )
    assert m["protocol"]["oracle"] is True and m["protocol"]["oracle_tau"] is True
    assert "oracle" in m["protocol"]["description"] and m["tau_search"]["oracle"] is True
    fixed = [
        run_eval(_cfg(tmp_path / "d", tmp_path / f"f{t}", "context60", protocol="open", tau=t), seg)["mIoU"]
        for t in grid
    ]
    assert m["tau_search"]["mIoU"] == pytest.approx(fixed)
    assert m["mIoU"] == pytest.approx(max(fixed)) and m["tau"] == grid[fixed.index(max(fixed))]


def test_segmentor_own_tau_is_used_and_recorded(tmp_path: Path) -> None:
    L.build("voc21", tmp_path / "d", n=3)
    m = run_eval(
        _cfg(tmp_path / "d", tmp_path / "r", "voc21"), lambda: ColorKeySegmentor(tau=0.35, noise=0.2)
    )
    assert m["tau"] == 0.35 and m["protocol"]["tau_mode"] == "fixed"


def test_protocol_settings_are_checked() -> None:
    with pytest.raises(BadConfigError, match="unknown protocol"):
        EvalConfig(dataset="voc21", root=".", out=".", protocol="closed").protocol_obj()
    with pytest.raises(BadConfigError, match=r"\[0, 1\]"):
        EvalConfig(dataset="voc21", root=".", out=".", tau=3.0).protocol_obj()
    with pytest.raises(BadConfigError, match="fixed τ"):
        EvalConfig(dataset="voc21", root=".", out=".", tau=0.3, tau_search="heldout").protocol_obj()


def test_a_world_without_background_is_scored_without_a_background_class(tmp_path: Path) -> None:
    """issue 12: the rendered world has no background pixel, so τ decides nothing and no background is scored."""
    render = pytest.importorskip("attnseg.world.render")
    w = render.render_split(tmp_path / "w", "val", n=3, seed=0, progress=False)
    seg = lambda: ColorKeySegmentor(noise=0.3)  # noqa: E731
    at_half = run_eval(_cfg(w, tmp_path / "a", "world", tau=0.5), seg)
    at_zero = run_eval(_cfg(w, tmp_path / "b", "world", tau=0.0), seg)
    own = run_eval(_cfg(w, tmp_path / "c", "world"), lambda: ColorKeySegmentor(tau=0.9, noise=0.3))
    assert list(at_half["per_class_iou"]) == [c.name for c in render.CLASSES]
    assert at_half["mIoU"] == at_zero["mIoU"] == own["mIoU"] and at_half["mIoU"] is not None
    assert at_half["tau"] is None and at_half["protocol"]["tau_mode"] == "none"
    assert at_half["counts"]["void_pixels"] == 0 and set(at_half["kind_iou"]) == {"stuff", "thing"}
    with pytest.raises(BadConfigError, match="τ changes nothing"):
        run_eval(_cfg(w, tmp_path / "d", "world", tau_search="test-oracle"), seg)
