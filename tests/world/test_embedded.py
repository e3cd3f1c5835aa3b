"""Checks of the shipped world models: layout, size budget, and a quality floor a broken method would miss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from attnseg.world import model as wm
from attnseg.world.render import CLASSES, render_scenes

MODELS = wm.models_dir()
SHIPPED = (
    sorted(p for p in MODELS.glob("world-*") if (p / "model_index.json").is_file()) if MODELS.is_dir() else []
)
FLOOR = (
    55.0  # mIoU % the default model with goca must reach on 24 test scenes (oracle classes, no background)
)

pytestmark = pytest.mark.skipif(not SHIPPED, reason="no world model is shipped in this build")


def test_shipped_models_fit_the_budget_and_use_safetensors():
    total = sum(f.stat().st_size for p in SHIPPED for f in p.rglob("*") if f.is_file())
    assert total <= 40 * 2**20, f"shipped world models take {total / 2**20:.1f} MB"
    for p in SHIPPED:
        assert not [f for f in p.rglob("*") if f.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        index = json.loads((p / "model_index.json").read_text())
        assert index["_class_name"] == "StableDiffusionPipeline"
        for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            assert (p / sub).is_dir()
    default = (MODELS / "DEFAULT").read_text().strip()
    assert (MODELS / default / "model_index.json").is_file()


def _miou(preds: list[np.ndarray], truths: list[np.ndarray]) -> float:
    """Dataset mIoU by eval's ConfusionMeter (eval id = world id - 1; the world has no background)."""
    from attnseg.eval.metrics import ConfusionMeter

    meter = ConfusionMeter(len(CLASSES))
    for p, t in zip(preds, truths):
        meter.update(torch.from_numpy(p.astype(np.int64) - 1), torch.from_numpy(t.astype(np.int64) - 1))
    return 100 * meter.compute().miou


def _oracle_mious(n: int = 24) -> dict[str, float]:
    """mIoU on n test scenes, prompted with the present classes (argmax, no background), for the default model
    with goca and for three broken variants: random maps, a wrong class order, token spans shifted by one."""
    from attnseg import Segmentor
    from attnseg.prompts import PromptBuilder

    seg = Segmentor.from_pretrained(None, method="goca", device="cpu", dtype="float32", presence="off")
    names = {c.id: c.name for c in CLASSES}
    scenes = [scene for _, scene in render_scenes("test", n, seed=0)]
    g = torch.Generator().manual_seed(0)
    preds: dict[str, list[np.ndarray]] = {"goca": [], "random": [], "wrong order": [], "shifted spans": []}
    for scene in scenes:
        ids = np.array(scene.present)
        best = seg.segment(Image.fromarray(scene.image), [names[i] for i in ids]).scores.argmax(0).numpy()
        preds["goca"].append(ids[best])
        preds["wrong order"].append(np.roll(ids, 1)[best])
        preds["random"].append(ids[torch.rand((len(ids), *scene.mask.shape), generator=g).argmax(0).numpy()])
    original = PromptBuilder._entity_tokens
    PromptBuilder._entity_tokens = lambda self, *a: [p + 1 for p in original(self, *a)]
    try:
        for scene in scenes:
            ids = np.array(scene.present)
            best = seg.segment(Image.fromarray(scene.image), [names[i] for i in ids]).scores.argmax(0).numpy()
            preds["shifted spans"].append(ids[best])
    finally:
        PromptBuilder._entity_tokens = original
    truths = [scene.mask for scene in scenes]
    return {name: _miou(p, truths) for name, p in preds.items()}


def test_default_model_clears_a_floor_that_broken_methods_miss():
    # Measured on 2 CPU cores (world-m32, its attnseg.json: t = 100, k = 2, no blur): goca 68.2, random maps
    # 10.1, a wrong class order 1.1, spans shifted by one 14.2 (64.0 on the 500 val scenes; docs/WORLD.md).
    scores = _oracle_mious()
    assert scores["goca"] >= FLOOR, scores
    for broken in ("random", "wrong order", "shifted spans"):
        assert scores["goca"] >= scores[broken] + 3, (broken, scores)


def test_each_model_ships_its_tuned_timestep_and_tau():
    for p in SHIPPED:
        data = json.loads((p / "attnseg.json").read_text())
        best = max(data["tuned"]["grid"], key=lambda g: g["miou"])
        assert data["preset"] == {"timestep": best["timestep"], "refine_steps": best["refine_steps"]}, p.name
        # τ 0: the world has no background pixel, so every pixel takes its best class
        assert data["method"] == {"blur": best["blur"], "tau": 0.0}, p.name


def test_default_world_eval_gives_the_tuned_number_whatever_tau(tmp_path, capsys):
    """issue 12: `attnseg eval --dataset world` scored a background the world never has (τ 0.5: 56.2 vs 60.5)."""
    from attnseg.cli import main
    from attnseg.world.render import render_split

    root = render_split(tmp_path / "val", "val", n=4, seed=0, progress=False)
    base = ["eval", "--dataset", "world", "--root", str(root), "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "default")]) == 0
    assert main([*base, "--out", str(tmp_path / "half"), "--tau", "0.5"]) == 0
    default, half = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("default", "half"))
    assert "background" not in default["per_class_iou"] and default["tau"] is None
    assert default["mIoU"] == half["mIoU"] and default["counts"]["void_pixels"] == 0
    meta = json.loads((tmp_path / "default" / "segmentor.json").read_text())["meta"]
    tuned = json.loads((MODELS / (MODELS / "DEFAULT").read_text().strip() / "attnseg.json").read_text())
    assert meta["timestep"] == tuned["preset"]["timestep"]
    assert meta["settings"]["refine_steps"] == tuned["preset"]["refine_steps"]
    assert meta["settings"]["tau"] == 0.0 and meta["settings"]["blur"] is False


def test_a_single_class_is_found_where_it_is():
    """One class named alone (one object against the rest) gets a real map, not all background."""
    from attnseg import Segmentor
    from attnseg.world.render import CLASSES, render_scenes

    # The embedded models ship τ 0 (a world scene is covered by the classes its caption names); one class
    # against the rest needs a background threshold.
    seg = Segmentor.from_pretrained(None).with_config(tau=0.5)
    ious = []
    for _, scene in render_scenes("test", 4, 0):
        cid = scene.present[0]
        result = seg.segment(Image.fromarray(scene.image), [CLASSES[cid - 1].name])
        pred, truth = result.labels.numpy() == 1, scene.mask == cid
        ious.append((pred & truth).sum() / (pred | truth).sum())
    # Measured: 0.84 mean IoU over 24 single-class prompts on 12 test scenes; all zero before the fix.
    assert min(ious) > 0.3 and sum(ious) / len(ious) > 0.6, ious
    assert "small model trained on synthetic scenes" in seg.model_note()
    assert seg.model_note([Image.fromarray(scene.image)]) is None  # a world scene needs no warning


def _open_label_sets(n: int, **settings: object) -> list[tuple[set[int], set[int]]]:
    """For n test scenes segmented with all 13 classes named: (classes labelled, classes present) per scene."""
    from attnseg import Segmentor

    seg = Segmentor.from_pretrained(None, method="goca", device="cpu", dtype="float32", **settings)
    names = [c.name for c in CLASSES]
    out = []
    for _, scene in render_scenes("test", n, seed=0):
        labels = seg.segment(Image.fromarray(scene.image), names).labels
        out.append(({CLASSES[k - 1].id for k in labels.unique().tolist() if k > 0}, set(scene.present)))
    return out


def _agreement(sets: list[tuple[set[int], set[int]]]) -> tuple[int, float, float]:
    """Scenes whose labelled classes are all present; precision and recall of labelled against present classes."""
    clean = sum(labelled <= present for labelled, present in sets)
    right = sum(len(labelled & present) for labelled, present in sets)
    precision = right / max(1, sum(len(labelled) for labelled, _ in sets))
    recall = right / max(1, sum(len(present) for _, present in sets))
    return clean, precision, recall


def test_open_vocabulary_labels_only_the_classes_a_scene_has():
    """All 13 classes named: the presence step must keep the absent ones out and keep most present ones.
    Measured on 2 CPU cores, 6 tune scenes, weighted labels (shipped): 2 scenes with no absent class labelled,
    precision 0.77, recall 0.91; the threshold rule gives 4, 0.85, 0.77 (it trades recall for clean scenes).
    Without the step no scene is clean and the precision is 0.3; a step that keeps only its best class would
    be clean everywhere with a recall near 0.3."""
    clean, precision, recall = _agreement(_open_label_sets(6))
    assert clean >= 2 and precision >= 0.7 and recall >= 0.8, (clean, precision, recall)
    clean, precision, recall = _agreement(_open_label_sets(6, presence_labels="threshold"))
    assert clean >= 3 and precision >= 0.75 and recall >= 0.6, (clean, precision, recall)
    none_dropped = _agreement(_open_label_sets(2, presence="off"))
    assert none_dropped[0] == 0 and none_dropped[1] < 0.5, none_dropped
