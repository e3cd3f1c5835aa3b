"""Presence: which named classes are in the image, by a denoising-error test (training-free, plain tensors).

A class is judged present when leaving its name out of the prompt raises the denoiser's error where the open
pass puts the class (a leave-one-out diffusion-classifier test, localised by the class's own map). Errors are
taken relative to the error of the prompt the class was named in, so classes named in different prompts (long
vocabularies) are compared on one scale. The scores then label the image from the open pass's maps
(`label_present`): by default each map is weighted by its class's score relative to the image's best, so no
class is cut at a hard threshold; the "threshold" rule keeps the classes whose score reaches a threshold.
Then each found class must explain the pixels it took (`region_test`): over them, leaving its name out must
raise the error more than leaving out the class that would take them instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attnseg.errors import BadConfigError
from attnseg.method.config import MethodConfig
from attnseg.method.labels import assign_labels
from attnseg.method.pipeline import TokenLayout

PRESENCE_MODES = ("off", "denoise")
PRESENCE_LABELS = ("weighted", "threshold")
OPEN_RESCALES = ("minmax", "method")


@dataclass(frozen=True)
class PresenceConfig:
    """The presence step's settings; the threshold was chosen on the world's tune split (docs/WORLD.md)."""

    mode: str = "denoise"  # off (every named class takes part, as before) | denoise
    # Noise levels of the test, t of 1000 (flow-matching models: σ = t / 1000). Each adds K + P forward rows
    # (K classes, P prompts); several levels average out the noise draw, which dominates a single test
    # (tune split AUC, all 13 world classes named: 0.82 at one level, 0.90 at 5, 0.92 at 10, 0.92 at 20).
    timesteps: tuple[int, ...] = (50, 150, 250, 350, 450, 550, 650, 750, 850, 950)
    threshold: float = 0.0125  # a class is present when its relative error rise reaches this (tune split)
    # The rise is averaged under the class's open-pass map raised to this power (1: the map as it is; higher
    # looks where the class is most surely drawn; 2 chosen on the tune split).
    sharpness: float = 2.0
    # Bound on the test's forward rows per image: levels are dropped (keeping at least one) beyond it.
    max_rows: int = 150
    # 2: test again against a prompt naming the classes kept by the first test (the prompts the model knows:
    # a class list of what is there): a kept class must still lower the error when left out of it, a dropped
    # one may come back if adding it lowers the error. Only when the kept set plus one class fits one prompt.
    rounds: int = 1
    # True: segment the image again, naming the kept classes only. False: keep the open pass's maps of the
    # kept classes. Chosen on the tune split: with the test's mistakes the open maps score higher (a wrongly
    # kept class named alone takes a min-max peak of its own); with a perfect test the second pass is better.
    second_pass: bool = False
    # How the scores label the image. "weighted": every class's open-pass map is weighted by
    # (its score / the image's best score)^weight_power (score <= 0: weight 0, the class takes no pixel) and
    # each pixel goes to the highest weighted map; a class is found when it takes a pixel. No hard cut, so a
    # thin thing the test barely hears still wins where its map is clearly strongest, and an absent class
    # must beat the others' maps by the factor it lost. "threshold": keep the classes whose score reaches
    # `threshold` and label with their maps (the earlier rule). Chosen on the tune split (docs/WORLD.md).
    labels: str = "weighted"
    weight_power: float = 0.1
    # A found class that takes less than this share of the image's pixels is dropped, smallest first, and its
    # pixels go to the next best class (either rule; never the last class). An absent class the labels let
    # through mostly takes a few scattered pixels; 0 keeps every class that takes one. Per model, on tune.
    min_share: float = 0.01
    # The open pass's rescaling (c): "minmax" leaves out the per-pixel division by Z, the sum over every named
    # class's tokens, which in an open prompt are mostly absent classes that pull on each pixel's share;
    # "method" keeps the method's own. On world-m32's tune split, the ground truth deciding, goca's open maps
    # score 63.2 with min-max against 59.2 with the division (with a prompt of the present classes only the
    # division wins, 66.1 against 58.7; docs/WORLD.md). A class named alone (nothing to weigh it against) and a
    # second pass (second_pass) keep the method's own.
    open_rescale: str = "minmax"
    # After the labels: a found class must explain the pixels it took at least as well as the class that would
    # take them without it (its runner-up there), by the test's own error maps: over its pixels, leaving its
    # name out must raise the error more, on average, than leaving the runner-up's out. The class that does
    # worst is dropped and the image labelled again, until every found class passes (never the last one). An
    # absent class that wins pixels on another class's object takes them with a map, not with the model's
    # need of its name. World-m32, 200 tune scenes, p 0.15 and share 0.5%: 58.5 mIoU and 125 clean scenes
    # against 56.5 and 97 without it (docs/WORLD.md); per model on tune, with the rest of the labelling.
    region_test: bool = True

    def __post_init__(self) -> None:
        numbers = {
            "threshold": self.threshold,
            "sharpness": self.sharpness,
            "weight_power": self.weight_power,
            "min_share": self.min_share,
        }
        integers = {"max_rows": self.max_rows, "rounds": self.rounds}
        for name, value in numbers.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BadConfigError(f"presence {name} must be a number, got {value!r}")
        for name, value in integers.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise BadConfigError(f"presence {name} must be a whole number, got {value!r}")
        for name in ("second_pass", "region_test"):
            if not isinstance(getattr(self, name), bool):
                raise BadConfigError(f"presence {name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.timesteps, (tuple, list)) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in self.timesteps
        ):
            raise BadConfigError(f"presence timesteps must be whole numbers, got {self.timesteps!r}")
        object.__setattr__(self, "timesteps", tuple(self.timesteps))  # a list from JSON: hashable, comparable
        if self.mode not in PRESENCE_MODES:
            raise BadConfigError(f"presence={self.mode!r} is not one of {', '.join(PRESENCE_MODES)}")
        if not self.timesteps or any(not 0 < t < 1000 for t in self.timesteps):
            raise BadConfigError(f"presence timesteps must lie in (0, 1000), got {self.timesteps}")
        if self.rounds not in (1, 2):
            raise BadConfigError(f"presence rounds must be 1 or 2, got {self.rounds}")
        if self.open_rescale not in OPEN_RESCALES:
            raise BadConfigError(
                f"presence open_rescale must be one of {', '.join(OPEN_RESCALES)}, got {self.open_rescale!r}"
            )
        if self.labels not in PRESENCE_LABELS:
            raise BadConfigError(
                f"presence labels must be one of {', '.join(PRESENCE_LABELS)}, got {self.labels!r}"
            )
        if not self.weight_power > 0:
            raise BadConfigError(f"presence weight_power must be > 0, got {self.weight_power}")
        if not 0 <= self.min_share < 1:
            raise BadConfigError(f"presence min_share must lie in [0, 1), got {self.min_share}")
        if not self.sharpness > 0:
            raise BadConfigError(f"presence sharpness must be > 0, got {self.sharpness}")
        if self.max_rows < 1:
            raise BadConfigError(f"presence max_rows must be >= 1, got {self.max_rows}")

    @property
    def enabled(self) -> bool:
        """Whether the step runs at all."""
        return self.mode != "off"

    def open_pass_config(self, config: MethodConfig) -> MethodConfig:
        """The method's settings for the open pass: its rescaling replaced by `open_rescale`'s."""
        if self.open_rescale == "minmax" and config.rescale != "minmax":
            return dataclasses.replace(config, rescale="minmax")
        return config

    def levels_for(self, n_rows_per_level: int) -> tuple[int, ...]:
        """The noise levels that fit max_rows when one level costs n_rows_per_level rows (at least one)."""
        n = max(1, min(len(self.timesteps), self.max_rows // max(1, n_rows_per_level)))
        # Keep levels spread over the range rather than the first n.
        picks = torch.linspace(0, len(self.timesteps) - 1, n).round().long().unique().tolist()
        return tuple(self.timesteps[i] for i in picks)


def presence_config(value: str | bool | PresenceConfig | None = None, **overrides: object) -> PresenceConfig:
    """A PresenceConfig from 'on' / 'off' / a mode name / a bool / a config (None: the default)."""
    if isinstance(value, PresenceConfig):
        base = value
    elif value is None or value is True or value == "on":
        base = PresenceConfig()
    elif value is False or value == "off":
        base = PresenceConfig(mode="off")
    elif isinstance(value, str):
        base = PresenceConfig(mode=value)
    else:
        raise BadConfigError(f"presence must be on, off or one of {', '.join(PRESENCE_MODES)}; got {value!r}")
    if overrides:
        known = set(PresenceConfig.__dataclass_fields__)
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise BadConfigError(
                f"unknown presence setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        base = PresenceConfig(**{**base.__dict__, **overrides})
    return base


def parse_presence_setting(name: str, text: str) -> object:
    """A `--set presence_<field>=VALUE` value, read by the field's type and checked; BadConfigError if not.

    timesteps take `100,300,500` (t of 1000); second_pass takes true/false; the rest a number or a mode name.
    """
    from attnseg.method.config import _FALSE_WORDS, _TRUE_WORDS

    field = name.removeprefix("presence_")
    defaults = PresenceConfig()
    if field not in PresenceConfig.__dataclass_fields__:
        known = ", ".join(f"presence_{f}" for f in PresenceConfig.__dataclass_fields__)
        raise BadConfigError(f"unknown presence setting {name!r}; known: {known}")
    default, raw = getattr(defaults, field), text.strip()
    try:
        if isinstance(default, bool):
            if raw.lower() not in _TRUE_WORDS + _FALSE_WORDS:
                raise ValueError
            value: object = raw.lower() in _TRUE_WORDS
        elif isinstance(default, tuple):
            value = tuple(int(p) for p in raw.strip("[]() ").split(",") if p.strip())
        elif isinstance(default, int):
            value = int(raw)
        elif isinstance(default, float):
            value = float(raw)
        else:
            value = raw
    except ValueError:
        example = {"timesteps": "100,300,500", "second_pass": "true"}.get(field, repr(default))
        raise BadConfigError(f"{name}={text!r}: expected a value like {example}") from None
    try:
        presence_config("on", **{field: value})
    except BadConfigError as exc:
        raise BadConfigError(f"{name}={text!r}: {exc}") from None
    return value


def leave_one_out_scores(
    err_full_thw: torch.Tensor,
    err_left_out_kthw: torch.Tensor,
    maps_khw: torch.Tensor,
    sharpness: float = 1.0,
) -> torch.Tensor:
    """Per class (K): the error rise when its name is left out, relative to the full prompt's mean error.

    err_full_thw: T×h×w per-pixel error with every class of the prompt named (T noise levels).
    err_left_out_kthw: K×T×h×w, the same with class k left out. maps_khw: the open pass's class maps in [0, 1],
    any size: the rise is averaged under each class's own map (raised to `sharpness`), so a small present thing
    is not drowned by the rest of the image. Averaged over the T levels.
    """
    return naming_gain(err_left_out_kthw, err_full_thw[None], maps_khw, err_full_thw, sharpness)


def leave_one_out_rises(err_full_thw: torch.Tensor, err_left_out_kthw: torch.Tensor) -> torch.Tensor:
    """K×h×w: where leaving each class out raises the error, relative to the full prompt's mean error, mean over T."""
    return relative_rise(err_left_out_kthw, err_full_thw[None], err_full_thw).mean(1)


def relative_rise(
    err_without_kthw: torch.Tensor, err_with_kthw: torch.Tensor, base_thw: torch.Tensor
) -> torch.Tensor:
    """K×T×h×w: error without the name minus with it, per level divided by base_thw's mean error at that level."""
    scale = base_thw.float().mean(dim=(1, 2)).clamp_min(1e-12)  # T: this prompt's own error level
    return (err_without_kthw.float() - err_with_kthw.float()) / scale.view(1, -1, 1, 1)


def naming_gain(
    err_without_kthw: torch.Tensor,
    err_with_kthw: torch.Tensor,
    maps_khw: torch.Tensor,
    base_thw: torch.Tensor,
    sharpness: float = 1.0,
) -> torch.Tensor:
    """Per class (K): how much naming it lowers the error under its map, relative to base_thw's mean error.

    err_without / err_with: K×T×h×w (or 1×T×h×w, broadcast), the error with the class's name left out and
    named; base_thw: the error of the prompt the test is relative to (T×h×w). The map, area-resized to the
    error's grid and raised to `sharpness`, weighs the pixels. Averaged over the T levels.
    """
    h, w = err_without_kthw.shape[2:]
    weights = F.interpolate(maps_khw[None].float(), size=(h, w), mode="area")[0].clamp_min(0)
    weights = weights / weights.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)  # peak 1: powers stay finite
    weights = weights**sharpness
    weights = weights / weights.sum(dim=(1, 2), keepdim=True).clamp_min(1e-12)  # K×h×w, each sums to 1
    rise = relative_rise(err_without_kthw, err_with_kthw, base_thw)
    return (rise * weights[:, None]).sum(dim=(2, 3)).mean(1)


def decide(scores_k: torch.Tensor, threshold: float) -> torch.Tensor:
    """K bools: present where the score reaches the threshold; the best-scoring class is always kept."""
    keep = scores_k >= threshold
    if scores_k.numel():
        keep[scores_k.argmax()] = True  # an image shows something: never segment into nothing
    return keep


def presence_weights(scores_k: torch.Tensor, power: float) -> torch.Tensor:
    """K weights in [0, 1]: (score / best score)^power, 0 where the score is not above 0; the best class 1."""
    weights = torch.zeros(scores_k.shape, dtype=torch.float32)
    if not scores_k.numel():
        return weights
    best = scores_k.max()
    if best > 0:
        weights = (scores_k.float().clamp_min(0) / best.float()) ** power
    weights[scores_k.argmax()] = 1.0  # an image shows something: never segment into nothing
    return weights


def weighted_labels(
    maps_khw: torch.Tensor, weights_k: torch.Tensor, background_hw: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels (H×W: 0 where background_hw, else k+1 of the highest weighted map) and K bools: took a pixel.

    Classes of weight 0 take no pixel. Where background already won (τ or background words beat every
    class's map, weighted or not) it stays: weighting decides which class, not whether there is one.
    """
    weighted = maps_khw.float() * weights_k.view(-1, 1, 1)
    weighted[weights_k <= 0] = float("-inf")
    labels = weighted.argmax(0) + 1
    labels[background_hw] = 0
    took = torch.bincount(labels.flatten(), minlength=len(weights_k) + 1)[1:] > 0
    return labels, took


@dataclass
class PresentLabels:
    """An image labelled with the classes the test found, from the open pass's maps (no second forward)."""

    maps: torch.Tensor  # K×H×W: a found class's map (weighted, under the weighted rule), 0 for the others
    labels: torch.Tensor  # H×W: 0 background, k + 1 for class k (found classes only)
    present: torch.Tensor  # K bools
    weights: torch.Tensor | None  # K map weights under the weighted rule, else None


def smallest_below(labels_hw: torch.Tensor, present_k: torch.Tensor, min_share: float) -> int | None:
    """The present class with the fewest pixels if it has less than min_share of the image, else None.

    None too when at most one class took a pixel: an image keeps at least one class.
    """
    counts = torch.bincount(labels_hw.flatten(), minlength=len(present_k) + 1)[1:]
    took = present_k & (counts > 0)
    if min_share <= 0 or int(took.sum()) <= 1:
        return None
    small = took & (counts < min_share * labels_hw.numel())
    if not small.any():
        return None
    return int(torch.where(small, counts, counts.max() + 1).argmin())


def outexplained(
    maps_khw: torch.Tensor, weights_k: torch.Tensor, labels_hw: torch.Tensor, rises_khw: torch.Tensor
) -> int | None:
    """The found class whose pixels its runner-up explains better, the worst such one; None when all pass.

    labels_hw: 0 background, k + 1 for class k; weights_k: the map weights the labels were made with (a class of
    weight <= 0 cannot be a runner-up). At each labelled pixel the runner-up is the highest weighted map of the
    other classes; rises_khw are the test's leave-one-out rises (`leave_one_out_rises`, the latent's grid,
    read at each pixel's cell). A class fails when the mean over its pixels of its rise minus its runner-up's
    is below 0. None too when fewer than two classes took a pixel.
    """
    k, (height, width), (h, w) = len(weights_k), labels_hw.shape, rises_khw.shape[-2:]
    counts = torch.bincount(labels_hw.flatten(), minlength=k + 1)[1:]
    if int((counts > 0).sum()) <= 1:
        return None
    weighted = maps_khw.float() * weights_k.view(-1, 1, 1)
    weighted[weights_k <= 0] = float("-inf")
    top2 = weighted.topk(2, dim=0).indices  # 2×H×W
    own = (labels_hw - 1).clamp_min(0)
    runner_up = torch.where(top2[0] == own, top2[1], top2[0])
    rows, cols = torch.arange(height) * h // height, torch.arange(width) * w // width
    cells = rows.view(-1, 1) * w + cols.view(1, -1)  # H×W: each pixel's cell of the rise grid
    flat = rises_khw.float().reshape(k, h * w)
    margin = flat[own, cells] - flat[runner_up, cells]  # H×W
    labelled = labels_hw > 0
    sums = torch.bincount(own[labelled], weights=margin[labelled].double(), minlength=k)
    means = torch.where(counts > 0, sums / counts.clamp_min(1), torch.inf)
    worst = int(means.argmin())
    return worst if means[worst] < 0 else None


def _threshold_labels(maps_khw, background_hw, present_k, tau) -> torch.Tensor:
    """Labels from the kept classes' maps and τ; background that beat every class beats the kept ones too."""
    kept = present_k.nonzero().flatten()
    labels = torch.cat([torch.zeros(1, dtype=torch.long), kept + 1])[assign_labels(maps_khw[kept], tau)]
    labels[background_hw] = 0
    return labels


def label_present(
    maps_khw: torch.Tensor,
    background_hw: torch.Tensor,
    scores_k: torch.Tensor,
    config: PresenceConfig,
    tau: float,
    rises_khw: torch.Tensor | None = None,
) -> PresentLabels:
    """Apply the test's scores to the open pass's maps by `config.labels`; background_hw: where it already won.

    "weighted": `weighted_labels` of the maps weighted by `presence_weights`; found = took a pixel (the best
    class when none did). "threshold": the classes `decide` keeps, labelled by their maps and τ. Then, one
    class at a time until none is: a found class under `config.min_share` of the image is dropped (smallest
    first), else, with `config.region_test` and the test's rise maps (rises_khw), the worst class its
    runner-up outexplains (`outexplained`); the image is labelled again after each.
    """

    def to_drop(labels: torch.Tensor, present: torch.Tensor, weights: torch.Tensor) -> int | None:
        small = smallest_below(labels, present, config.min_share)
        if small is not None or not config.region_test or rises_khw is None:
            return small
        return outexplained(maps_khw, weights, labels, rises_khw)

    if config.labels == "weighted":
        weights = presence_weights(scores_k, config.weight_power)
        kept = weights.clone()
        labels, present = weighted_labels(maps_khw, kept, background_hw)
        while (drop := to_drop(labels, present, kept)) is not None:
            kept[drop] = 0.0
            labels, present = weighted_labels(maps_khw, kept, background_hw)
        if not present.any():  # background everywhere: report the best class, as the threshold rule does
            present = decide(scores_k, float("inf"))
        return PresentLabels(maps_khw * (weights * present).view(-1, 1, 1), labels, present, weights)
    present = decide(scores_k, config.threshold)
    labels = _threshold_labels(maps_khw, background_hw, present, tau)
    while (drop := to_drop(labels, present, present.float())) is not None:
        present[drop] = False
        labels = _threshold_labels(maps_khw, background_hw, present, tau)
    return PresentLabels(maps_khw * present.view(-1, 1, 1), labels, present, None)


def restrict_layout(layout: TokenLayout, keep: list[int]) -> TokenLayout:
    """The layout of the same prompt with only the classes `keep` (local indices): Z sums their tokens only."""
    class_tokens = [layout.class_tokens[k] for k in keep]
    groups = class_tokens + layout.background_tokens
    content = sorted({p for synonyms in groups for cols in synonyms for p in cols})
    return TokenLayout(class_tokens, layout.background_tokens, content, layout.special_tokens)
