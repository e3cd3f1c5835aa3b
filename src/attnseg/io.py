"""Reading and checking images; writing outputs atomically (temp file, then rename)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from attnseg.errors import BadImageError

DEFAULT_MAX_PIXELS = 4096 * 4096
MIN_SIDE = 8


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F) as 8-bit RGB; alpha is composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        hi = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8)
        image = Image.fromarray(arr, mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def check_size(image: Image.Image, where: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Refuse images too small to segment or larger than the pixel limit."""
    w, h = image.size
    if w < MIN_SIDE or h < MIN_SIDE:
        raise BadImageError(f"{where} is {w}×{h}; images need at least {MIN_SIDE}×{MIN_SIDE} pixels")
    if w * h > max_pixels:
        raise BadImageError(
            f"{where} is {w}×{h} = {w * h} pixels, over the limit of {max_pixels}; "
            "downscale it, or raise the limit with --max-pixels"
        )


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, verify, apply EXIF rotation and convert to RGB; BadImageError says what is wrong."""
    path = Path(path)
    if not path.exists():
        raise BadImageError(f"image {path} does not exist")
    if not path.is_file():
        raise BadImageError(f"{path} is not a file")
    Image.MAX_IMAGE_PIXELS = None  # our own limit below gives the clearer message
    try:
        with Image.open(path) as handle:
            check_size(handle, str(path), max_pixels)
            handle.load()
            image = ImageOps.exif_transpose(handle)
            image = image.copy() if image is handle else image
    except BadImageError:
        raise
    except UnidentifiedImageError as exc:
        raise BadImageError(f"{path} is not an image PIL can read (PNG, JPEG, WebP, TIFF, …)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(
            f"{path} could not be decoded ({exc}); the file is probably truncated or corrupt"
        ) from exc
    return to_rgb(image)


def prepare_image(
    image: Image.Image, where: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """An in-memory image checked and converted as load_image does."""
    if not isinstance(image, Image.Image):
        raise BadImageError(f"{where} is a {type(image).__name__}, not a PIL image or a path")
    check_size(image, where, max_pixels)
    return to_rgb(ImageOps.exif_transpose(image))


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `target` that is renamed onto it only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Created as open() creates files (mode 0666 less the umask), not mkstemp's private 0600, so that the
    # renamed result reads like any other file the user writes.
    while True:
        tmp_path = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp{target.suffix}"
        try:
            os.close(os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(target: str | os.PathLike, data: object) -> None:
    """JSON written atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
