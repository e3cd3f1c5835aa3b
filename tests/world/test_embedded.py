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
TARGET = 60.0  # the goal for the default with goca (mIoU %, oracle classes)
RANDOM_CEILING = 20.0  # random class maps score about 10 here; the target must sit well above this

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


def _scores(n: int = 12) -> tuple[float, float]:
    """mIoU of the default model with goca, and of random class maps, on n test scenes (oracle classes)."""
    from attnseg import Segmentor
    from attnseg.method.labels import assign_labels

    seg = Segmentor.from_pretrained(None, method="goca", device="cpu", dtype="float32")
    names = {c.id: c.name for c in CLASSES}
    preds, randoms, truths = [], [], []
    g = torch.Generator().manual_seed(0)
    for _, scene in render_scenes("test", n, seed=0):
        ids = scene.present
        out = seg.segment(Image.fromarray(scene.image), [names[i] for i in ids])
        lut = np.array([0, *ids])
        preds.append(lut[out.labels.numpy()])
        noise = torch.rand((len(ids), *scene.mask.shape), generator=g)
        randoms.append(lut[assign_labels(noise, out.tau).numpy()])
        truths.append(scene.mask)
    return _miou(preds, truths), _miou(randoms, truths)


@pytest.mark.xfail(
    reason="the shipped world models are far from the target (default world-m: goca 21.9 mIoU on val); see docs/WORLD.md",
    strict=False,
)
def test_default_model_reaches_the_target_that_random_maps_miss():
    good, bad = _scores()
    assert bad < RANDOM_CEILING, f"random maps reach {bad:.1f}: the check does not separate"
    assert good >= TARGET, f"default model + goca: mIoU {good:.1f} < {TARGET}"
