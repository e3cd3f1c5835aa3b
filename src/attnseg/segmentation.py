"""The result of segmenting one image, and how it is written: indexed PNG, overlay, score maps, result.json."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from attnseg.io import output_folder, write_json

BACKGROUND_COLOUR = (0, 0, 0)


def palette(n: int) -> list[tuple[int, int, int]]:
    """Background black, then well-separated colours (the VOC bit-interleaving scheme, skipping black)."""
    colours = [BACKGROUND_COLOUR]
    index = 1
    while len(colours) < n + 1:
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
        index += 1
    return colours


@dataclass
class Segmentation:
    """Labels and per-class scores for one image; 0 = background, k+1 = classes[k]."""

    classes: list[str]
    scores: torch.Tensor  # K×H×W float32 in [0, 1]
    labels: torch.Tensor  # H×W int64
    tau: float
    image: Image.Image | None = None
    meta: dict = field(default_factory=dict)
    background: torch.Tensor | None = (
        None  # H×W map B of the prompt's background words (max over them), if any
    )
    # K×h×w, the presence test's leave-one-out rise maps on the latent's grid (where naming each class lowers
    # the denoiser's error), when the step ran: what the region test read (PresenceConfig.region_test).
    presence_rises: torch.Tensor | None = None

    def label_image(self) -> Image.Image:
        """The label map as an indexed PNG image with the palette."""
        if len(self.classes) > 254:
            raise ValueError("an indexed PNG holds at most 255 labels")
        img = Image.fromarray(self.labels.to(torch.uint8).cpu().numpy(), mode="P")
        flat = [v for colour in palette(len(self.classes)) for v in colour]
        img.putpalette(flat + [0] * (768 - len(flat)))
        return img

    def overlay(self, alpha: float = 0.55) -> Image.Image:
        """The image with coloured labels blended over it and a legend of the classes present."""
        labels = self.labels.cpu().numpy()
        colours = np.array(palette(len(self.classes)), dtype=np.float32)
        colour_map = colours[labels]
        base = (
            np.asarray(self.image, dtype=np.float32) if self.image is not None else np.zeros_like(colour_map)
        )
        mask = (labels > 0)[..., None]
        blended = np.where(mask, base * (1 - alpha) + colour_map * alpha, base * 0.75)
        picture = Image.fromarray(blended.clip(0, 255).astype(np.uint8))
        if picture.width < 256:  # small images (the embedded world's 64²) are enlarged to be seen
            factor = -(-256 // picture.width)
            picture = picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST)
        present = [k for k in range(len(self.classes) + 1) if (labels == k).any()]
        return _with_legend(
            picture,
            [
                ("background" if k == 0 else self.classes[k - 1], palette(len(self.classes))[k])
                for k in present
            ],
        )

    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write labels.png, overlay.png, scores.npz and result.json into `directory`, all or nothing.

        An existing `directory` is replaced only when attnseg wrote it (io.output_folder); with overwrite,
        these four files are written into any folder and everything else there is kept.
        """
        target = Path(directory)
        with output_folder(target, overwrite, recognise=is_segmentation_folder) as staging:
            self.write_files(staging)
        return target

    def write_files(self, folder: Path) -> None:
        """The four files into `folder`, which the caller stages (save, or `generate` with its image)."""
        self.label_image().save(folder / "labels.png")
        self.overlay().save(folder / "overlay.png")
        np.savez_compressed(
            folder / "scores.npz",
            scores=self.scores.cpu().numpy().astype(np.float16),
            classes=np.array(self.classes),
            **self._presence_arrays(),
        )
        write_json(folder / "result.json", {"classes": self.classes, "tau": self.tau, **self.meta})

    def _presence_arrays(self) -> dict[str, np.ndarray]:
        """Each class's presence score and decision (K each), and its rise map, when the step ran; else nothing."""
        found = self.meta.get("presence", {}).get("classes")
        if not found:
            return {}
        arrays = {
            "presence_scores": np.array([found[c]["score"] for c in self.classes], dtype=np.float32),
            "present": np.array([found[c]["present"] for c in self.classes], dtype=bool),
        }
        if all("weight" in found[c] for c in self.classes):  # the weighted rule's map weights
            arrays["presence_weights"] = np.array(
                [found[c]["weight"] for c in self.classes], dtype=np.float32
            )
        if self.presence_rises is not None:
            arrays["presence_rises"] = self.presence_rises.cpu().numpy()
        return arrays


SEGMENTATION_FILES = ("labels.png", "overlay.png", "scores.npz", "result.json")


def is_segmentation_folder(folder: Path) -> bool:
    """A folder an attnseg from before output manifests wrote: exactly the four files of one result."""
    names = {p.name for p in folder.iterdir()}
    if names != set(SEGMENTATION_FILES) or not (folder / "result.json").is_file():
        return False
    return '"classes"' in (folder / "result.json").read_text(errors="replace")[:200]


def _with_legend(picture: Image.Image, entries: list[tuple[str, tuple[int, int, int]]]) -> Image.Image:
    """The picture with a legend strip below it, one swatch and name per entry."""
    font = ImageFont.load_default()
    scale = max(1, picture.width // 256)
    line = 14
    columns = max(1, picture.width // 140) if picture.width >= 140 else 1
    rows = -(-len(entries) // columns)
    strip_h = rows * line + 6
    canvas = Image.new("RGB", (max(picture.width, 140), picture.height + strip_h), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    col_w = canvas.width // columns
    for i, (name, colour) in enumerate(entries):
        x, y = (i % columns) * col_w + 4, picture.height + 3 + (i // columns) * line
        draw.rectangle([x, y + 2, x + 9, y + 11], fill=colour, outline=(90, 90, 90))
        draw.text((x + 13, y), name[: 18 * scale], fill=(0, 0, 0), font=font)
    return canvas
