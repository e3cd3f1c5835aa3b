"""A model-free segmentor that recognises classes by a colour key: it checks the eval pipeline end to end.

An image painted with `key_colour(name)` where the ground truth is class `name` (black elsewhere) is
segmented exactly; `noise` scrambles a fixed fraction of pixels and `swap` confuses named classes, so tests
can assert real numbers. Results depend only on (image, classes, seed), never on batch composition.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from attnseg.eval.protocols import assign_labels

KEY_WIDTH = 64.0  # colour distance at which a class score reaches 0


def key_colour(name: str) -> tuple[int, int, int]:
    """The RGB colour that stands for a class display name (every channel >= 48, so far from black)."""
    h = hashlib.sha256(name.encode("utf-8")).digest()
    return (48 + h[0] % 208, 48 + h[1] % 208, 48 + h[2] % 208)


@dataclass
class FakeSegmentation:
    """The fields of attnseg's Segmentation that eval reads."""

    classes: list[str]
    scores: torch.Tensor  # K×H×W float32 in [0, 1]
    labels: torch.Tensor  # H×W int64, 0 = background
    tau: float
    meta: dict[str, Any] = field(default_factory=dict)
    background: torch.Tensor | None = None  # H×W background-word map (zeros here), when words were given


class ColorKeySegmentor:
    """Scores class k at a pixel by how close its colour is to key_colour(class k)."""

    def __init__(
        self, tau: float = 0.5, noise: float = 0.0, swap: dict[str, str] | None = None, delay: float = 0.0
    ) -> None:
        """noise: fraction of pixels given random scores; swap: {a: b} scores class a where b is; delay: s per image."""
        self.tau = float(tau)
        self.noise = float(noise)
        self.swap = dict(swap or {})
        self.delay = float(delay)
        self.calls: list[tuple[int, list[str]]] = []  # (images, classes) of every segment call
        self.prompts: list[str] = []  # the prompt of every segment_prompt call

    def segment(self, images: Image.Image | list[Image.Image], classes: list[str], seed: int = 0) -> Any:
        """One FakeSegmentation per image (a list for a list), like attnseg.Segmentor.segment."""
        single = isinstance(images, Image.Image)
        batch = [images] if single else list(images)
        self.calls.append((len(batch), list(classes)))
        out = [self._one(im, classes, seed) for im in batch]
        return out[0] if single else out

    def segment_prompt(
        self,
        image: Image.Image,
        text: str,
        classes: list[str],
        background: list[str] | None = None,
        seed: int = 0,
    ) -> FakeSegmentation:
        """Like attnseg.Segmentor.segment_prompt: classes scored by colour key, background words score 0."""
        self.prompts.append(text)
        result = self.segment(image, classes, seed)
        if background:
            result.background = torch.zeros(result.scores.shape[1:])
        return result

    def _one(self, image: Image.Image, classes: list[str], seed: int) -> FakeSegmentation:
        """Score one image."""
        if self.delay:
            time.sleep(self.delay)
        rgb = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32))  # H×W×3
        names = [c.split("|", 1)[0] for c in classes]
        keys = torch.tensor([key_colour(self.swap.get(n, n)) for n in names], dtype=torch.float32)  # K×3
        diff = rgb.reshape(1, -1, 3) - keys.reshape(-1, 1, 3)  # K×P×3
        dist = diff.square().sum(-1).sqrt().reshape(len(names), *rgb.shape[:2])  # K×H×W
        scores = (1.0 - dist / KEY_WIDTH).clamp(0.0, 1.0)
        if self.noise > 0 and len(names):
            # Seeded by the image content, so that a pixel's fate never depends on the batch it came in.
            g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(np.asarray(image).tobytes()))
            hit = torch.rand(scores.shape[1:], generator=g) < self.noise
            rnd = torch.rand(scores.shape, generator=g)
            scores = torch.where(hit.unsqueeze(0), rnd, scores)
        labels = (
            assign_labels(scores, self.tau) if len(names) else torch.zeros(rgb.shape[:2], dtype=torch.int64)
        )
        meta = {"model": "color-key", "method": "fake", "seed": seed, "noise": self.noise}
        return FakeSegmentation(names, scores.contiguous(), labels, self.tau, meta)


def make(**kwargs: Any) -> ColorKeySegmentor:
    """Factory for `attnseg eval --segmentor attnseg.eval.fake:make --segmentor-arg noise=0.1`."""
    return ColorKeySegmentor(**kwargs)
