"""Method settings: one frozen dataclass, with named presets for GoCA and the baselines."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from attnseg.errors import BadConfigError

HEAD_MODES = ("mean", "goca")
LAYER_MODES = ("mean", "goca", "resolution")
RESCALE_MODES = ("minmax", "goca")
REFINE_MODES = ("none", "propagate", "iseg")
REFINE_ORDERS = ("after_rescale", "before_rescale")


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
    propagation_layers: int | None = (
        None  # (d) average the last N finest layers' self-attention; None: family preset, 0: all
    )
    iseg_gamma: float = 2.0  # iSeg-style: power that lowers the entropy of self-attention rows
    tau: float = 0.5  # (e) background threshold on [0, 1] class maps
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
        }
        for name, allowed in checks.items():
            value = getattr(self, name)
            if value not in allowed:
                raise BadConfigError(f"{name}={value!r} is not one of {', '.join(allowed)}")
        if self.propagation_layers is not None and self.propagation_layers < 0:
            raise BadConfigError(f"propagation_layers must be >= 0 (0 = all), got {self.propagation_layers}")
        if self.refine_steps < 0:
            raise BadConfigError(f"refine_steps must be >= 0, got {self.refine_steps}")
        if not 0.0 <= self.tau <= 1.0:
            raise BadConfigError(f"tau must lie in [0, 1] (class maps are min-max scaled), got {self.tau}")
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

    def to_dict(self) -> dict:
        """Plain dict for result.json."""
        return asdict(self)

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
PRESET_FIXED: dict[str, frozenset[str]] = {
    "goca": frozenset(),
    "vanilla": frozenset({"refine_steps"}),
    "diffsegmenter": frozenset({"refine_steps"}),
    "iseg": frozenset({"refine_steps"}),
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
