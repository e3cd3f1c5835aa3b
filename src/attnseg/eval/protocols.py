"""Evaluation protocols: which classes a prompt names, how τ is chosen, and how scores become labels.

- `oracle-tags`: prompt with the classes present in the ground truth (the paper's protocol; an oracle).
- `open`: prompt with every class of the data set, split over several prompts when there are many.
τ, the constant background channel, is `fixed` (given, or the segmentor's own), `heldout` (swept on a split
that is not scored), or `test-oracle` (swept on the scored split: the paper's choice, labelled an oracle).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from attnseg.errors import BadConfigError
from attnseg.eval.datasets import SegDataset, display_name
from attnseg.labelmaps import IGNORE_INDEX

PROTOCOLS = ("oracle-tags", "open")
TAU_MODES = ("fixed", "heldout", "test-oracle")
NO_BACKGROUND_RULES = ("argmax", "tau")
DEFAULT_TAU_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
DEFAULT_CLASSES_PER_PROMPT = (
    0  # 0: one segment call per class list; the segmentor splits prompts by its token budget
)

try:  # the core's rule, so that eval labels pixels exactly as Segmentation.labels does
    from attnseg.method.labels import assign_labels as _core_assign_labels
except ImportError:  # pragma: no cover - only before the core exists
    _core_assign_labels = None


def assign_labels(scores_khw: torch.Tensor, tau: float) -> torch.Tensor:
    """H×W labels: 0 where no class score exceeds τ, else 1 + the argmax class (the core's rule)."""
    if _core_assign_labels is not None:
        return _core_assign_labels(scores_khw, tau)
    bg = torch.full_like(
        scores_khw[:1], float(tau)
    )  # local stand-in: argmax over [τ, scores], 0 = background
    return torch.cat([bg, scores_khw], 0).argmax(0)


@dataclass(frozen=True)
class Protocol:
    """How one evaluation prompts, thresholds and labels; recorded in every result."""

    name: str = "oracle-tags"
    tau: float | None = None  # fixed τ; None = the segmentor's own (Segmentation.tau)
    tau_mode: str = "fixed"
    tau_grid: tuple[float, ...] = DEFAULT_TAU_GRID
    no_background: str = "argmax"  # on data sets without a background class: argmax, or τ leaves pixels void
    classes_per_prompt: int = DEFAULT_CLASSES_PER_PROMPT
    synonyms: bool = True

    def __post_init__(self) -> None:
        """Reject settings out of range with a message that says what is allowed."""
        if self.name not in PROTOCOLS:
            raise BadConfigError(f"unknown protocol {self.name!r}; use one of {', '.join(PROTOCOLS)}")
        if self.tau_mode not in TAU_MODES:
            raise BadConfigError(f"unknown τ mode {self.tau_mode!r}; use one of {', '.join(TAU_MODES)}")
        if self.no_background not in NO_BACKGROUND_RULES:
            raise BadConfigError(f"unknown --no-background rule {self.no_background!r}; use argmax or tau")
        if self.tau is not None and not 0.0 <= self.tau <= 1.0:
            raise BadConfigError(f"--tau must lie in [0, 1] (scores are min-max normalised), got {self.tau}")
        if self.tau is not None and self.tau_mode != "fixed":
            raise BadConfigError("--tau is a fixed τ: leave it out with --tau-search heldout or test-oracle")
        if not self.tau_grid or list(self.tau_grid) != sorted(set(self.tau_grid)):
            raise BadConfigError("--tau-grid must be a non-empty increasing list of values")
        if not all(0.0 <= t <= 1.0 for t in self.tau_grid):
            raise BadConfigError("--tau-grid values must lie in [0, 1]")
        if self.classes_per_prompt < 0:
            raise BadConfigError(
                f"--classes-per-prompt must be 0 (no limit) or more, got {self.classes_per_prompt}"
            )

    def uses_tau(self, dataset: SegDataset) -> bool:
        """Whether τ decides any label on this data set."""
        return dataset.has_background or self.no_background == "tau"

    def check(self, dataset: SegDataset) -> None:
        """Reject a τ search where τ changes nothing."""
        if self.tau_mode != "fixed" and not self.uses_tau(dataset):
            raise BadConfigError(
                f"{dataset.title} has no background class and --no-background argmax labels every pixel with its "
                "best class, so τ changes nothing: drop --tau-search, or use --no-background tau"
            )

    def fill(self, dataset: SegDataset) -> int:
        """The eval id a pixel gets when no class clears τ: background (0), or void (C) without one."""
        return 0 if dataset.has_background else dataset.num_classes

    def prompt_ids(self, dataset: SegDataset, gt_hw: np.ndarray) -> list[int]:
        """The eval ids to prompt for one image: the GT's classes (oracle-tags) or all (open)."""
        if self.name == "open":
            return dataset.foreground_ids
        present = np.unique(gt_hw)
        fg = set(dataset.foreground_ids)
        return [int(c) for c in present if c != IGNORE_INDEX and int(c) in fg]

    def chunks(self, ids: Sequence[int]) -> list[list[int]]:
        """Split a class list over segment calls of at most classes_per_prompt classes each (0: one call)."""
        n = self.classes_per_prompt or max(1, len(ids))
        return [list(ids[i : i + n]) for i in range(0, len(ids), n)]

    def prompt_text(self, dataset: SegDataset, eval_id: int) -> str:
        """The class string handed to the segmentor: 'name|synonym|...' or the display name alone."""
        entry = dataset.classes[eval_id]
        return entry if self.synonyms else entry.split("|", 1)[0]

    def describe(self, dataset: SegDataset, tau: float | None) -> dict[str, object]:
        """The protocol as it is recorded in metrics.json, oracles named as such."""
        uses_tau = self.uses_tau(dataset)
        text = {
            "oracle-tags": "prompted with the classes present in each image's ground truth (oracle tags, as the paper)",
            "open": "prompted with every class of the data set"
            + (f", at most {self.classes_per_prompt} per segment call" if self.classes_per_prompt else ""),
        }[self.name]
        if not uses_tau:
            bg = "no background class: every pixel gets its best-scoring prompted class (argmax)"
        elif self.tau_mode == "fixed":
            bg = f"background where no class score exceeds a fixed τ = {tau}"
        elif self.tau_mode == "heldout":
            bg = f"background where no class score exceeds τ = {tau}, chosen on a held-out split (never the scored one)"
        else:
            bg = f"background where no class score exceeds τ = {tau}, swept on the scored split (oracle: reproduction only)"
        if uses_tau and not dataset.has_background:
            bg += "; pixels below τ are left void and count as misses"
        oracle_tau = uses_tau and self.tau_mode == "test-oracle"
        return {
            "name": self.name,
            "tau": tau if uses_tau else None,
            "tau_mode": self.tau_mode if uses_tau else "none",
            "oracle_tags": self.name == "oracle-tags",
            "oracle_tau": oracle_tau,
            "oracle": self.name == "oracle-tags" or oracle_tau,
            "no_background": self.no_background if not dataset.has_background else None,
            "classes_per_prompt": self.classes_per_prompt,
            "synonyms": self.synonyms,
            "tau_grid": list(self.tau_grid) if uses_tau and self.tau_mode != "fixed" else None,
            "description": f"{text}; {bg}",
        }


def best_class(scores_khw: torch.Tensor, prompt_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel, the highest class score and the eval id of its class (first on ties, as argmax)."""
    idx = scores_khw.argmax(0)
    best = scores_khw.gather(0, idx.unsqueeze(0))[0]
    lut = torch.as_tensor(list(prompt_ids), dtype=torch.int64, device=scores_khw.device)
    return best, lut[idx]


def predict(
    scores_khw: torch.Tensor, prompt_ids: Sequence[int], tau: float | None, fill: int
) -> torch.Tensor:
    """H×W eval ids from K×H×W scores of the prompted classes; τ=None labels every pixel by argmax."""
    if len(prompt_ids) != scores_khw.shape[0]:
        raise ValueError(f"{scores_khw.shape[0]} score maps for {len(prompt_ids)} prompted classes")
    if tau is None:
        return best_class(scores_khw, prompt_ids)[1]
    labels = assign_labels(scores_khw, tau)
    lut = torch.as_tensor([fill, *prompt_ids], dtype=torch.int64, device=labels.device)
    return lut[labels]


def parse_grid(text: str) -> tuple[float, ...]:
    """A τ grid from 'a,b,c' or 'start:stop:step' (stop included)."""
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0:
                raise ValueError
            n = int(round((stop - start) / step)) + 1
            return tuple(round(start + i * step, 6) for i in range(n) if start + i * step <= stop + 1e-9)
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise BadConfigError(
            f"--tau-grid {text!r}: give 'a,b,c' or 'start:stop:step' with step > 0"
        ) from None


# -- the paper's protocol (the reference code's, METHOD.md's second table): an oracle, labelled so ------------
PAPER_TAU_GRID: tuple[float, ...] = tuple(round(-0.4 + 0.1 * i, 1) for i in range(9))  # −0.4 … 0.4


@dataclass(frozen=True)
class PaperSettings:
    """The reference code's protocol for one data set."""

    split: str | None  # the split scored (None: the folder's only split)
    reverse: bool  # the list is scored from its last image
    limit: int  # at most this many images
    background_word: bool  # ", background" appended to every caption (a background word)
    append_missed: bool  # GT classes the caption does not name are appended to it
    source: str = "the reference code's configuration"


PAPER_SETTINGS: dict[str, PaperSettings] = {
    "voc21": PaperSettings("train", True, 3000, True, True),
    "voc20": PaperSettings(
        "train", True, 3000, True, True, "voc21's (the reference has no VOC20 configuration)"
    ),
    "context60": PaperSettings("train", True, 3000, False, True),
    "context59": PaperSettings("train", True, 3000, False, True, "context60's (no Context59 configuration)"),
    "coco-object": PaperSettings("val", False, 10000, True, False),
    "coco-stuff27": PaperSettings("val", False, 10000, False, True),
    "coco-stuff171": PaperSettings(
        "val", False, 10000, False, True, "coco-stuff27's (no 171-class configuration)"
    ),
    "cityscapes": PaperSettings("val", False, 1000, False, False),
    "ade20k": PaperSettings("val", False, 3000, True, False),
    "world": PaperSettings(None, False, 500, False, True, "attnseg's (the world is not in the reference)"),
}
BACKGROUND_WORD = "background"
CAPTIONS_HINT = (
    "The paper prompts every image with a caption a vision-language model wrote for it (at most 20 words; "
    'Context 35). Write one per scored image and pass them as JSON: {"<image id or file name>": "<caption>"}, '
    'or {"<id>": {"caption": "...", "entities": ["dog", "sofa"]}}, or a list of '
    '{"image_id": ..., "caption": ..., "entities": [...]} records (entities: the caption\'s noun phrases; '
    "those that name no ground-truth class become background words)."
)


@dataclass(frozen=True)
class Caption:
    """One image's caption and, when the file lists them, its entities (noun phrases of the caption)."""

    text: str
    entities: tuple[str, ...] = ()


def _caption_key(name: object) -> str:
    """An image id from an id or a file name ('2008_000123.jpg' → '2008_000123')."""
    return Path(str(name)).stem if "." in Path(str(name)).name else str(name)


def read_captions(path: str | Path) -> dict[str, Caption]:
    """Captions by image id from a JSON file in any of the shapes CAPTIONS_HINT lists."""
    import json

    try:
        data = json.loads(Path(path).expanduser().read_text())
    except (OSError, ValueError) as e:
        raise BadConfigError(f"--captions {path}: cannot read it as JSON ({e}). {CAPTIONS_HINT}") from None
    if isinstance(data, list):
        items = []
        for rec in data:
            key = next(
                (
                    rec[k]
                    for k in ("image_id", "id", "image", "file_name")
                    if isinstance(rec, dict) and k in rec
                ),
                None,
            )
            if key is None:
                raise BadConfigError(f"--captions {path}: record {rec!r} names no image. {CAPTIONS_HINT}")
            items.append((key, rec))
    elif isinstance(data, dict):
        items = list(data.items())
    else:
        raise BadConfigError(f"--captions {path}: expected an object or a list. {CAPTIONS_HINT}")
    out = {}
    for key, value in items:
        if isinstance(value, dict):
            text = value.get("caption", value.get("text"))
            entities = value.get("entities", value.get("objects", ()))
        else:
            text, entities = value, ()
        if not isinstance(text, str) or not text.strip():
            raise BadConfigError(f"--captions {path}: image {key!r} has no caption text. {CAPTIONS_HINT}")
        out[_caption_key(key)] = Caption(" ".join(text.split()), tuple(str(e) for e in entities))
    return out


def world_captions(dataset: SegDataset) -> dict[str, Caption]:
    """The world's own captions (index.jsonl), which the renderer writes beside every scene."""
    import json

    lines = (dataset.root / "index.jsonl").read_text().splitlines()
    return {
        str(rec["id"]): Caption(str(rec.get("caption", ""))) for rec in map(json.loads, filter(None, lines))
    }


@dataclass(frozen=True)
class PaperPrompt:
    """One image's prompt under the paper's protocol, and which of its words are classes or background."""

    text: str
    class_ids: list[int]  # eval ids, in the order of class_names
    class_names: list[str]  # 'word|word' as they occur in text, per class
    background: list[str]  # background words as they occur in text


def _find(text: str, name: str) -> str | None:
    """The words of `text` that name `name` (a plural 's'/'es' allowed), as they are written there."""
    import re

    match = re.search(r"\b" + re.escape(name) + r"(?:e?s)?\b", text, flags=re.IGNORECASE)
    return match.group() if match else None


def paper_prompt(
    caption: Caption, dataset: SegDataset, gt_ids: Sequence[int], settings: PaperSettings
) -> PaperPrompt:
    """The caption matched to the image's GT classes; missed GT classes and ', background' appended as set.

    A data set class the caption names but the GT lacks, and a listed entity that names no GT class, become
    background words (the reference matches entities to the image's GT classes only).
    """
    text = caption.text.rstrip(" .")
    gt = [int(i) for i in gt_ids]
    found: dict[int, list[str]] = {}
    background: list[str] = []
    for eid in dataset.foreground_ids:
        words = [w for w in (_find(text, s) for s in dataset.classes[eid].split("|")) if w]
        if words and eid in gt:
            found[eid] = list(dict.fromkeys(words))
        elif words:
            background.append(words[0])
    for entity in caption.entities:
        words = _find(text, entity)
        named = any(_find(entity, s) for eid in found for s in dataset.classes[eid].split("|"))
        overlaps = (
            any(b.lower() in words.lower() or words.lower() in b.lower() for b in background)
            if words
            else True
        )
        if not named and not overlaps:  # a phrase already taken as a class or background word is not doubled
            background.append(words)
    missed = [eid for eid in gt if eid not in found] if settings.append_missed else []
    for eid in missed:
        name = display_name(dataset.classes[eid])
        text += f", {name}"
        found[eid] = [name]
    if settings.background_word:
        text += f", {BACKGROUND_WORD}"
        background.append(BACKGROUND_WORD)
    ids = [eid for eid in gt if eid in found]
    # A background word inside a class name ('grass' in 'grass field') would take the class's tokens.
    classes_text = " ".join(w.lower() for eid in ids for w in found[eid])
    background = [b for b in dict.fromkeys(background) if b.lower() not in classes_text]
    return PaperPrompt(text + ".", ids, ["|".join(found[eid]) for eid in ids], background)


def run_paper(cfg, captions: str | None, segmentor_factory=None) -> dict[str, object]:
    """`attnseg eval --protocol paper`: the reference's protocol on one data set; writes metrics.json."""
    from attnseg.eval import metrics as M
    from attnseg.eval.datasets import get_dataset
    from attnseg.eval.runner import make_segmentor, versions
    from attnseg.io import atomic_write_json, output_folder

    settings = PAPER_SETTINGS.get(cfg.dataset)
    if settings is None:
        raise BadConfigError(f"--protocol paper has no settings for {cfg.dataset!r}")
    dataset = get_dataset(cfg.dataset, cfg.root, cfg.split or settings.split)
    samples = list(reversed(dataset.samples)) if settings.reverse else list(dataset.samples)
    samples = samples[: min(settings.limit, cfg.limit or settings.limit)]
    if captions:
        by_id = read_captions(captions)
    elif dataset.name == "world":
        by_id = world_captions(dataset)
    else:
        raise BadConfigError(f"--protocol paper needs --captions FILE for {dataset.title}. {CAPTIONS_HINT}")
    missing = [s.id for s in samples if s.id not in by_id or not by_id[s.id].text]
    if missing:
        raise BadConfigError(
            f"--captions: no caption for {len(missing)} of the {len(samples)} images scored (first: "
            f"{', '.join(missing[:3])}). {CAPTIONS_HINT}"
        )
    seg = (segmentor_factory or (lambda: make_segmentor(cfg)))()
    n, taus = dataset.num_classes + 1, PAPER_TAU_GRID
    fill = 0 if dataset.has_background else dataset.num_classes
    grid = torch.zeros(len(taus), n, n, dtype=torch.int64)
    prompts = []
    for sample in samples:
        image, gt = dataset.load_image(sample), dataset.load_mask(sample)
        prompt = paper_prompt(by_id[sample.id], dataset, Protocol().prompt_ids(dataset, gt), settings)
        prompts.append({"id": sample.id, "prompt": prompt.text, "background_words": prompt.background})
        gt_t = torch.from_numpy(gt)
        if not prompt.class_ids:  # nothing of the data set in the image: all background (or void)
            grid += M.confusion(gt_t, torch.full_like(gt_t, fill), n)
            continue
        result = seg.segment_prompt(image, prompt.text, prompt.class_names, prompt.background, seed=cfg.seed)
        scores = torch.as_tensor(result.scores).float()
        bg = getattr(result, "background", None)
        bg = None if bg is None else torch.as_tensor(bg).float()[None]
        lut = torch.as_tensor([fill, *prompt.class_ids], dtype=torch.int64)
        for k, tau in enumerate(taus):
            labels = assign_labels_offset(scores, tau, bg)
            grid[k] += M.confusion(gt_t, lut[labels], n)
    scored = [M.ConfusionMeter.from_matrix(grid[k]).compute() for k in range(len(taus))]
    mious = [None if math.isnan(x.miou) else x.miou for x in scored]
    best = max(range(len(taus)), key=lambda k: (-1.0 if mious[k] is None else mious[k], -k))
    sc = scored[best].to_json()
    method_settings = seg.config.to_dict() if hasattr(seg, "config") else {}  # a fake segmentor has none
    result = {
        "format": 1,
        "dataset": dataset.name,
        "title": dataset.title,
        "split": dataset.split or "all",
        "root": str(dataset.root.resolve()),
        "model": str(cfg.model or "default"),
        "method": str(cfg.method),
        "segmentor": cfg.segmentor,
        "settings": method_settings,
        "seed": cfg.seed,
        "mIoU": sc["mIoU"],
        "pixel_accuracy": sc["pixel_accuracy"],
        "mean_accuracy": sc["mean_accuracy"],
        "per_class_iou": dict(zip(dataset.class_names, sc["iou"])),
        "protocol": paper_description(settings, taus[best], captions),
        "tau": taus[best],
        "tau_search": {
            "mode": "test-oracle",
            "oracle": True,
            "grid": list(taus),
            "mIoU": mious,
            "chosen": taus[best],
        },
        "counts": {"images": len(samples), "images_in_split": len(dataset.samples), "pixels": sc["pixels"]},
        "versions": versions(),
    }
    from attnseg.eval.runner import FORMAT  # runner imports this module: a local import keeps one direction

    settings_json = json.loads(json.dumps(asdict(cfg)))
    with output_folder(Path(cfg.out).expanduser()) as stage:
        # config.json, as every run folder has: `attnseg report` recognises the run by it
        atomic_write_json(
            stage / "config.json",
            {
                "format": FORMAT,
                "identity": cfg.identity(),
                "settings": settings_json,
                "captions": str(captions),
            },
        )
        atomic_write_json(stage / "prompts.json", prompts)
        atomic_write_json(stage / "metrics.json", result)
    return result


def assign_labels_offset(
    scores_khw: torch.Tensor, tau: float, background_1hw: torch.Tensor | None
) -> torch.Tensor:
    """The reference's label step: argmax over [B + τ (τ without background words), class scores]."""
    from attnseg.method.labels import assign_labels as core

    return core(scores_khw, tau, background_1hw, rule="offset")


def paper_description(settings: PaperSettings, tau: float, captions: str | None) -> dict[str, object]:
    """The paper protocol as metrics.json records it: every oracle named."""
    order = "reversed, " if settings.reverse else ""
    text = (
        f"the paper's protocol ({settings.source}): {order}at most {settings.limit} images; prompted with a caption per "
        f"image ({'--captions ' + str(captions) if captions else 'the data set own captions'})"
        + (", GT classes it missed appended" if settings.append_missed else "")
        + (", ', background' appended" if settings.background_word else "")
        + "; caption words naming no GT class are background words; background = B + τ ('offset'), τ swept "
        f"{PAPER_TAU_GRID[0]}…{PAPER_TAU_GRID[-1]} on the scored images, best τ = {tau} reported (oracle)"
    )
    return {
        "name": "paper",
        "tau": tau,
        "tau_mode": "test-oracle",
        "oracle_tags": True,  # captions matched to the GT's classes, missed GT classes appended
        "oracle_tau": True,
        "oracle": True,
        "label_rule": "offset",
        "tau_grid": list(PAPER_TAU_GRID),
        "settings": asdict(settings),
        "description": text,
    }
