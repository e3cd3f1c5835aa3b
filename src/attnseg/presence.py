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
from attnseg.errors import BadClassesError
from attnseg.method.presence import (
    PresenceConfig,
    decide,
    leave_one_out_rises,
    leave_one_out_scores,
    naming_gain,
)
from attnseg.prompts import ClassSpec, PromptBuilder, PromptPlan


@dataclass
class PresenceResult:
    """What the test found for one image: a score and a decision per named class, and what it cost."""

    scores: torch.Tensor  # K, relative error rise when the class is left out
    present: torch.Tensor  # K bools
    levels: tuple[int, ...]
    rows: int  # denoiser rows the test ran (prompts × levels)
    seconds: float
    first_present: torch.Tensor | None = None  # K bools after the first round, when a second one ran
    weights: torch.Tensor | None = None  # K map weights, when the labels are weighted (PresenceConfig.labels)
    # K×h×w leave-one-out rise maps (the latent's grid), for the region test (PresenceConfig.region_test)
    rises: torch.Tensor | None = None

    def to_dict(self, names: list[str], config: PresenceConfig) -> dict:
        """For result.json: each class's score and decision, and the settings that made them."""
        return {
            "mode": config.mode,
            "labels": config.labels,
            "weight_power": config.weight_power,
            "min_share": config.min_share,
            "open_rescale": config.open_rescale,
            "region_test": config.region_test,
            "threshold": config.threshold,
            "sharpness": config.sharpness,
            "levels": list(self.levels),
            "forward_rows": self.rows,
            "seconds": round(self.seconds, 4),
            "classes": {
                n: {"score": round(float(s), 6), "present": bool(p)}
                | ({} if self.weights is None else {"weight": round(float(self.weights[k]), 6)})
                for k, (n, s, p) in enumerate(zip(names, self.scores, self.present))
            },
            "first_round_found": None
            if self.first_present is None
            else [n for n, p in zip(names, self.first_present) if p],
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
    rises = torch.zeros(len(specs), *errors.shape[-2:])
    for plan, (full, left) in zip(plans, rows):
        # Each prompt's rises are relative to its own full-prompt error: one scale across prompts.
        idx = plan.class_indices
        scores[idx] = leave_one_out_scores(errors[full], errors[left], open_maps_khw[idx], config.sharpness)
        rises[idx] = leave_one_out_rises(errors[full], errors[left])
    present = decide(scores, config.threshold)
    seconds = time.perf_counter() - t0
    result = PresenceResult(scores, present, levels, len(texts) * len(levels), seconds, rises=rises)
    if config.rounds == 2:
        result = _second_round(
            backbone, builder, pixels_3ss, specs, background, open_maps_khw, config, seed, result
        )
    return result


def _one_prompt(builder: PromptBuilder, specs: list[ClassSpec], background: list[ClassSpec]) -> str | None:
    """The prompt naming specs when they fit one prompt, else None ('' when there is nothing to name)."""
    if not specs and not background:
        return ""
    try:
        plans = builder.build(specs, background)
    except BadClassesError:
        return None
    return plans[0].text if len(plans) == 1 else None


def _second_round(
    backbone: Backbone,
    builder: PromptBuilder,
    pixels_3ss: torch.Tensor,
    specs: list[ClassSpec],
    background: list[ClassSpec],
    open_maps_khw: torch.Tensor,
    config: PresenceConfig,
    seed: int,
    first: PresenceResult,
) -> PresenceResult:
    """Test every class against the prompt of the kept set S: kept ones left out of S, the others added to S."""
    t0 = time.perf_counter()
    kept = [k for k in range(len(specs)) if first.present[k]]
    texts = [_one_prompt(builder, [specs[k] for k in kept], background)]
    for k in range(len(specs)):
        others = [specs[i] for i in kept if i != k] + ([specs[k]] if k not in kept else [])
        texts.append(_one_prompt(builder, others, background))
    if any(t is None for t in texts):  # S plus one class does not fit one prompt: keep the first round
        return first
    levels = config.levels_for(len(texts))
    errors = noise_errors(backbone, pixels_3ss, texts, levels, torch.Generator().manual_seed(seed + 1))
    base, per_class = errors[0], errors[1:]  # T×h×w, K×T×h×w
    in_s = torch.tensor([k in kept for k in range(len(specs))]).view(-1, 1, 1, 1)
    # In S: naming k is S against S∖k; outside S: S ∪ k against S. Either way, error without minus with.
    without = torch.where(in_s, per_class, base[None])
    with_k = torch.where(in_s, base[None], per_class)
    scores = naming_gain(without, with_k, open_maps_khw, base, config.sharpness)
    present = decide(scores, config.threshold)
    rows = first.rows + len(texts) * len(levels)
    seconds = first.seconds + time.perf_counter() - t0
    return PresenceResult(
        scores, present, first.levels, rows, seconds, first_present=first.present, rises=first.rises
    )
