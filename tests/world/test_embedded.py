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
    """Dataset mIoU over the world classes that occur in the ground truth."""
    ious = []
    for c in CLASSES:
        inter = sum(int(((p == c.id) & (t == c.id)).sum()) for p, t in zip(preds, truths))
        union = sum(int(((p == c.id) | (t == c.id)).sum()) for p, t in zip(preds, truths))
        if any((t == c.id).any() for t in truths):
            ious.append(inter / union if union else 0.0)
    return 100 * float(np.mean(ious))


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


def _open_label_sets(n: int, threshold: float | None = None) -> list[tuple[set[int], set[int]]]:
    """For n test scenes segmented with all 13 classes named: (classes labelled, classes present) per scene."""
    from attnseg import Segmentor

    extra = {} if threshold is None else {"presence_threshold": threshold}
    seg = Segmentor.from_pretrained(None, method="goca", device="cpu", dtype="float32", **extra)
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
    Measured on 2 CPU cores: 3 of 6 scenes with no absent class labelled and at most one in the others;
    precision 0.86, recall 0.82 (the misses are thin things). Without the step (threshold -inf: every class
    kept) no scene is clean and the precision is 0.25; a step that keeps only its best class would be clean
    everywhere with a recall near 0.3."""
    clean, precision, recall = _agreement(_open_label_sets(6))
    assert clean >= 3 and precision >= 0.75 and recall >= 0.6, (clean, precision, recall)
    none_dropped = _agreement(_open_label_sets(2, threshold=-1e9))
    assert none_dropped[0] == 0 and none_dropped[1] < 0.5, none_dropped
