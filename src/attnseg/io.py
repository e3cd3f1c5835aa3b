"""Reading and checking images; writing outputs atomically, and only where attnseg may write.

The one rule every command that writes follows (see `output_folder`): attnseg replaces only files it can
prove it wrote (they are listed in the folder's manifest, `.attnseg-output.json`), refuses a folder that holds
anything else unless the user passes --overwrite (and even then only replaces the files it writes, keeping
the rest), and never deletes a folder it did not create.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from attnseg.errors import BadImageError, BadOutputError

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


def check_size(
    image: Image.Image,
    where: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    limit_option: str | None = "--max-pixels",
) -> None:
    """Refuse images too small to segment or larger than the pixel limit (raised with `limit_option`, if any)."""
    w, h = image.size
    if w < MIN_SIDE or h < MIN_SIDE:
        raise BadImageError(f"{where} is {w}×{h}; images need at least {MIN_SIDE}×{MIN_SIDE} pixels")
    if w * h > max_pixels:
        raise BadImageError(
            f"{where} is {w}×{h} = {w * h} pixels, over the limit of {max_pixels}; downscale it"
            + (f", or raise the limit with {limit_option}" if limit_option else "")
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
    image: Image.Image,
    where: str = "image",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    limit_option: str | None = "max_pixels",
) -> Image.Image:
    """An in-memory image checked and converted as load_image does."""
    if not isinstance(image, Image.Image):
        raise BadImageError(f"{where} is a {type(image).__name__}, not a PIL image or a path")
    check_size(image, where, max_pixels, limit_option)
    return to_rgb(ImageOps.exif_transpose(image))


# --------------------------------------------------------------------------- atomic files


def _fsync_dir(folder: Path) -> None:
    """Make a rename in a folder durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def image_notes(path: str | os.PathLike) -> list[str]:
    """What a user should know about how an image file is read: extra frames, transparent pixels."""
    notes = []
    try:
        with Image.open(path) as handle:
            frames = getattr(handle, "n_frames", 1)
            if frames > 1:
                notes.append(
                    f"it has {frames} frames; the first is segmented (save another frame as its own image to "
                    "segment it)"
                )
            if handle.mode in ("RGBA", "LA", "PA") or "transparency" in handle.info:
                alpha = np.asarray(handle.convert("RGBA"))[..., 3]
                if (alpha < 255).any():
                    notes.append(
                        f"{100 * float((alpha < 255).mean()):.0f}% of its pixels are transparent; they are "
                        "segmented as if painted white"
                    )
    except (OSError, ValueError):
        pass  # load_image has already said what is wrong with an unreadable file
    return notes


# Bytes per pixel that segmenting holds at the image's own size: the K score maps (float32, twice while they
# are upsampled and clamped), the label map (int64) and the τ stack it is chosen from, and the overlay's
# float32 colour, base and blend arrays.
BYTES_PER_PIXEL_FIXED = 96
BYTES_PER_PIXEL_PER_CLASS = 12


def available_memory_bytes() -> int | None:
    """Memory the system can still give this process (MemAvailable), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def segment_bytes(width: int, height: int, n_classes: int) -> int:
    """Estimated memory that the full-size outputs of one image need (score maps, labels, overlay)."""
    return width * height * (BYTES_PER_PIXEL_FIXED + BYTES_PER_PIXEL_PER_CLASS * max(1, n_classes))


def check_memory(
    images: Iterable[tuple[str, int, int]], n_classes: int, available: int | None = None
) -> None:
    """Refuse an image whose full-size outputs would not fit in the memory left (name, width, height)."""
    available = available_memory_bytes() if available is None else available
    if available is None:
        return
    for name, width, height in images:
        need = segment_bytes(width, height, n_classes)
        if need > 0.8 * available:
            side = int(math.sqrt(0.8 * available / (need / (width * height))))
            raise BadImageError(
                f"{name} is {width}×{height}: segmenting it into {n_classes} classes needs about "
                f"{need / 2**30:.1f} GiB for its full-size score maps, labels and overlay, more than the "
                f"{available / 2**30:.1f} GiB this machine has free; downscale it (to about {side}×{side} "
                "pixels or less) and segment that"
            )


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """A temporary path beside `target` that is renamed onto it only if the block succeeds.

    durable=True also fsyncs the file and the folder, for files a crash must never leave torn (run records).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Created as open() creates files (mode 0666 less the umask), not mkstemp's private 0600, so that the
    # renamed result reads like any other file the user writes.
    while True:
        tmp_path = target.parent / f".{target.name[:96]}.{secrets.token_hex(4)}.tmp{target.suffix[:16]}"
        try:
            os.close(os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp_path
        if durable:
            with open(tmp_path, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp_path, target)
        if durable:
            _fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(target: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """Write a file whole or not at all."""
    with atomic_path(target, durable) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike, text: str, durable: bool = True) -> None:
    """Write a text file (UTF-8) whole or not at all."""
    atomic_write_bytes(target, text.encode("utf-8"), durable)


def atomic_write_json(target: str | os.PathLike, obj: object) -> None:
    """Write a JSON file whole or not at all, indented, with a trailing newline; NaN is refused."""
    atomic_write_text(target, json.dumps(obj, indent=1, allow_nan=False) + "\n")


def write_json(target: str | os.PathLike, data: object) -> None:
    """JSON written atomically (values JSON cannot hold are written as strings)."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


# --------------------------------------------------------------------------- where attnseg may write

NAME_MAX = 255  # bytes in one file or folder name, on every common file system
MANIFEST = (
    ".attnseg-output.json"  # lists the files attnseg wrote into a folder: the proof it may replace them
)
_STAGE_MARK = ".attnseg-stage"  # inside a staging folder: the pid that made it, so leftovers can be removed
_STAGE_INFIX = ".attnseg-partial-"


def _describe(path: Path) -> str:
    """A path as the user typed it, plus where it resolves when that differs (`.` → /home/me/photos)."""
    resolved = path.resolve()
    return str(path) if str(path) == str(resolved) else f"{path} ({resolved})"


def check_writable(path: str | os.PathLike, what: str = "--out") -> Path:
    """Check before any work that `path` can be a folder attnseg writes into; BadOutputError if not."""
    path = Path(path).expanduser()
    too_long = [part for part in path.parts if len(part.encode()) > NAME_MAX]
    if too_long:
        raise BadOutputError(
            f"{what} has a name of {len(too_long[0].encode())} bytes ({too_long[0][:24]}…); file systems allow "
            f"{NAME_MAX}: choose a shorter one"
        )
    if path.exists() and not path.is_dir():
        raise BadOutputError(f"{what} {path} is an existing file, not a folder; name a folder to write into")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise BadOutputError(f"{what} {path} lies inside {existing}, which is a file, not a folder")
    # A real write tells what os.access cannot (read-only mounts, immutable folders, root's bypass).
    probe = existing / f".attnseg-probe-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as exc:
        raise BadOutputError(
            f"cannot write into {existing} ({exc.strerror or exc}); choose a {what} you can write to"
        ) from None
    probe.unlink()
    return path


def read_manifest(folder: str | os.PathLike) -> set[str] | None:
    """The files attnseg wrote into `folder`, or None when it holds no (readable) manifest."""
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text())
        return {str(f) for f in data["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _foreign(folder: Path, recognise: Callable[[Path], bool] | None) -> list[str]:
    """Entries of an existing folder that attnseg cannot prove it wrote (all of them without a manifest)."""
    entries = sorted(p.name for p in folder.iterdir())
    if not entries:
        return []
    owned = read_manifest(folder)
    if owned is None and recognise is not None and recognise(folder):
        return []  # written by an attnseg from before manifests
    if owned is None:
        return entries
    tops = {f.split("/")[0] for f in owned} | {MANIFEST}
    return [e for e in entries if e not in tops]


def check_output_folder(
    folder: str | os.PathLike,
    overwrite: bool = False,
    recognise: Callable[[Path], bool] | None = None,
    what: str = "--out",
    offer_overwrite: bool = True,
) -> Path:
    """Check before any work that `folder` may be (re)written whole: absent, empty, attnseg's own, or --overwrite."""
    folder = check_writable(folder, what)
    if folder.is_dir() and not overwrite:
        foreign = _foreign(folder, recognise)
        if foreign:
            shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
            hint = (
                ", or pass --overwrite to write attnseg's files into it (nothing else there is touched)"
                if offer_overwrite
                else " (a new or empty folder)"
            )
            raise BadOutputError(
                f"{_describe(folder)} already exists and holds files attnseg did not write ({shown}); "
                f"choose another {what}{hint}"
            )
    return folder


def check_output_files(
    folder: str | os.PathLike, names: Iterable[str], overwrite: bool = False, what: str = "--out"
) -> Path:
    """Check that files `names` may be written into `folder`: each absent, attnseg's own, or --overwrite."""
    folder = check_writable(folder, what)
    owned = read_manifest(folder) or set()
    clash = [n for n in names if (folder / n).exists() and n not in owned]
    if clash and not overwrite:
        raise BadOutputError(
            f"{', '.join(str(folder / n) for n in clash)} already exist(s) and attnseg did not write it; "
            f"choose another {what}, or pass --overwrite to replace it"
        )
    dirs = [n for n in names if (folder / n).is_dir()]
    if dirs:
        raise BadOutputError(f"{folder / dirs[0]} is a folder; attnseg would write a file there")
    return folder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_stages(folder: Path) -> list[Path]:
    """Remove staging folders beside `folder` that an interrupted attnseg left (their process is gone).

    A stage is recognised by the mark attnseg writes into it first; the private folders of attnseg 0.1
    (`.name.xxxxxxxx`, tempfile.mkdtemp's) by holding nothing but a segmentation's files. Nothing else is touched.
    """
    removed = []
    parent = folder.parent
    if not parent.is_dir():
        return removed
    legacy = re.compile(r"^\..+\.[a-z0-9_]{8}$")
    segment_files = {"labels.png", "overlay.png", "scores.npz", "result.json"}
    for entry in parent.iterdir():
        if not entry.name.startswith(".") or not entry.is_dir() or entry.is_symlink():
            continue
        mark = entry / _STAGE_MARK
        if _STAGE_INFIX in entry.name and mark.is_file():
            try:
                pid = int(mark.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            if pid == os.getpid() or _pid_alive(pid):
                continue  # a run still writing (this one, or another)
        elif not (legacy.match(entry.name) and {p.name for p in entry.iterdir()} <= segment_files):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _make_stage(folder: Path) -> Path:
    """A new staging folder beside `folder`, created with the user's umask (not mkdtemp's 0700)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    while True:
        # The target's name is cut so that the stage's stays within the 255 bytes file systems allow.
        stage = folder.parent / f".{folder.name[:96]}{_STAGE_INFIX}{os.getpid()}-{secrets.token_hex(3)}"
        try:
            stage.mkdir()
            break
        except FileExistsError:
            continue
    (stage / _STAGE_MARK).write_text(f"{os.getpid()}\n")
    return stage


def _files_under(root: Path) -> list[str]:
    """Relative paths (with /) of the regular files under root, the stage mark left out."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.name != _STAGE_MARK and p.name != MANIFEST
    )


def _write_manifest(folder: Path, files: Iterable[str], durable: bool = False) -> None:
    from attnseg import __version__

    atomic_write_text(
        folder / MANIFEST,
        json.dumps({"written_by": f"attnseg {__version__}", "files": sorted(set(files))}, indent=1) + "\n",
        durable,
    )


def _commit(stage: Path, folder: Path, replace: bool, recognise: Callable[[Path], bool] | None) -> None:
    """Move the stage's files into folder; with replace, also drop files attnseg wrote there before."""
    files = _files_under(stage)
    if not folder.exists():
        (stage / _STAGE_MARK).unlink()
        _write_manifest(stage, files)
        try:
            os.replace(stage, folder)  # the whole folder appears at once
            return
        except OSError:
            (stage / _STAGE_MARK).write_text(f"{os.getpid()}\n")  # someone made it meanwhile: merge below
    previous = read_manifest(folder)
    if previous is None:
        previous = set(files) if recognise is not None and recognise(folder) else set()
    for rel in files:
        dest = folder / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_dir():
            raise BadOutputError(f"{dest} is a folder; attnseg would write a file there")
        os.replace(stage / rel, dest)
    if replace:
        for rel in sorted(previous - set(files)):  # only files the manifest proves attnseg wrote
            (folder / rel).unlink(missing_ok=True)
        _write_manifest(folder, files)
    else:
        _write_manifest(folder, previous | set(files))


@contextlib.contextmanager
def output_folder(
    folder: str | os.PathLike,
    overwrite: bool = False,
    recognise: Callable[[Path], bool] | None = None,
    replace: bool = True,
    what: str = "--out",
) -> Iterator[Path]:
    """A staging folder to write into; its files land in `folder` only if the block succeeds.

    replace=True: `folder` is attnseg's output as a whole, so files attnseg wrote there before and does not
    write again are removed (a folder that holds anything else is refused unless overwrite). replace=False:
    files are added beside whatever is there; only a name clash with a file attnseg did not write is refused.
    `recognise` tells a folder written by an attnseg from before manifests. Nothing outside the files
    attnseg writes is ever deleted, and a folder is never removed unless attnseg made it.
    """
    folder = Path(folder).expanduser()
    if replace:
        check_output_folder(folder, overwrite, recognise, what)
    else:
        check_writable(folder, what)
    remove_stale_stages(folder)
    try:
        stage = _make_stage(folder)
    except OSError as exc:
        raise BadOutputError(f"could not write beside {folder}: {exc.strerror or exc}") from None
    try:
        yield stage
        if not replace:
            check_output_files(folder, _files_under(stage), overwrite, what)
        else:
            check_output_folder(folder, overwrite, recognise, what)  # again: it may have changed meanwhile
        _commit(stage, folder, replace, recognise)
    except OSError as exc:
        raise BadOutputError(f"could not write {folder}: {exc.strerror or exc}") from exc
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)  # ours: it holds the stage mark we wrote


def claim_folder(
    folder: str | os.PathLike,
    recognise: Callable[[Path], bool],
    what: str = "--out",
) -> Path:
    """Create `folder` for a resumable run that writes into it directly, or accept it as an earlier run's.

    A folder that exists, is not empty and is not recognised as attnseg's run is refused.
    """
    folder = check_output_folder(folder, False, recognise, what, offer_overwrite=False)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
