"""Streaming capture: attention is reduced inside each attention call to what the method reads, then dropped.

Per layer this keeps the head-aggregated cross-attention on the kept token columns (B×P_l×(T+1)), one
similarity score (or, for layers that run before the reference feature exists, the head-mean self-attention
already resized to the reference grid), and a running sum of the propagation layers' self-attention.
Per-head maps never outlive the head loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from attnseg.method.heads import aggregate_heads, head_weights
from attnseg.method.layers import layer_similarity, reference_affinity, resize_self_attention
from attnseg.method.pipeline import CapturedAttention

# A head group's logits are at most this many elements (B·heads·P·L): bounds the transient memory.
_LOGITS_BUDGET = 64 * 1024 * 1024


@dataclass(frozen=True)
class AttentionPlan:
    """What one attention call contributes. Slices index the query / key sequence of that call."""

    layer: str  # the layer (transformer block) this call belongs to
    read_cross: bool = False
    read_self: bool = False
    image_queries: slice = field(default_factory=lambda: slice(None))
    text_keys: slice | None = None  # None: no text keys in this call
    image_keys: slice | None = None  # None: no image keys in this call
    reference_query: bool = False  # this call's image queries are the reference feature F


class CaptureStore:
    """Collects the reductions of one forward; `finish()` turns them into a CapturedAttention."""

    def __init__(
        self,
        latent_size: tuple[int, int],
        keep_tokens: int,
        map_size: tuple[int, int],
        reference_grid: tuple[int, int] | None,
        propagation_layers: set[str],
        renormalize_rows: bool = True,
        reference_channel0: bool = False,
    ) -> None:
        self.latent_size = latent_size
        self.keep_tokens = keep_tokens
        self.map_size = map_size
        self.reference_grid = reference_grid
        self.propagation_layers = propagation_layers
        self.renormalize_rows = renormalize_rows
        self.reference_channel0 = reference_channel0
        self.layer_order: list[str] = []
        self.grids: dict[str, tuple[int, int]] = {}
        self.cross_mean: dict[str, torch.Tensor] = {}
        self.cross_goca: dict[str, torch.Tensor] = {}
        self.scores: dict[str, torch.Tensor] = {}
        self.pending: dict[str, torch.Tensor] = {}  # layer → self-attention on the reference grid, awaiting R
        self.reference: torch.Tensor | None = None  # B×P_r×P_r
        self.affinity_sum: torch.Tensor | None = None
        self.affinity_count = 0
        self.peak_bytes = 0

    # -- geometry -------------------------------------------------------------------------------------
    def grid_for(self, positions: int) -> tuple[int, int]:
        """The h×w grid of a layer with `positions` image tokens, from the latent's aspect."""
        lh, lw = self.latent_size
        factor = math.sqrt(lh * lw / positions)
        h, w = round(lh / factor), round(lw / factor)
        if h * w != positions:
            raise RuntimeError(f"cannot place {positions} image tokens on a grid of aspect {lh}:{lw}")
        return h, w

    def _register(self, layer: str, grid: tuple[int, int]) -> None:
        if layer not in self.grids:
            self.layer_order.append(layer)
            self.grids[layer] = grid

    def _track(self) -> None:
        tensors = [*self.cross_mean.values(), *self.cross_goca.values(), *self.pending.values()]
        if self.affinity_sum is not None:
            tensors.append(self.affinity_sum)
        if self.reference is not None:
            tensors.append(self.reference)
        self.peak_bytes = max(self.peak_bytes, sum(t.numel() * t.element_size() for t in tensors))

    # -- what processors call -------------------------------------------------------------------------
    def add_cross(
        self, layer: str, probs_bhpn: torch.Tensor, weights_bhp: torch.Tensor, grid: tuple[int, int]
    ) -> None:
        """Head-aggregate a layer's cross-attention both ways and keep the first T token columns + the rest."""
        self._register(layer, grid)
        for target, weights in ((self.cross_mean, None), (self.cross_goca, weights_bhp)):
            maps = aggregate_heads(probs_bhpn, weights)  # B×P×N
            kept = maps[..., : self.keep_tokens]
            if kept.shape[-1] < self.keep_tokens:  # a text shorter than the kept columns: pad with zeros
                kept = F.pad(kept, (0, self.keep_tokens - kept.shape[-1]))
            rest = maps[..., self.keep_tokens :].sum(-1, keepdim=True)
            target[layer] = torch.cat([kept, rest], -1)
        self._track()

    def scoring_rows(self, grid: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]] | None:
        """For a layer finer than the reference grid, the query rows that nearest-resizing keeps, and their grid.

        Scoring reads nothing else of such a layer, so the other rows need never be computed.
        """
        if (
            self.reference_grid is None
            or grid[0] * grid[1] <= self.reference_grid[0] * self.reference_grid[1]
        ):
            return None
        (h, w), (ht, wt) = grid, self.reference_grid
        ys = (torch.arange(ht) * h) // ht  # the source row F.interpolate(mode="nearest") picks
        xs = (torch.arange(wt) * w) // wt
        return (ys[:, None] * w + xs[None, :]).flatten(), (ht, wt)

    def add_self(
        self,
        layer: str,
        attn_bqk: torch.Tensor,
        grid: tuple[int, int],
        query_grid: tuple[int, int] | None = None,
    ) -> None:
        """Score a layer's head-mean self-attention against the reference, and add it to the propagation sum.

        attn_bqk: queries on `query_grid` (default: the layer's grid), keys on the layer's grid.
        """
        self._register(layer, grid)
        query_grid = query_grid or grid
        if layer in self.propagation_layers:
            if query_grid != grid:
                raise RuntimeError(f"propagation layer {layer} was captured on a subset of its query rows")
            on_map = resize_self_attention(attn_bqk, grid, self.map_size, self.renormalize_rows)
            self.affinity_sum = on_map if self.affinity_sum is None else self.affinity_sum + on_map
            self.affinity_count += 1
        if self.reference_grid is not None:
            on_ref = resize_self_attention(
                attn_bqk, grid, self.reference_grid, self.renormalize_rows, query_grid
            )
            if self.reference is not None:
                self.scores[layer] = layer_similarity(self.reference, on_ref)
            else:
                self.pending[layer] = on_ref
        self._track()

    def set_reference(self, feature_bpc: torch.Tensor, grid: tuple[int, int]) -> None:
        """Take the reference feature F and score the layers that were waiting for it."""
        if self.reference is not None:
            return
        expected, self.reference_grid = self.reference_grid, grid
        self.reference = reference_affinity(feature_bpc, self.reference_channel0)
        for layer, on_ref in self.pending.items():
            if expected is not None and tuple(expected) != tuple(grid):  # the preset guessed another grid
                on_ref = resize_self_attention(on_ref, expected, grid, self.renormalize_rows)
            self.scores[layer] = layer_similarity(self.reference, on_ref)
        self.pending.clear()
        self._track()

    def finish(self) -> CapturedAttention:
        """The reductions as plain tensors, in layer order; only layers with cross-attention count."""
        layers = [name for name in self.layer_order if name in self.cross_mean]
        if not layers:
            raise RuntimeError("the forward ran no cross-attention layer that the capture reads")
        scores = None
        if all(name in self.scores for name in layers):
            scores = torch.stack([self.scores[name] for name in layers], 1)
        affinity = None
        if self.affinity_sum is not None:
            affinity = self.affinity_sum / self.affinity_count
        return CapturedAttention(
            cross={
                "mean": [self.cross_mean[name] for name in layers],
                "goca": [self.cross_goca[name] for name in layers],
            },
            grids=[self.grids[name] for name in layers],
            layer_scores=scores,
            affinity=affinity,
            map_size=self.map_size,
            layer_names=layers,
        )


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _mask_block(mask: torch.Tensor | None, rows, cols) -> torch.Tensor | None:
    """The part of an additive mask (broadcastable to B×H×Lq×Lk) for some query rows and key columns."""
    if mask is None:
        return None
    if mask.shape[-2] != 1:
        mask = mask[..., rows, :]
    return mask[..., cols] if mask.shape[-1] != 1 else mask


def _head_groups(h: int, elements_per_head: int) -> list[slice]:
    """Head slices whose logits stay under the budget together."""
    group = max(1, min(h, _LOGITS_BUDGET // max(1, elements_per_head)))
    return [slice(i, min(h, i + group)) for i in range(0, h, group)]


def _block_softmax(q, k, scale, mask, heads: slice, cols) -> torch.Tensor:
    """softmax(q k^T) restricted to the key columns `cols`, for a group of heads; float32.

    Computed in place in one buffer: on a CPU these maps are memory-bound, so each saved pass counts.
    """
    logits = ((q[:, heads] * scale) @ k[:, heads, cols].transpose(-1, -2)).float()
    if mask is not None:
        logits.add_(mask.float())
    logits.sub_(logits.amax(-1, keepdim=True)).exp_()
    return logits.div_(logits.sum(-1, keepdim=True))


def _restrict(probs: torch.Tensor, cols, joint: bool) -> torch.Tensor:
    """A block of the joint softmax renormalised over its columns: the softmax restricted to that block."""
    block = probs[..., cols]
    return block / block.sum(-1, keepdim=True).clamp_min(1e-30) if joint else block


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    mask: torch.Tensor | None,
    plan: AttentionPlan | None,
    store: CaptureStore | None,
    out_proj_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention output B×H×L×d, reducing what `plan` reads into `store` on the way.

    The output always comes from the fused kernel, except in propagation layers, whose every probability is
    needed anyway: there the image rows are computed from explicit probabilities, head group by head group.
    Elsewhere only what is read is computed: the text-key block for cross-attention, and for layer scoring
    only the query rows that land on the reference grid.
    """
    if store is None or plan is None or not (plan.read_cross or plan.read_self or plan.reference_query):
        return _sdpa(q, k, v, mask, scale)
    b, h, length, d = q.shape
    rows = range(length)[plan.image_queries]
    img = slice(rows.start, rows.stop)
    positions = len(rows)
    grid = store.grid_for(positions)
    if plan.reference_query:
        store.set_reference(q[:, :, img].transpose(1, 2).reshape(b, positions, h * d), grid)
    if not (plan.read_cross or plan.read_self):
        return _sdpa(q, k, v, mask, scale)

    q_img = q[:, :, img]
    joint = plan.text_keys is not None and plan.image_keys is not None
    text_cols = plan.text_keys if plan.text_keys is not None else slice(None)
    image_cols = plan.image_keys if plan.image_keys is not None else slice(None)
    cross_heads: list[torch.Tensor] = []
    self_sum = None
    query_grid = grid
    if plan.read_self and plan.layer in store.propagation_layers:
        out = torch.empty_like(q)
        for part in (slice(0, img.start), slice(img.stop, length)):
            if part.stop > part.start:  # text-query rows of a joint call: fused, nothing read
                out[:, :, part] = _sdpa(q[:, :, part], k, v, _mask_block(mask, part, slice(None)), scale)
        for heads in _head_groups(h, b * positions * k.shape[2]):
            probs = _block_softmax(q_img, k, scale, _mask_block(mask, img, slice(None)), heads, slice(None))
            out[:, heads, img] = (probs.to(v.dtype) @ v[:, heads]).to(out.dtype)
            if plan.read_cross:
                cross_heads.append(_restrict(probs, text_cols, joint))
            block = _restrict(probs, image_cols, joint).sum(1)
            self_sum = block if self_sum is None else self_sum + block
            del probs, block
    else:
        out = _sdpa(q, k, v, mask, scale)
        if plan.read_cross:
            n_text = k[:, :, text_cols].shape[2]
            for heads in _head_groups(h, b * positions * n_text):
                cross_heads.append(
                    _block_softmax(q_img, k, scale, _mask_block(mask, img, text_cols), heads, text_cols)
                )
        if plan.read_self:
            picked = store.scoring_rows(grid)
            if picked is not None:
                picked = (picked[0].to(q.device), picked[1])
            q_rows = q_img if picked is None else q_img[:, :, picked[0]]
            query_grid = grid if picked is None else picked[1]
            row_mask = _mask_block(mask, img, image_cols)
            if row_mask is not None and picked is not None and row_mask.shape[-2] != 1:
                row_mask = row_mask[..., picked[0], :]
            for heads in _head_groups(h, b * q_rows.shape[2] * positions):
                part = _block_softmax(q_rows, k, scale, row_mask, heads, image_cols).sum(1)
                self_sum = part if self_sum is None else self_sum + part
    if plan.read_cross:
        probs_bhpn = torch.cat(cross_heads, 1)
        if out_proj_weight is not None:
            weights = head_weights(out[:, :, img].float(), out_proj_weight.float())
        else:
            weights = torch.full(probs_bhpn.shape[:3], 1.0 / h, device=q.device)
        store.add_cross(plan.layer, probs_bhpn, weights, grid)
    if plan.read_self:
        store.add_self(plan.layer, self_sum / h, grid, query_grid)
    return out
