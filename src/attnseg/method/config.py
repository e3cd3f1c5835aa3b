"""Method settings: one frozen dataclass, with named presets for GoCA and the baselines."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields, replace

from attnseg.errors import BadConfigError

HEAD_MODES = ("mean", "goca")
LAYER_MODES = ("mean", "goca", "resolution")
RESCALE_MODES = ("minmax", "goca")
REFINE_MODES = ("none", "propagate", "iseg")
REFINE_ORDERS = ("after_rescale", "before_rescale")
LABEL_RULES = ("max", "offset")  # background = max(τ, B), or B + τ (the reference's data-set configs)
NAME_POOLINGS = ("max", "mean")  # a class with several names: max over names, or mean over all their tokens
STOP_WORD_SETS = ("attnseg", "reference")  # prompts.STOP_WORDS, or the reference's a/an/the/and


def _module_paths(value: object) -> tuple[str, ...]:
    """Module paths from a tuple or a comma-separated string (what `--set KEY=a,b` gives)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(str(item).strip() for item in items if str(item).strip())


@dataclass(frozen=True)
class MethodConfig:
    """Every switch of METHOD.md (a)–(e), so each step can be ablated on its own."""

    head_aggregation: str = "goca"  # (a) mean | goca
    layer_aggregation: str = "goca"  # (b) mean | goca | resolution (fixed per-resolution weights)
    reference_channel0: bool = False  # (b) the reference code's channel-0 path, kept for comparison
    renormalize_resized_rows: bool = True  # (b) renormalise self-attention rows after resizing
    resolution_weights: tuple[float, ...] = (0.3, 0.5, 0.1, 0.1)  # coarse → fine, for "resolution"
    rescale: str = "goca"  # (c) minmax | goca (divide by the content-token sum Z first)
    blur: bool = True  # (c) gaussian blur, kernel 5, sigma 1.1, reflect
    refine: str = "propagate"  # (d) none | propagate | iseg
    refine_steps: int = 2  # (d) k
    refine_order: str = "after_rescale"  # (d) propagate after or before rescaling
    # (d) Which layers' self-attention propagation averages: module paths (a path selects every layer at or
    # under it, encoder layers included), or a count N (the last N finest layers; 0: all); None: family preset.
    propagation_layers: tuple[str, ...] | int | None = None
    # (b) Module path of the attention whose image query is the reference feature F (FLUX: the block whose
    # output is F); None: family preset.
    reference_layer: str | None = None
    # (d) Propagate the background words' merged map (max over words) with the classes and min-max it too.
    propagate_background: bool = False
    name_pooling: str = "max"  # (c) several names of one class: max over names | mean over all their tokens
    stop_words: str = "attnseg"  # (c) words of a name that are not content: attnseg | reference
    iseg_gamma: float = 2.0  # iSeg-style: power that lowers the entropy of self-attention rows
    tau: float = 0.5  # (e) background threshold on [0, 1] class maps
    label_rule: str = "max"  # (e) background = max(τ, B) | offset: B + τ (τ in [-1, 1] there)
    # Memory, not method: the most MiB of attention probabilities one read attention call holds at once
    # (query chunks × head groups, float32). Results do not depend on it beyond float rounding.
    attention_chunk_mib: float = 16.0

    def __post_init__(self) -> None:
        checks = {
            "head_aggregation": HEAD_MODES,
            "layer_aggregation": LAYER_MODES,
            "rescale": RESCALE_MODES,
            "refine": REFINE_MODES,
            "refine_order": REFINE_ORDERS,
            "label_rule": LABEL_RULES,
            "name_pooling": NAME_POOLINGS,
            "stop_words": STOP_WORD_SETS,
        }
        for name, allowed in checks.items():
            value = getattr(self, name)
            if value not in allowed:
                raise BadConfigError(f"{name}={value!r} is not one of {', '.join(allowed)}")
        layers = self.propagation_layers
        if isinstance(layers, str) and layers.strip().isdigit():
            layers = int(layers)
        elif isinstance(layers, (str, list, tuple)):
            layers = _module_paths(layers)
            if len(layers) == 1 and layers[0].isdigit():
                layers = int(layers[0])
            elif not layers:
                raise BadConfigError(
                    "propagation_layers names no module path; give paths, a count, or leave it out"
                )
        if isinstance(layers, bool) or (layers is not None and not isinstance(layers, (int, tuple))):
            raise BadConfigError(f"propagation_layers must be module paths or a count, got {layers!r}")
        if isinstance(layers, int) and layers < 0:
            raise BadConfigError(f"propagation_layers must be >= 0 (0 = all), got {layers}")
        object.__setattr__(self, "propagation_layers", layers)  # normalised: a tuple of paths or a count
        if self.reference_layer is not None:
            if not isinstance(self.reference_layer, str) or not self.reference_layer.strip():
                raise BadConfigError(f"reference_layer must be a module path, got {self.reference_layer!r}")
            object.__setattr__(self, "reference_layer", self.reference_layer.strip())
        if self.refine_steps < 0:
            raise BadConfigError(f"refine_steps must be >= 0, got {self.refine_steps}")
        low = -1.0 if self.label_rule == "offset" else 0.0
        if not low <= self.tau <= 1.0:
            raise BadConfigError(
                f"tau must lie in [{low:g}, 1] under label_rule={self.label_rule!r} "
                f"(class maps are min-max scaled), got {self.tau}"
            )
        if self.attention_chunk_mib <= 0:
            raise BadConfigError(f"attention_chunk_mib must be > 0, got {self.attention_chunk_mib}")
        if self.iseg_gamma <= 0:
            raise BadConfigError(f"iseg_gamma must be > 0, got {self.iseg_gamma}")

    # Derived switches: callers outside method/ ask these instead of comparing mode strings.
    @property
    def weights_heads(self) -> bool:
        """(a) Heads are weighted per pixel by their share of the output (needs the output projection)."""
        return self.head_aggregation == "goca"

    @property
    def scores_layers(self) -> bool:
        """(b) Layers are weighted by their self-attention's similarity to the reference feature's affinity."""
        return self.layer_aggregation == "goca"

    @property
    def rescales_per_pixel(self) -> bool:
        """(c) Class scores are divided by the content-token sum per pixel before min-max."""
        return self.rescale == "goca"

    @property
    def refines(self) -> bool:
        """(d) Class maps are refined with self-attention (which must then be captured)."""
        return self.refine != "none" and self.refine_steps > 0

    @property
    def names_propagation_layers(self) -> bool:
        """(d) propagation_layers names module paths (rather than a count of the finest layers)."""
        return isinstance(self.propagation_layers, tuple)

    def to_dict(self) -> dict:
        """Plain dict for result.json."""
        out = asdict(self)
        if isinstance(self.propagation_layers, tuple):
            out["propagation_layers"] = list(self.propagation_layers)
        return out

    def with_overrides(self, **overrides: object) -> MethodConfig:
        """A copy with some fields replaced; unknown names are an error."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise BadConfigError(
                f"unknown method setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return replace(self, **overrides)


METHOD_PRESETS: dict[str, MethodConfig] = {
    # The paper's method: auto aggregation over heads and layers, per-pixel rescaling, propagation.
    "goca": MethodConfig(),
    # The paper's vanilla baseline: uniform heads and layers, min-max only.
    "vanilla": MethodConfig(head_aggregation="mean", layer_aggregation="mean", rescale="minmax"),
    # The published reference code, every choice as it makes it (a golden test holds it to that code's numbers):
    # channel-0 reference affinity, no row renormalisation, background words propagated with the classes,
    # the 'offset' label rule, mean over all tokens of a class's names, its short stop-word list.
    "goca-reference": MethodConfig(
        reference_channel0=True,
        renormalize_resized_rows=False,
        propagate_background=True,
        name_pooling="mean",
        stop_words="reference",
        label_rule="offset",
    ),
    # The reference code's vanilla configuration: uniform heads and layers, min-max only, the same label step.
    "vanilla-reference": MethodConfig(
        head_aggregation="mean",
        layer_aggregation="mean",
        rescale="minmax",
        renormalize_resized_rows=False,
        propagate_background=True,
        name_pooling="mean",
        stop_words="reference",
        label_rule="offset",
    ),
    # DiffSegmenter-style: fixed per-resolution layer weights, one self-attention product.
    "diffsegmenter": MethodConfig(
        head_aggregation="mean",
        layer_aggregation="resolution",
        rescale="minmax",
        refine="propagate",
        refine_steps=1,
    ),
    # iSeg-style: iterative refinement with entropy-reduced self-attention.
    "iseg": MethodConfig(
        head_aggregation="mean", layer_aggregation="mean", rescale="minmax", refine="iseg", refine_steps=5
    ),
}


# Settings a preset fixes as published, which a model family's preset or a model's attnseg.json may not change
# (the user's overrides still may): the baselines keep their own propagation steps.
# The family's head mode (the reference's per family) applies to the GoCA presets only: baselines keep theirs.
# The reference presets keep the reference's blur whatever a model's attnseg.json measured for goca.
PRESET_FIXED: dict[str, frozenset[str]] = {
    "goca": frozenset(),
    "vanilla": frozenset({"refine_steps", "head_aggregation"}),
    "diffsegmenter": frozenset({"refine_steps", "head_aggregation"}),
    "iseg": frozenset({"refine_steps", "head_aggregation"}),
    "goca-reference": frozenset({"blur"}),
    "vanilla-reference": frozenset({"blur", "head_aggregation"}),
}


def method_config(name: str, **overrides: object) -> MethodConfig:
    """The preset called `name`, with overrides applied."""
    if name not in METHOD_PRESETS:
        raise BadConfigError(f"unknown method {name!r}; choose one of {', '.join(METHOD_PRESETS)}")
    return METHOD_PRESETS[name].with_overrides(**overrides) if overrides else METHOD_PRESETS[name]


def model_method_config(
    name: str, model_defaults: dict[str, object], overrides: dict[str, object]
) -> MethodConfig:
    """The preset `name` for one model: `overrides`, then the model's defaults (less what the preset fixes)."""
    fixed = PRESET_FIXED.get(name, frozenset())
    settings = {key: value for key, value in model_defaults.items() if key not in fixed}
    return method_config(name, **(settings | overrides))


_TRUE_WORDS = ("true", "yes", "on", "1")
_MODULE_PATH = re.compile(r"[A-Za-z_]\w*(\.\w+)+")  # a dotted module path, as named_modules() gives it
_FALSE_WORDS = ("false", "no", "off", "0")


def parse_setting(name: str, text: str) -> object:
    """A method setting from its command-line text, read by the field's type and checked; BadConfigError if not.

    Booleans take true/false, yes/no, on/off, 1/0; a tuple of floats takes `0.3,0.5` or `[0.3, 0.5]`;
    an optional int takes `none`. The value is then checked as MethodConfig checks it.
    """
    # Annotations are strings here (postponed evaluation); a type object is read by its name all the same.
    types = {
        f.name: f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        for f in fields(MethodConfig)
    }
    if name not in types:
        raise BadConfigError(f"unknown method setting {name!r}; known: {', '.join(sorted(types))}")
    kind, raw = types[name], text.strip()
    word = raw.lower()
    allowed = {
        "bool": f"true or false ({'/'.join(_TRUE_WORDS)} or {'/'.join(_FALSE_WORDS)})",
        "tuple[float, ...]": "a comma-separated list of non-negative numbers, not all 0 (e.g. 0.3,0.5,0.1,0.1)",
        "int": "a whole number",
        "int | None": "a whole number, or none (the family's default)",
        "float": "a finite number",
        "tuple[str, ...] | int | None": "a count (a whole number), module paths separated by commas "
        "(e.g. up_blocks.3.attentions.0,up_blocks.3.attentions.1), or none",
        "str | None": "a module path (e.g. up_blocks.2.attentions.1), or none",
    }
    try:
        if kind == "bool":
            if word not in _TRUE_WORDS + _FALSE_WORDS:
                raise ValueError
            value: object = word in _TRUE_WORDS
        elif kind == "tuple[float, ...]":
            value = tuple(float(p) for p in raw.strip("[]() ").split(",") if p.strip())
            if not value or any(not math.isfinite(v) or v < 0 for v in value) or sum(value) <= 0:
                raise ValueError
        elif kind.endswith("| None") and word in ("none", "null"):
            value = None
        elif kind in ("tuple[str, ...] | int | None", "str | None"):
            if kind.startswith("tuple") and re.fullmatch(r"-?\d+", raw):
                value = int(raw)
            elif all(_MODULE_PATH.fullmatch(p.strip()) for p in raw.split(",")) and (
                kind.startswith("tuple") or "," not in raw
            ):
                value = raw
            else:
                raise ValueError
        elif kind.startswith("int"):
            value = int(raw)
        elif kind == "float":
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError
        else:
            value = raw
    except ValueError:
        raise BadConfigError(f"{name}={text!r}: {name} takes {allowed.get(kind, kind)}") from None
    try:
        # The field's own checks (choices, ranges), named; τ against its widest range (the offset rule's), since
        # the label rule may come in another setting: the whole config is checked again when it is built.
        base = MethodConfig(label_rule="offset") if name == "tau" else MethodConfig()
        replace(base, **{name: value})
    except BadConfigError as exc:
        raise BadConfigError(f"{name}={text!r}: {exc}") from None
    return value
