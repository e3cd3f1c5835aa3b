"""The presence step with a model: leave-one-out prompts, the denoising-error test, and the decision record.

The tensors part (scores, decision) is `attnseg.method.presence`; this module builds the prompts and runs the
backbone. Cost per image, K named classes over P prompts: K + P forward rows per noise level, levels capped so
that the rows stay within `PresenceConfig.max_rows` (at least one level), plus the second segmentation pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from attnseg.backbones.base import Backbone
from attnseg.backbones.noise_error import noise_errors
from attnseg.method.presence import PresenceConfig, decide, leave_one_out_scores
from attnseg.prompts import ClassSpec, PromptBuilder, PromptPlan


@dataclass
class PresenceResult:
    """What the test found for one image: a score and a decision per named class, and what it cost."""

    scores: torch.Tensor  # K, relative error rise when the class is left out
    present: torch.Tensor  # K bools
    levels: tuple[int, ...]
    rows: int  # denoiser rows the test ran (prompts × levels)
    seconds: float

    def to_dict(self, names: list[str], config: PresenceConfig) -> dict:
        """For result.json: each class's score and decision, and the settings that made them."""
        return {
            "mode": config.mode,
            "threshold": config.threshold,
            "levels": list(self.levels),
            "forward_rows": self.rows,
            "seconds": round(self.seconds, 4),
            "classes": {
                n: {"score": round(float(s), 6), "present": bool(p)}
                for n, s, p in zip(names, self.scores, self.present)
            },
            "found": [n for n, p in zip(names, self.present) if p],
            "absent": [n for n, p in zip(names, self.present) if not p],
        }


def _text_without(builder: PromptBuilder, specs: list[ClassSpec], background: list[ClassSpec]) -> str:
    """The prompt naming `specs` (and the background words); the empty prompt when nothing is left."""
    if not specs and not background:
        return ""
    return builder.build(specs, background)[0].text


def leave_one_out_prompts(
    builder: PromptBuilder, specs: list[ClassSpec], plans: list[PromptPlan], background: list[ClassSpec]
) -> tuple[list[str], list[tuple[int, list[int]]]]:
    """Every prompt as it is, then each with one class left out; per plan its full row and left-out rows."""
    texts: list[str] = []
    rows: list[tuple[int, list[int]]] = []
    for plan in plans:
        full = len(texts)
        texts.append(plan.text)
        left = []
        for k in plan.class_indices:
            others = [specs[i] for i in plan.class_indices if i != k]
            left.append(len(texts))
            texts.append(_text_without(builder, others, background))
        rows.append((full, left))
    return texts, rows


def find_present(
    backbone: Backbone,
    builder: PromptBuilder,
    pixels_3ss: torch.Tensor,
    specs: list[ClassSpec],
    plans: list[PromptPlan],
    background: list[ClassSpec],
    open_maps_khw: torch.Tensor,
    config: PresenceConfig,
    seed: int,
) -> PresenceResult:
    """Score and decide every named class of one image; open_maps_khw are the open pass's class maps."""
    t0 = time.perf_counter()
    texts, rows = leave_one_out_prompts(builder, specs, plans, background)
    levels = config.levels_for(len(texts))
    generator = torch.Generator().manual_seed(seed)
    errors = noise_errors(backbone, pixels_3ss, texts, levels, generator)  # R×T×h×w
    scores = torch.zeros(len(specs))
    for plan, (full, left) in zip(plans, rows):
        # Each prompt's rises are relative to its own full-prompt error: one scale across prompts.
        idx = plan.class_indices
        scores[idx] = leave_one_out_scores(errors[full], errors[left], open_maps_khw[idx])
    present = decide(scores, config.threshold)
    return PresenceResult(scores, present, levels, len(texts) * len(levels), time.perf_counter() - t0)
