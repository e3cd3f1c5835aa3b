"""Tiny fake copies of every benchmark in its official layout, painted for the colour-key segmentor.

Each image is a grid of 8×8 blocks; a block's raw label value is written to the label file and its pixels are
painted key_colour(expected display name), or black where the label is background or ignored. The expected
names below are written out by hand from the official class lists, independently of the readers, so a wrong
id mapping in a reader shows up as a wrong score.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from attnseg.eval.fake import key_colour

H, W, B = 32, 48, 8  # image size and block size (JPEG blocks stay exact at quality 100 without subsampling)

# raw label value -> the display name the data set must read it as (None: background or ignored)
VOC = {0: None, 1: "aeroplane", 12: "dog", 15: "person", 20: "tv monitor", 255: None}
CONTEXT = {0: None, 1: "aeroplane", 37: "person", 47: "sky", 59: "wood"}
COCO_TRAINID = {0: "person", 2: "car", 16: "dog", 80: "banner", 112: "grass", 145: "sky", 255: None}
COCO_RAW = {0: "person", 2: "car", 17: "dog", 91: "banner", 123: "grass", 156: "sky", 255: None}
COCO27 = {
    "person": "person",
    "car": "vehicle",
    "dog": "animal",
    "banner": "textile",
    "grass": "plant",
    "sky": "sky",
}
COCO_THINGS = {"person", "car", "dog"}
CITY_TRAINID = {0: "road", 13: "car", 11: "person", 10: "sky", 255: None}
CITY_LABELID = {7: "road", 26: "car", 24: "person", 23: "sky", 0: None, 1: None, 4: None}
ADE = {0: None, 1: "wall", 3: "sky", 13: "person", 21: "car", 150: "flag"}
WORLD = {0: None, 1: "sky", 2: "grass", 6: "circle", 255: None}
WORLD_CLASSES = ["sky", "grass", "water", "wall", "floor", "circle", "square", "triangle"]


def spec(name: str, variant: str = "") -> dict[int, str | None]:
    """Raw value -> expected display name for a data set (variant 'raw' / 'labelid' for the official maps)."""
    if name in ("voc21", "voc20"):
        return VOC
    if name in ("context60", "context59"):
        return CONTEXT
    if name.startswith("coco"):
        base = COCO_RAW if variant == "raw" else COCO_TRAINID
        if name == "coco-object":
            return {k: (v if v in COCO_THINGS else None) for k, v in base.items()}
        if name == "coco-stuff27":
            return {k: (COCO27[v] if v else None) for k, v in base.items()}
        return base
    if name == "cityscapes":
        return CITY_LABELID if variant == "labelid" else CITY_TRAINID
    if name == "ade20k":
        return ADE
    if name == "world":
        return WORLD
    raise KeyError(name)


def _masks(values: list[int], n: int, seed: int) -> list[np.ndarray]:
    """n raw label maps of 8×8 blocks, each using up to three of values."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        pick = rng.choice(values, size=min(3, len(values)), replace=False)
        blocks = rng.choice(pick, size=(H // B, W // B))
        out.append(np.kron(blocks, np.ones((B, B), dtype=np.int64)).astype(np.uint8))
    return out


def _paint(raw: np.ndarray, names: dict[int, str | None], paint_as: dict[str, str]) -> Image.Image:
    """The RGB image the colour-key segmentor reads raw as (paint_as repaints a class as another)."""
    img = np.zeros((*raw.shape, 3), dtype=np.uint8)
    for v in np.unique(raw):
        name = names.get(int(v))
        if name:
            img[raw == v] = key_colour(paint_as.get(name, name))
    return Image.fromarray(img)


def _save_image(img: Image.Image, path: Path) -> None:
    """Save as the layout's format (JPEG without chroma subsampling keeps flat 8×8 blocks exact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        img.save(path, quality=100, subsampling=0)
    else:
        img.save(path)


def _save_mask(raw: np.ndarray, path: Path, palette: bool) -> None:
    """Save a label map as a palette PNG (VOC, world) or a grayscale PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(raw)
    if palette:
        im = im.convert("P")
        im.putpalette([(i * 37) % 256 for i in range(768)])
    im.save(path)


def build(
    name: str,
    root: Path,
    n: int = 4,
    split: str = "val",
    seed: int = 0,
    variant: str = "",
    paint_as: dict[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """Write a fake copy of a data set under root; returns {sample id: raw label map}."""
    names = spec(name, variant)
    paint_as = paint_as or {}
    values = [v for v in names if v != 255]
    masks = _masks(values, n, seed + (0 if split == "val" else 1000))
    for m in masks:  # an ignored block in every image
        m[:B, :B] = 255 if 255 in names else m[:B, :B]
    out: dict[str, np.ndarray] = {}
    root = Path(root)
    if name in ("voc21", "voc20", "context60", "context59"):
        year, lists, folder = (
            ("2012", "Segmentation", "SegmentationClass")
            if name.startswith("voc")
            else ("2010", "SegmentationContext", "SegmentationClassContext")
        )
        base = root / "VOCdevkit" / f"VOC{year}"
        ids = [f"20{'08' if split == 'val' else '07'}_{i:06d}" for i in range(n)]
        for i, m in zip(ids, masks):
            _save_image(_paint(m, names, paint_as), base / "JPEGImages" / f"{i}.jpg")
            _save_mask(m, base / folder / f"{i}.png", palette=name.startswith("voc"))
            out[i] = m
        (base / "ImageSets" / lists).mkdir(parents=True, exist_ok=True)
        (base / "ImageSets" / lists / f"{split}.txt").write_text("\n".join(ids) + "\n")
    elif name.startswith("coco"):
        folder = f"{split}2017"
        for k, m in enumerate(masks):
            i = f"{(k + 1) + (0 if split == 'val' else 500000):012d}"
            _save_image(_paint(m, names, paint_as), root / "images" / folder / f"{i}.jpg")
            suffix = ".png" if variant == "raw" else "_labelTrainIds.png"
            _save_mask(m, root / "annotations" / folder / f"{i}{suffix}", palette=False)
            out[i] = m
    elif name == "cityscapes":
        for k, m in enumerate(masks):
            city = "frankfurt" if k % 2 == 0 else "lindau"
            i = f"{city}_{k:06d}_{19 + k:06d}"
            _save_image(
                _paint(m, names, paint_as), root / "leftImg8bit" / split / city / f"{i}_leftImg8bit.png"
            )
            kind = "labelIds" if variant == "labelid" else "labelTrainIds"
            _save_mask(m, root / "gtFine" / split / city / f"{i}_gtFine_{kind}.png", palette=False)
            out[i] = m
    elif name == "ade20k":
        folder, tag = ("validation", "val") if split == "val" else ("training", "train")
        base = root / "ADEChallengeData2016"
        for k, m in enumerate(masks):
            i = f"ADE_{tag}_{k + 1:08d}"
            _save_image(_paint(m, names, paint_as), base / "images" / folder / f"{i}.jpg")
            _save_mask(m, base / "annotations" / folder / f"{i}.png", palette=False)
            out[i] = m
    elif name == "world":
        lines = []
        for k, m in enumerate(masks):
            i = f"{k:06d}"
            _save_image(_paint(m, names, paint_as), root / "images" / f"{i}.png")
            _save_mask(m, root / "masks" / f"{i}.png", palette=True)
            present = sorted(int(v) for v in np.unique(m) if v not in (0, 255))
            lines.append(
                json.dumps(
                    {
                        "id": i,
                        "image": f"images/{i}.png",
                        "mask": f"masks/{i}.png",
                        "caption": "",
                        "present": present,
                    }
                )
            )
            out[i] = m
        (root / "index.jsonl").write_text("\n".join(lines) + "\n")
        classes = [
            {"id": k + 1, "name": c, "synonyms": [c], "kind": "thing" if k >= 5 else "stuff"}
            for k, c in enumerate(WORLD_CLASSES)
        ]
        (root / "classes.json").write_text(
            json.dumps({"classes": classes, "ignore_index": 255, "background_id": 0})
        )
        (root / "render.json").write_text(json.dumps({"split": split, "n": n, "seed": seed, "size": W}))
    else:
        raise KeyError(name)
    return out


def expected_eval(
    name: str, raw: np.ndarray, class_names: list[str], has_background: bool, variant: str = ""
) -> np.ndarray:
    """The eval-id map a reader must produce, from the hand-written names (not from the reader's tables)."""
    names = spec(name, variant)
    out = np.full(raw.shape, 255, dtype=np.int64)
    for v in np.unique(raw):
        nm = names[int(v)]
        if nm is not None:
            out[raw == v] = class_names.index(nm)
        elif has_background and int(v) != 255 and not (name == "world" and int(v) == 255):
            out[raw == v] = 0
    return out
