"""The whole method on captured tensors: aggregate heads and layers, rescale, refine (METHOD.md (a)–(d))."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from attnseg.errors import BadConfigError
from attnseg.method.config import MethodConfig
from attnseg.method.layers import combine_layers, layer_weights, resolution_weights
from attnseg.method.refine import iterative_refine, propagate
from attnseg.method.rescale import rescale_scores


@dataclass
class CapturedAttention:
    """What one denoiser forward leaves for the method, reduced while it ran; B rows (image × prompt)."""

    cross: list[torch.Tensor]  # per layer, B×P_l×T token columns (last = rest), heads already aggregated
    head_aggregation: str  # (a) how `cross` aggregated the heads: the config's mode when it was captured
    grids: list[tuple[int, int]]  # per layer, its h×w grid
    layer_scores: torch.Tensor | None  # B×L, similarity of each layer's self-attention to the reference
    affinity: torch.Tensor | None  # B×P×P head-mean self-attention of the propagation layers, on map_size
    map_size: tuple[int, int]  # h×w of the aggregated maps
    layer_names: list[str] = field(default_factory=list)

    def rows(self, index: torch.Tensor | list[int]) -> CapturedAttention:
        """The same capture restricted to some batch rows."""
        idx = torch.as_tensor(index, dtype=torch.long)
        pick = lambda t: None if t is None else t[idx.to(t.device)]  # noqa: E731
        return CapturedAttention(
            cross=[m[idx.to(m.device)] for m in self.cross],
            head_aggregation=self.head_aggregation,
            grids=self.grids,
            layer_scores=pick(self.layer_scores),
            affinity=pick(self.affinity),
            map_size=self.map_size,
            layer_names=self.layer_names,
        )


@dataclass(frozen=True)
class TokenLayout:
    """Which token columns belong to which class; columns index CapturedAttention.cross's last axis."""

    class_tokens: list[list[list[int]]]  # K × synonyms × columns
    background_tokens: list[list[list[int]]]  # background words, same shape
    content_tokens: list[int]  # every column of every class or background word (the set R)
    special_tokens: list[int]  # start/end/pad columns, for diagnostics


@dataclass
class MethodOutput:
    """Class maps in [0, 1] on the map grid, background-word maps, and what the method decided."""

    class_maps: torch.Tensor  # B×K×h×w
    background_maps: torch.Tensor  # B×Kb×h×w (propagate_background: one merged channel, or none)
    layer_weights: torch.Tensor  # B×L
    special_token_mass: torch.Tensor  # B, mean share of attention on special tokens
    steps: dict[str, torch.Tensor] = field(default_factory=dict)  # intermediates, when asked for


def _layer_weights(captured: CapturedAttention, config: MethodConfig, batch: int) -> torch.Tensor:
    n_layers = len(captured.grids)
    if config.scores_layers:
        if captured.layer_scores is None:
            raise BadConfigError("layer_aggregation='goca' needs self-attention scores; the capture has none")
        return layer_weights(captured.layer_scores)
    if config.layer_aggregation == "resolution":
        return resolution_weights(captured.grids, config.resolution_weights).expand(batch, n_layers)
    return torch.full((batch, n_layers), 1.0 / n_layers)


def _refine(maps: torch.Tensor, captured: CapturedAttention, config: MethodConfig) -> torch.Tensor:
    if not config.refines:
        return maps
    if captured.affinity is None:
        raise BadConfigError(f"refine={config.refine!r} needs self-attention; the capture has none")
    if config.refine == "iseg":
        return iterative_refine(maps, captured.affinity, config.refine_steps, config.iseg_gamma)
    return propagate(maps, captured.affinity, config.refine_steps)


def token_maps(captured: CapturedAttention, config: MethodConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(b) Every kept token's map with the layers weighed the config's way: B×T×h×w, and the weights B×L."""
    maps = captured.cross
    weights = _layer_weights(captured, config, maps[0].shape[0]).to(maps[0].device)
    return combine_layers(maps, captured.grids, weights, captured.map_size), weights


def run_method(
    captured: CapturedAttention, layout: TokenLayout, config: MethodConfig, keep_steps: bool = False
) -> MethodOutput:
    """Weigh layers, rescale and refine one capture under one token layout (heads were aggregated in the capture).

    keep_steps: MethodOutput.steps holds every intermediate (token maps … merged), to check against a reference.
    """
    if captured.head_aggregation != config.head_aggregation:
        raise BadConfigError(
            f"the capture aggregated heads by {captured.head_aggregation!r} but the method asks for "
            f"{config.head_aggregation!r}: capture again with this config"
        )
    attn, weights = token_maps(captured, config)  # B×T×h×w
    batch = attn.shape[0]
    special = (
        attn[:, layout.special_tokens].sum(1).mean(dim=(1, 2))
        if layout.special_tokens
        else torch.zeros(batch)
    )
    entities = layout.class_tokens + layout.background_tokens
    n_classes = len(layout.class_tokens)
    if config.refine_order == "before_rescale" and config.refines:
        attn = _refine(attn, captured, config)
    steps: dict[str, torch.Tensor] = {"token_maps": attn} if keep_steps else {}
    scores = rescale_scores(
        attn,
        entities,
        layout.content_tokens,
        per_pixel=config.rescales_per_pixel,
        blur=config.blur,
        pooling=config.name_pooling,
        steps=steps if keep_steps else None,
    )
    steps["rescaled"] = scores
    class_maps, background_maps = scores[:, :n_classes], scores[:, n_classes:]
    if config.propagate_background and background_maps.shape[1]:
        # The reference merges the background words (max over words) and refines that map with the classes.
        background_maps = background_maps.amax(1, keepdim=True)
    merged = torch.cat([class_maps, background_maps], 1)
    steps["merged"] = merged
    if config.refine_order == "after_rescale":
        if config.propagate_background:
            merged = _refine(merged, captured, config)
            class_maps, background_maps = merged[:, :n_classes], merged[:, n_classes:]
        else:
            class_maps = _refine(class_maps, captured, config)  # background words stay out of propagation
    steps["final_maps"] = torch.cat([class_maps, background_maps], 1)
    if not keep_steps:
        steps = {}
    return MethodOutput(class_maps, background_maps, weights, special, steps)
