"""Checks shared by the family tests: segment with a tiny model end to end, and prove the capture is transparent."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from PIL import Image

import attnseg
from attnseg.method.streaming import StreamingReducer

CLASSES = ["cat", "grass", "zebra"]  # 'zebra' is not in the tiny vocabularies: it splits into pieces


def random_image(size: int = 40, seed: int = 0) -> Image.Image:
    """A small random RGB image (not square, not the native size: the segmentor must resize)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8))


def _piece_text(token: str) -> str:
    return token.replace("▁", "").replace("</w>", "").removeprefix("##")


def check_token_spans(seg: attnseg.Segmentation, tokenizer, prompt_ids: list[int], offset: int) -> None:
    """Every class's token positions decode back to the class word; no lone word-boundary piece is among them."""
    spans = seg.meta["prompts"][0]["token_spans"]
    assert set(spans) == set(CLASSES)
    for word, positions in spans.items():
        assert positions and all(p >= offset for p in positions), (word, positions)
        tokens = tokenizer.convert_ids_to_tokens([prompt_ids[p - offset] for p in positions])
        assert "▁" not in tokens, (word, tokens)
        assert "".join(_piece_text(t) for t in tokens) == word, (word, tokens)
        assert positions == list(range(positions[0], positions[-1] + 1)), (word, positions)


def check_presence_runs(seg: attnseg.Segmentor, image: Image.Image) -> None:
    """The presence test reads this family's prediction (its noise convention and layout) and decides every class."""
    from attnseg.backbones.noise_error import noise_errors
    from attnseg.method.presence import PresenceConfig

    pixels = seg._pixels([image])[0]
    errors = noise_errors(seg.backbone, pixels, ["a cat.", "a cat and grass."], (100, 500), torch.Generator())
    assert errors.shape[:2] == (2, 2) and torch.isfinite(errors).all() and (errors > 0).all()
    on = attnseg.Segmentor(seg.backbone, seg.config, seg.method, seg.template, presence=PresenceConfig())
    found = on.segment(image, CLASSES, seed=0).meta["presence"]
    assert list(found["classes"]) == CLASSES and found["found"]


def segment_and_check(folder, expected_layers: list[str]) -> tuple[attnseg.Segmentor, attnseg.Segmentation]:
    """Load `folder`, segment a random image into CLASSES and check the result's shape, range and capture."""
    # The capture checks read the one pass over every class: the presence step is checked on its own below.
    seg = attnseg.Segmentor.from_pretrained(str(folder), device="cpu", presence="off")
    image = random_image()
    result = seg.segment(image, CLASSES, seed=0)
    check_presence_runs(seg, image)
    k, h, w = len(CLASSES), image.height, image.width
    assert result.scores.shape == (k, h, w) and result.scores.dtype == torch.float32
    assert torch.isfinite(result.scores).all()
    assert float(result.scores.min()) >= 0.0 and float(result.scores.max()) <= 1.0
    assert result.labels.shape == (h, w) and result.labels.dtype == torch.int64
    assert int(result.labels.min()) >= 0 and int(result.labels.max()) <= k
    assert result.meta["layers"] == expected_layers
    weights = result.meta["diagnostics"][0]["layer_weights"]
    assert len(weights) == len(expected_layers)
    assert all(math.isfinite(x) for x in weights) and abs(sum(weights) - 1.0) < 1e-4
    return seg, result


def check_capture_is_transparent(seg: attnseg.Segmentor, prompt: str) -> StreamingReducer:
    """The denoiser's output with capture processors installed equals the output without them.

    Captures with GoCA heads and with mean heads (the reducer keeps one mode) and returns the mean-heads reducer.
    """
    backbone = seg.backbone
    size = backbone.preset.native_size
    pixels = torch.rand((1, 3, size, size), generator=torch.Generator().manual_seed(1)) * 2 - 1
    latents = backbone.encode_images(pixels)
    noisy, timestep = backbone.add_noise(latents, torch.Generator().manual_seed(0))
    cond = backbone.encode_text([prompt])
    latent_size = backbone.latent_grid(noisy)
    original = dict(backbone.denoiser.attn_processors)
    plain = backbone.run_denoiser(noisy, timestep, cond)
    reducers = {}
    for heads in ("goca", "mean"):
        config = dataclasses.replace(seg.config, head_aggregation=heads)
        plan = backbone.capture_plan(latent_size, config)
        reducer = StreamingReducer(plan, latent_size, keep_tokens=16, config=config)
        with backbone.capturing(plan, reducer):
            captured = backbone.run_denoiser(noisy, timestep, cond)
        assert isinstance(plain, torch.Tensor) and plain.shape == captured.shape
        assert torch.allclose(plain, captured, atol=1e-5), float((plain - captured).abs().max())
        restored = dict(backbone.denoiser.attn_processors)
        assert restored.keys() == original.keys() and all(restored[k] is original[k] for k in original)
        assert reducer.layer_order, "no capture processor ran"
        reducers[heads] = reducer
    goca, mean = reducers["goca"], reducers["mean"]
    assert goca.cross.keys() == mean.cross.keys()
    for layer in goca.cross:  # the output projection reached the head weights: GoCA is not the plain mean
        assert not torch.allclose(goca.cross[layer], mean.cross[layer], atol=1e-6), layer
    return mean
