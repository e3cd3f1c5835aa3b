"""Evaluation protocols: which classes a prompt names, how τ is chosen, and how scores become labels.

- `oracle-tags`: prompt with the classes present in the ground truth (the paper's protocol; an oracle).
- `open`: prompt with every class of the data set, split over several prompts when there are many.
τ, the constant background channel, is `fixed` (given, or the segmentor's own), `heldout` (swept on a split
that is not scored), or `test-oracle` (swept on the scored split: the paper's choice, labelled an oracle).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from attnseg.errors import BadConfigError
from attnseg.eval.datasets import SegDataset
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
