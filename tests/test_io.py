import io
import os
import stat

import numpy as np
import pytest
from PIL import Image

from attnseg.errors import BadImageError
from attnseg.io import atomic_path, load_image


def _save(tmp_path, name, image, **kw):
    path = tmp_path / name
    image.save(path, **kw)
    return path


def test_missing_non_image_and_truncated(tmp_path):
    with pytest.raises(BadImageError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(BadImageError, match="not an image"):
        load_image(text)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        buf, format="PNG"
    )
    cut = tmp_path / "cut.png"
    cut.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(BadImageError, match="truncated or corrupt"):
        load_image(cut)
    with pytest.raises(BadImageError, match="not a file"):
        load_image(tmp_path)


@pytest.mark.parametrize(
    "mode,kw",
    [("L", {}), ("RGBA", {}), ("P", {}), ("I;16", {}), ("CMYK", {"format": "JPEG"}), ("LA", {})],
)
def test_modes_are_converted_to_rgb(tmp_path, mode, kw):
    base = Image.fromarray(np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    if mode == "I;16":
        image = Image.fromarray((np.arange(600).reshape(20, 30) * 100).astype(np.uint16))
    else:
        image = base.convert(mode)
    path = _save(tmp_path, f"x.{'jpg' if kw else 'png'}" if mode != "CMYK" else "x.jpg", image, **kw)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (30, 20)
    if mode == "I;16":
        arr = np.asarray(out)
        assert arr.max() > 200 and arr.min() == 0  # 16-bit range scaled, not clipped to white


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° when displayed
    path = tmp_path / "rot.jpg"
    image.save(path, exif=exif.tobytes())
    assert load_image(path).size == (20, 40)


def test_tiny_and_enormous_images(tmp_path):
    one = _save(tmp_path, "one.png", Image.new("RGB", (1, 1)))
    with pytest.raises(BadImageError, match="at least"):
        load_image(one)
    big = _save(tmp_path, "big.png", Image.new("RGB", (300, 300)))
    with pytest.raises(BadImageError, match="--max-pixels"):
        load_image(big, max_pixels=200 * 200)
    assert load_image(big, max_pixels=300 * 300).size == (300, 300)


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and len(list(tmp_path.iterdir())) == 1


def test_atomic_path_gives_the_mode_of_an_ordinary_file(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "out.json") as tmp:
            tmp.write_text("{}")
        (tmp_path / "plain.json").write_text("{}")
    finally:
        os.umask(old)
    mode = lambda name: stat.S_IMODE((tmp_path / name).stat().st_mode)  # noqa: E731
    assert mode("out.json") == mode("plain.json") == 0o644
