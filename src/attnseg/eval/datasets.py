"""Readers for the benchmark data sets, each in its official (or mmseg-converted) folder layout.

Every reader maps its raw label files to *eval ids* 0..C-1 over its class list (`classes`), with IGNORE_INDEX
(255) ignored. Data sets with a background class (voc21, context60, coco-object; a world folder whose
classes.json names a background_id) have it at eval id 0; it is never prompted by name: the segmentor's τ
channel stands for it. The rendered world has no background pixel and so no background class.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from attnseg.errors import BadConfigError, BadDatasetError
from attnseg.labelmaps import IGNORE_INDEX

_UNKNOWN = -1  # a raw value a reader does not expect: reading fails loudly instead of scoring it wrongly
_CLASSNAMES = Path(__file__).parent / "classnames"
_SHOW_MISSING = 3


def load_classnames(filename: str) -> list[str]:
    """Read a class-name file of the package: one class per line, synonyms separated by '|'."""
    path = _CLASSNAMES / filename
    out: list[str] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("#"):
            continue
        names = [s.strip() for s in line.split("|")]
        if not all(names):
            raise BadConfigError(
                f"{path}:{n}: empty class name; one class per line, synonyms separated by '|'"
            )
        out.append("|".join(names))
    return out


def display_name(entry: str) -> str:
    """The display name of a class entry (its first synonym)."""
    return entry.split("|", 1)[0]


@dataclass(frozen=True)
class Sample:
    """One image of a data set and its label file."""

    id: str
    image: Path
    mask: Path
    lut: str = "default"  # which raw-to-eval table reads this label file


def _lut(pairs: dict[int, int], default: int = _UNKNOWN) -> np.ndarray:
    """A 256-entry raw-to-eval table; 255 stays ignored unless pairs say otherwise."""
    lut = np.full(256, default, dtype=np.int64)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    for raw, ev in pairs.items():
        lut[raw] = ev
    return lut


def _missing_message(title: str, listed_in: str, missing: list[Path], total: int) -> str:
    """A message naming the first missing files."""
    shown = ", ".join(str(p) for p in missing[:_SHOW_MISSING])
    more = f" (and {len(missing) - _SHOW_MISSING} more)" if len(missing) > _SHOW_MISSING else ""
    return f"{title}: {len(missing)} of {total} files that {listed_in} needs are missing: {shown}{more}"


class SegDataset:
    """Base reader: a class list, samples in a stable order, images and label maps in eval ids."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""  # the column header papers use
    has_background: ClassVar[bool] = False
    splits: ClassVar[tuple[str, ...]] = ("val", "train")
    default_split: ClassVar[str | None] = "val"
    heldout_split: ClassVar[str | None] = "train"  # the split a held-out τ is chosen on by default
    layout_hint: ClassVar[str] = ""

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        """Find the layout under root and list the samples of a split; raise BadDatasetError on a mismatch."""
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise BadDatasetError(f"{self.title}: --root {self.root} is not a folder. {self.layout_hint}")
        self.split = split or self.default_split or ""
        if self.splits and self.split not in self.splits:
            raise BadConfigError(
                f"{self.title}: unknown split {self.split!r}; use one of {', '.join(self.splits)}"
            )
        self.classes: list[str] = self._classes()
        self._luts: dict[str, np.ndarray] = self._tables()
        self.samples: list[Sample] = self._list()
        if not self.samples:
            raise BadDatasetError(
                f"{self.title}: the {self.split} split under {self.root} has no images. {self.layout_hint}"
            )
        ids = [s.id for s in self.samples]
        if len(set(ids)) != len(ids):
            raise BadDatasetError(f"{self.title}: sample ids under {self.root} are not unique")

    # -- what subclasses provide -------------------------------------------------------------------------
    def _classes(self) -> list[str]:
        """The class entries in eval-id order (background first when the data set has one)."""
        raise NotImplementedError

    def _tables(self) -> dict[str, np.ndarray]:
        """Raw-value-to-eval-id tables by name."""
        raise NotImplementedError

    def _list(self) -> list[Sample]:
        """The samples of self.split, sorted by id."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """C, the number of eval classes (background included where there is one)."""
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        """Display names in eval-id order."""
        return [display_name(c) for c in self.classes]

    @property
    def class_kinds(self) -> list[str | None] | None:
        """Each class's kind ("stuff", "thing", None for background) where the data set names kinds, else None."""
        return None

    @property
    def foreground_ids(self) -> list[int]:
        """The eval ids a prompt may name (every class but the background)."""
        return list(range(1 if self.has_background else 0, self.num_classes))

    def scene_keys(self) -> set[str]:
        """Keys that identify the scenes of this split, to prove a held-out split disjoint from it."""
        return {str(s.image.resolve()) for s in self.samples}

    def describe(self) -> dict[str, object]:
        """What identifies this data set in a run's config."""
        return {
            "dataset": self.name,
            "root": str(self.root.resolve()),
            "split": self.split,
            "images": len(self.samples),
        }

    def load_image(self, sample: Sample) -> Image.Image:
        """The RGB image of a sample."""
        try:
            with Image.open(sample.image) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as e:
            raise BadDatasetError(f"{self.title}: cannot read image {sample.image}: {e}") from None

    def load_mask(self, sample: Sample) -> np.ndarray:
        """The H×W int64 label map of a sample in eval ids (255 = ignore)."""
        try:
            with Image.open(sample.mask) as im:
                mode = im.mode
                if mode not in ("P", "L", "I", "I;16"):
                    raise BadDatasetError(
                        f"{self.title}: {sample.mask} is a {mode} image; expected a single-channel label PNG "
                        f"(palette or grayscale) whose pixel values are class ids. {self.layout_hint}"
                    )
                raw = np.asarray(im)
        except OSError as e:
            raise BadDatasetError(f"{self.title}: cannot read label file {sample.mask}: {e}") from None
        lut = self._luts[sample.lut]
        if raw.size and (int(raw.max()) >= len(lut) or int(raw.min()) < 0):
            raise BadDatasetError(
                f"{self.title}: {sample.mask} holds values outside 0..255; expected class ids"
            )
        out = lut[raw]
        bad = out == _UNKNOWN
        if bad.any():
            values = sorted(int(v) for v in np.unique(raw[bad]))[:10]
            raise BadDatasetError(
                f"{self.title}: {sample.mask} holds label values {values} that are not ids of this data set "
                f"({self._expected_values(sample.lut)}). {self.layout_hint}"
            )
        return out

    def _expected_values(self, table: str) -> str:
        """The raw values a table accepts, in words."""
        ok = np.flatnonzero(self._luts[table] != _UNKNOWN)
        return f"expected values {int(ok.min())}..{int(ok[ok != IGNORE_INDEX].max())} and {IGNORE_INDEX}"


# -- PASCAL VOC 2012 -------------------------------------------------------------------------------------
def _find_base(root: Path, candidates: list[Path], marker: str) -> Path | None:
    """The first candidate folder that holds marker."""
    for base in candidates:
        if (base / marker).exists():
            return base
    return None


class _VocStyle(SegDataset):
    """Shared reader for the VOCdevkit layouts (VOC2012 and the mmseg-converted Context)."""

    year: ClassVar[str] = ""
    list_dir: ClassVar[str] = ""
    mask_dir: ClassVar[str] = ""
    mask_ext: ClassVar[str] = ".png"

    def _list(self) -> list[Sample]:
        devkit = f"VOC{self.year}"
        marker = f"ImageSets/{self.list_dir}/{self.split}.txt"
        base = _find_base(
            self.root, [self.root / "VOCdevkit" / devkit, self.root / devkit, self.root], marker
        )
        if base is None:
            found = _find_base(
                self.root,
                [self.root / "VOCdevkit" / devkit, self.root / devkit, self.root],
                f"ImageSets/{self.list_dir}",
            )
            have = ""
            if found is not None:
                lists = sorted(p.stem for p in (found / "ImageSets" / self.list_dir).glob("*.txt"))
                have = f" That folder lists the splits {lists}."
            raise BadDatasetError(
                f"{self.title}: expected the split list {self.root / 'VOCdevkit' / devkit / marker}; no such file "
                f"(also looked for {devkit}/{marker} and {marker} directly under --root).{have} {self.layout_hint}"
            )
        listfile = base / marker
        ids = [ln.strip().split()[0] for ln in listfile.read_text().splitlines() if ln.strip()]
        samples, missing = [], []
        for i in ids:
            s = Sample(i, base / "JPEGImages" / f"{i}.jpg", base / self.mask_dir / f"{i}{self.mask_ext}")
            missing += [p for p in (s.image, s.mask) if not p.is_file()]
            samples.append(s)
        if missing:
            raise BadDatasetError(
                _missing_message(self.title, str(listfile), missing, 2 * len(ids)) + f". {self.layout_hint}"
            )
        return sorted(samples, key=lambda s: s.id)


class VOC21(_VocStyle):
    """PASCAL VOC 2012 val, 20 classes and background (label 0); 255 (object borders) ignored."""

    name, title, has_background = "voc21", "VOC21", True
    splits = ("val", "train", "trainval")
    year, list_dir, mask_dir = "2012", "Segmentation", "SegmentationClass"
    layout_hint = (
        "Layout: VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, SegmentationClass/<id>.png, "
        "ImageSets/Segmentation/<split>.txt} as extracted from VOCtrainval_11-May-2012.tar; --root is the folder "
        "that holds VOCdevkit."
    )

    def _classes(self) -> list[str]:
        return ["background"] + load_classnames("voc20.txt")

    def _tables(self) -> dict[str, np.ndarray]:
        return {"default": _lut({k: k for k in range(21)})}


class VOC20(VOC21):
    """PASCAL VOC 2012 val without background: the background pixels are ignored."""

    name, title, has_background = "voc20", "VOC20", False

    def _classes(self) -> list[str]:
        return load_classnames("voc20.txt")

    def _tables(self) -> dict[str, np.ndarray]:
        return {"default": _lut({0: IGNORE_INDEX} | {k: k - 1 for k in range(1, 21)})}


# -- PASCAL Context ---------------------------------------------------------------------------------------
class Context60(_VocStyle):
    """PASCAL Context val (mmseg-converted), 59 classes and background (label 0)."""

    name, title, has_background = "context60", "Context60", True
    year, list_dir, mask_dir = "2010", "SegmentationContext", "SegmentationClassContext"
    layout_hint = (
        "Layout (mmseg-converted, tools/dataset_converters/pascal_context.py): VOCdevkit/VOC2010/{JPEGImages/<id>.jpg, "
        "SegmentationClassContext/<id>.png with values 0..59 (0 = background), "
        "ImageSets/SegmentationContext/<split>.txt}; --root is the folder that holds VOCdevkit."
    )

    def _classes(self) -> list[str]:
        return ["background"] + load_classnames("context59.txt")

    def _tables(self) -> dict[str, np.ndarray]:
        return {"default": _lut({k: k for k in range(60)})}


class Context59(Context60):
    """PASCAL Context val, 59 classes; background ignored."""

    name, title, has_background = "context59", "Context59", False

    def _classes(self) -> list[str]:
        return load_classnames("context59.txt")

    def _tables(self) -> dict[str, np.ndarray]:
        return {"default": _lut({0: IGNORE_INDEX} | {k: k - 1 for k in range(1, 60)})}


# -- COCO-Stuff164k and COCO-Object ----------------------------------------------------------------------
# COCO category ids of the 80 things, in labelTrainIds order 0..79; stuff ids 92..182 are trainIds 80..170.
_COCO_THING_IDS = [*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70] + [
    *range(72, 83),
    *range(84, 91),
]
_COCO_NUM_THINGS = 80
_COCO_NUM_FINE = 171


def coco_raw_to_trainid() -> dict[int, int]:
    """The official stuffthingmaps value (category id - 1) to labelTrainIds (0..170) table."""
    table = {cid - 1: t for t, cid in enumerate(_COCO_THING_IDS)}
    table |= {cid - 1: _COCO_NUM_THINGS + i for i, cid in enumerate(range(92, 183))}
    return table


def coco_fine_to_coarse() -> list[int]:
    """For each of the 171 fine trainIds, its COCO-Stuff-27 coarse id (official COCO-Stuff hierarchy)."""
    spec = json.loads((_CLASSNAMES / "coco_stuff27_map.json").read_text())
    coarse = spec["coarse"]
    return [coarse.index(spec["fine_to_coarse"][f]) for f in spec["fine"]]


class CocoStuff171(SegDataset):
    """COCO-Stuff164k val2017, 171 classes (80 things + 91 stuff); 255 ignored."""

    name, title, has_background = "coco-stuff171", "COCO-Stuff171", False
    layout_hint = (
        "Layout: images/<split>2017/<id>.jpg and annotations/<split>2017/<id>_labelTrainIds.png "
        "(mmseg-converted, values 0..170) or annotations/<split>2017/<id>.png (the official stuffthingmaps, "
        "values = COCO category id - 1); --root is the folder that holds images/ and annotations/."
    )

    def _target(self) -> list[int]:
        """Eval id of each fine trainId 0..170."""
        return list(range(_COCO_NUM_FINE))

    def _classes(self) -> list[str]:
        return load_classnames("coco_stuff171.txt")

    def _tables(self) -> dict[str, np.ndarray]:
        target = self._target()
        trainid = _lut(dict(enumerate(target)))
        raw = _lut({v: target[t] for v, t in coco_raw_to_trainid().items()}, default=IGNORE_INDEX)
        return {"trainid": trainid, "raw": raw}

    def _list(self) -> list[Sample]:
        folder = f"{self.split}2017"
        base = _find_base(self.root, [self.root, self.root / "coco_stuff164k"], f"images/{folder}")
        if base is None:
            raise BadDatasetError(
                f"{self.title}: expected the image folder {self.root / 'images' / folder}; not found. {self.layout_hint}"
            )
        ann = base / "annotations" / folder
        if not ann.is_dir():
            raise BadDatasetError(
                f"{self.title}: expected the label folder {ann}; not found. {self.layout_hint}"
            )
        samples, missing = [], []
        images = sorted(
            p for p in (base / "images" / folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")
        )
        for img in images:
            trainid, raw = ann / f"{img.stem}_labelTrainIds.png", ann / f"{img.stem}.png"
            if trainid.is_file():
                samples.append(Sample(img.stem, img, trainid, "trainid"))
            elif raw.is_file():
                samples.append(Sample(img.stem, img, raw, "raw"))
            else:
                missing.append(trainid)
        if missing:
            raise BadDatasetError(
                _missing_message(
                    self.title, f"the images in {base / 'images' / folder}", missing, len(images)
                )
                + f". {self.layout_hint}"
            )
        return samples


class CocoObject(CocoStuff171):
    """COCO-Object: the 80 COCO things and background (every stuff class), from the COCO-Stuff164k maps."""

    name, title, has_background = "coco-object", "COCO-Object", True

    def _target(self) -> list[int]:
        return [t + 1 if t < _COCO_NUM_THINGS else 0 for t in range(_COCO_NUM_FINE)]

    def _classes(self) -> list[str]:
        return ["background"] + load_classnames("coco_stuff171.txt")[:_COCO_NUM_THINGS]


class CocoStuff27(CocoStuff171):
    """COCO-Stuff-27: the 171 classes merged into their 27 supercategories."""

    name, title, has_background = "coco-stuff27", "COCO-Stuff27", False

    def _target(self) -> list[int]:
        return coco_fine_to_coarse()

    def _classes(self) -> list[str]:
        return load_classnames("coco_stuff27.txt")


# -- Cityscapes ------------------------------------------------------------------------------------------
# The official labelIds of the 19 evaluation classes, in trainId order 0..18 (cityscapesscripts labels.py).
_CITYSCAPES_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


class Cityscapes(SegDataset):
    """Cityscapes val, 19 classes; every other label ignored."""

    name, title, has_background = "cityscapes", "Cityscapes", False
    splits = ("val", "train")
    layout_hint = (
        "Layout: leftImg8bit/<split>/<city>/<name>_leftImg8bit.png and gtFine/<split>/<city>/"
        "<name>_gtFine_labelTrainIds.png (made by cityscapesscripts' createTrainIdLabelImgs) or "
        "<name>_gtFine_labelIds.png (the official download); --root is the folder that holds leftImg8bit/ and gtFine/."
    )

    def _classes(self) -> list[str]:
        return load_classnames("cityscapes19.txt")

    def _tables(self) -> dict[str, np.ndarray]:
        return {
            "trainid": _lut({k: k for k in range(19)}),
            "labelid": _lut({lid: t for t, lid in enumerate(_CITYSCAPES_IDS)}, default=IGNORE_INDEX),
        }

    def _list(self) -> list[Sample]:
        marker = f"leftImg8bit/{self.split}"
        base = _find_base(self.root, [self.root, self.root / "cityscapes"], marker)
        if base is None:
            raise BadDatasetError(
                f"{self.title}: expected the image folder {self.root / marker}; not found. {self.layout_hint}"
            )
        gt = base / "gtFine" / self.split
        if not gt.is_dir():
            raise BadDatasetError(
                f"{self.title}: expected the label folder {gt}; not found. {self.layout_hint}"
            )
        suffix = "_leftImg8bit.png"
        images = sorted((base / marker).glob(f"*/*{suffix}"))
        samples, missing = [], []
        for img in images:
            stem = img.name[: -len(suffix)]
            trainid = gt / img.parent.name / f"{stem}_gtFine_labelTrainIds.png"
            labelid = gt / img.parent.name / f"{stem}_gtFine_labelIds.png"
            if trainid.is_file():
                samples.append(Sample(stem, img, trainid, "trainid"))
            elif labelid.is_file():
                samples.append(Sample(stem, img, labelid, "labelid"))
            else:
                missing.append(trainid)
        if missing:
            raise BadDatasetError(
                _missing_message(self.title, f"the images in {base / marker}", missing, len(images))
                + f". {self.layout_hint}"
            )
        return sorted(samples, key=lambda s: s.id)


# -- ADE20K ----------------------------------------------------------------------------------------------
class ADE20K(SegDataset):
    """ADE20K (SceneParsing) val, 150 classes; label 0 ('other') ignored (reduce_zero_label)."""

    name, title, has_background = "ade20k", "ADE20K", False
    layout_hint = (
        "Layout: ADEChallengeData2016/images/{validation,training}/<id>.jpg and "
        "ADEChallengeData2016/annotations/{validation,training}/<id>.png with values 0..150; "
        "--root is ADEChallengeData2016 or the folder that holds it."
    )
    _folders: ClassVar[dict[str, str]] = {"val": "validation", "train": "training"}

    def _classes(self) -> list[str]:
        return load_classnames("ade20k150.txt")

    def _tables(self) -> dict[str, np.ndarray]:
        return {"default": _lut({0: IGNORE_INDEX} | {k: k - 1 for k in range(1, 151)})}

    def _list(self) -> list[Sample]:
        folder = self._folders[self.split]
        marker = f"images/{folder}"
        base = _find_base(self.root, [self.root / "ADEChallengeData2016", self.root], marker)
        if base is None:
            raise BadDatasetError(
                f"{self.title}: expected the image folder {self.root / 'ADEChallengeData2016' / marker}; not found. {self.layout_hint}"
            )
        ann = base / "annotations" / folder
        if not ann.is_dir():
            raise BadDatasetError(
                f"{self.title}: expected the label folder {ann}; not found. {self.layout_hint}"
            )
        images = sorted((base / marker).glob("*.jpg"))
        samples = [Sample(p.stem, p, ann / f"{p.stem}.png") for p in images]
        missing = [s.mask for s in samples if not s.mask.is_file()]
        if missing:
            raise BadDatasetError(
                _missing_message(self.title, f"the images in {base / marker}", missing, len(images))
                + f". {self.layout_hint}"
            )
        return samples


# -- The synthetic world ---------------------------------------------------------------------------------
class World(SegDataset):
    """The project's synthetic world as `attnseg world render` writes it; 255 ignored.

    Its classes.json says whether it has a background: `background_id` null (what the renderer writes: stuff
    covers every pixel) gives the world's classes alone, scored without τ like COCO-Stuff; an id gives a
    background class at eval id 0, as VOC has.
    """

    name, title = "world", "World"
    splits = ()
    default_split = None
    heldout_split = None  # a world folder holds one split: a held-out τ needs --tau-root (another render)
    layout_hint = (
        "Layout (attnseg world render --out DIR): DIR/classes.json, DIR/index.jsonl (one scene per line with "
        "'id', 'image', 'mask'), DIR/images/*.png, DIR/masks/*.png; --root is DIR."
    )

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        """Read classes.json and index.jsonl under root; split, when given, must be the split the folder holds."""
        root_p = Path(root).expanduser()
        self._render = {}
        render = root_p / "render.json"
        if render.is_file():
            try:
                self._render = json.loads(render.read_text())
            except ValueError:
                raise BadDatasetError(f"{self.title}: {render} is not valid JSON") from None
        held = str(self._render.get("split", "all"))
        if split not in (None, held):
            raise BadDatasetError(
                f"{self.title}: {root_p} holds the {held!r} split (render.json), not {split!r}; render that split into "
                "its own folder with `attnseg world render --split ...` and point --root (or --tau-root) at it"
            )
        super().__init__(root_p, held)

    @property
    def has_background(self) -> bool:  # type: ignore[override]
        """Whether classes.json names a background id (the rendered world does not)."""
        return self._bg is not None

    @property
    def class_kinds(self) -> list[str | None]:
        """The kind classes.json gives each class ("stuff", "thing"), None for background."""
        return ([None] if self.has_background else []) + list(self._kinds)

    def _classes(self) -> list[str]:
        path = self.root / "classes.json"
        if not path.is_file():
            raise BadDatasetError(f"{self.title}: expected {path}; not found. {self.layout_hint}")
        try:
            spec = json.loads(path.read_text())
            entries = sorted(spec["classes"], key=lambda c: int(c["id"]))
            bg = spec.get("background_id", 0)  # folders rendered before the null existed name 0
            self._bg = None if bg is None else int(bg)
            self._ignore = int(spec.get("ignore_index", IGNORE_INDEX))
            self._ids = [int(c["id"]) for c in entries]
            self._kinds = [c.get("kind") for c in entries]
            names = []
            for c in entries:
                syn = [str(c["name"])] + [str(s) for s in c.get("synonyms", []) if str(s) != str(c["name"])]
                names.append("|".join(syn))
        except (ValueError, KeyError, TypeError) as e:
            raise BadDatasetError(
                f"{self.title}: {path} does not match the world layout ({e!r}). {self.layout_hint}"
            ) from None
        if self._bg in self._ids or self._ignore in self._ids or len(set(self._ids)) != len(self._ids):
            raise BadDatasetError(
                f"{self.title}: {path}: class ids must be unique and differ from background_id and ignore_index"
            )
        if not all(0 <= i < 256 for i in self._ids):
            raise BadDatasetError(f"{self.title}: {path}: class ids must lie in 0..255")
        return (["background"] if self.has_background else []) + names

    def _tables(self) -> dict[str, np.ndarray]:
        first = 1 if self.has_background else 0
        pairs = {self._ignore: IGNORE_INDEX} | {raw: first + k for k, raw in enumerate(self._ids)}
        if self._bg is not None:
            pairs[self._bg] = 0
        return {"default": _lut(pairs)}  # without a background id a 0 pixel is unknown and fails loudly

    def _list(self) -> list[Sample]:
        index = self.root / "index.jsonl"
        if not index.is_file():
            raise BadDatasetError(f"{self.title}: expected {index}; not found. {self.layout_hint}")
        samples, missing = [], []
        for n, line in enumerate(index.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                s = Sample(str(rec["id"]), self.root / rec["image"], self.root / rec["mask"])
            except (ValueError, KeyError, TypeError):
                raise BadDatasetError(
                    f"{self.title}: {index}:{n} is not a scene record with 'id', 'image', 'mask'"
                ) from None
            missing += [p for p in (s.image, s.mask) if not p.is_file()]
            samples.append(s)
        if missing:
            raise BadDatasetError(
                _missing_message(self.title, str(index), missing, 2 * len(samples)) + f". {self.layout_hint}"
            )
        return sorted(samples, key=lambda s: s.id)

    def scene_keys(self) -> set[str]:
        """Scenes are fixed by (split, seed, index): two renders with the same split and seed share them all."""
        if "split" in self._render and "seed" in self._render:
            tag = f"world:{self._render['split']}:{self._render['seed']}"
            return {f"{tag}:{s.id}" for s in self.samples}
        return super().scene_keys()


DATASETS: dict[str, type[SegDataset]] = {
    c.name: c
    for c in (
        VOC21,
        VOC20,
        Context59,
        Context60,
        CocoObject,
        CocoStuff171,
        CocoStuff27,
        Cityscapes,
        ADE20K,
        World,
    )
}


def get_dataset(name: str, root: str | Path, split: str | None = None) -> SegDataset:
    """The reader registered under name, opened on root."""
    if name not in DATASETS:
        raise BadConfigError(f"unknown data set {name!r}; use one of {', '.join(DATASETS)}")
    return DATASETS[name](root, split)
