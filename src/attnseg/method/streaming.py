"""Streaming reduction: inside each attention call, steps (a), (b) and (d) keep what the method reads, then drop it.

Per layer this keeps the head-aggregated cross-attention on the kept token columns (B×P_l×(T+1), one head mode:
the config's), one similarity score (or, for layers that run before the reference feature exists, the head-mean
self-attention already resized to the reference grid), and a running sum of the propagation layers'
self-attention. Per-head maps never outlive the head loop. Torch only: backbones route q/k/v here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from attnseg.method.config import MethodConfig
from attnseg.method.heads import aggregate_heads, head_weights
from attnseg.method.layers import (
    layer_similarity,
    reference_affinity,
    resize_self_attention,
    resize_self_attention_rows,
)
from attnseg.method.pipeline import CapturedAttention


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

    @property
    def reads(self) -> bool:
        """Whether the call contributes anything (else it runs the fused kernel untouched)."""
        return self.read_cross or self.read_self or self.reference_query

    @property
    def joint(self) -> bool:
        """Text and image keys in one softmax (SD3, FLUX): each block is renormalised on its own."""
        return self.text_keys is not None and self.image_keys is not None

    @property
    def text_cols(self) -> slice:
        """The key columns of the text tokens."""
        return self.text_keys if self.text_keys is not None else slice(None)

    @property
    def image_cols(self) -> slice:
        """The key columns of the image tokens."""
        return self.image_keys if self.image_keys is not None else slice(None)


@dataclass
class CapturePlan:
    """Which attention calls are read, and the grids the reducer needs before the forward runs."""

    plans: dict[str, AttentionPlan]  # attention module name → plan
    map_size: tuple[int, int]
    reference_grid: tuple[int, int] | None
    propagation_layers: set[str] = field(default_factory=set)
    reference_output: str | None = None  # a module whose output is F (FLUX: a block), hooked by the backbone


class StreamingReducer:
    """Collects the reductions of one forward; `finish()` turns them into a CapturedAttention."""

    def __init__(
        self, plan: CapturePlan, latent_size: tuple[int, int], keep_tokens: int, config: MethodConfig
    ) -> None:
        self.latent_size = latent_size
        self.keep_tokens = keep_tokens
        self.map_size = plan.map_size
        self.reference_grid = plan.reference_grid
        self.propagation_layers = plan.propagation_layers
        self.config = config
        self.layer_order: list[str] = []
        self.grids: dict[str, tuple[int, int]] = {}
        self.cross: dict[str, torch.Tensor] = {}  # layer → B×P_l×(T+1), heads aggregated the config's way
        self.scores: dict[str, torch.Tensor] = {}
        # layer → its head-mean self-attention awaiting R: on the reference grid, or on its own grids where
        # that is smaller; pending_grids holds (key grid, query grid) of each.
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_grids: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
        self.reference: torch.Tensor | None = None  # B×P_r×P_r
        self.affinity_sum: torch.Tensor | None = None
        self.affinity_count = 0
        self._propagated: set[str] = set()
        self.peak_bytes = 0
        self.transient_bytes = 0

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
        tensors = [*self.cross.values(), *self.pending.values()]
        tensors += [t for t in (self.affinity_sum, self.reference) if t is not None]
        self.peak_bytes = max(self.peak_bytes, sum(t.numel() * t.element_size() for t in tensors))

    # -- what attend calls ----------------------------------------------------------------------------
    def add_cross(
        self,
        layer: str,
        probs_bhpn: torch.Tensor,
        grid: tuple[int, int],
        out_bhpd: torch.Tensor,
        out_proj_weight: torch.Tensor | None,
        rows: slice | None = None,
    ) -> None:
        """(a) Aggregate a layer's cross-attention heads; keep the first T token columns + the rest summed.

        out_bhpd: the call's attention output on the same image rows, read only for GoCA head weights.
        rows: which of the layer's image rows these are (default all): a call may hand its rows in chunks.
        """
        self._register(layer, grid)
        maps = aggregate_heads(probs_bhpn, self._head_weights(probs_bhpn, out_bhpd, out_proj_weight))  # B×P×N
        kept = maps[..., : self.keep_tokens]
        if kept.shape[-1] < self.keep_tokens:  # a text shorter than the kept columns: pad with zeros
            kept = F.pad(kept, (0, self.keep_tokens - kept.shape[-1]))
        rest = maps[..., self.keep_tokens :].sum(-1, keepdim=True)
        if rows is None:
            self.cross[layer] = torch.cat([kept, rest], -1)
        else:
            if layer not in self.cross:
                positions = grid[0] * grid[1]
                self.cross[layer] = maps.new_zeros(maps.shape[0], positions, self.keep_tokens + 1)
            self.cross[layer][:, rows, : self.keep_tokens] = kept
            self.cross[layer][:, rows, self.keep_tokens :] = rest
        self._track()

    def _head_weights(
        self, probs_bhpn: torch.Tensor, out_bhpd: torch.Tensor, out_proj_weight: torch.Tensor | None
    ) -> torch.Tensor | None:
        """(a) GoCA's per-pixel head weights B×H×P, or None when the config averages heads."""
        if not self.config.weights_heads:
            return None
        if out_proj_weight is None:  # no projection to weigh heads by: uniform weights
            return torch.full(probs_bhpn.shape[:3], 1.0 / probs_bhpn.shape[1], device=out_bhpd.device)
        return head_weights(out_bhpd.float(), out_proj_weight.float())

    def add_self(
        self,
        layer: str,
        attn_bqk: torch.Tensor,
        grid: tuple[int, int],
        query_grid: tuple[int, int] | None = None,
        rows: slice | None = None,
    ) -> None:
        """(b) Score a layer's head-mean self-attention; (d) add it to the propagation sum.

        attn_bqk: queries on `query_grid` (default: the layer's grid), keys on the layer's grid.
        rows: which query rows of `query_grid` these are (default all); every row must come exactly once.
        """
        self._register(layer, grid)
        query_grid = tuple(query_grid or grid)
        rows = rows if rows is not None else slice(0, query_grid[0] * query_grid[1])
        if layer in self.propagation_layers:
            if query_grid != tuple(grid):
                raise RuntimeError(f"propagation layer {layer} was captured on a subset of its query rows")
            self._propagate_rows(layer, attn_bqk, rows, grid)
        if self.reference_grid is not None:
            self._score_rows(layer, attn_bqk, rows, grid, query_grid)
        self._track()

    def _propagate_rows(self, layer: str, attn_bqk: torch.Tensor, rows: slice, grid: tuple[int, int]) -> None:
        """(d) Add these query rows, resized to the map grid, to the propagation sum."""
        renormalize = self.config.renormalize_resized_rows
        picked, on_map = resize_self_attention_rows(attn_bqk, rows, grid, self.map_size, renormalize)
        if self.affinity_sum is None:
            positions = self.map_size[0] * self.map_size[1]
            self.affinity_sum = on_map.new_zeros(attn_bqk.shape[0], positions, positions)
        _add_rows(self.affinity_sum, picked, on_map)
        self._propagated.add(layer)
        self.affinity_count = len(self._propagated)

    def _score_rows(
        self,
        layer: str,
        attn_bqk: torch.Tensor,
        rows: slice,
        grid: tuple[int, int],
        query_grid: tuple[int, int],
    ) -> None:
        """(b) Score these query rows against R, or keep them until R comes."""
        batch, n_ref = attn_bqk.shape[0], self.reference_grid[0] * self.reference_grid[1]
        n_query, n_key = query_grid[0] * query_grid[1], grid[0] * grid[1]
        if self.reference is None and n_query * n_key <= n_ref * n_ref:
            # A layer coarser than the reference grid waits at its own size (SDXL: a 32² layer is 16×
            # smaller than on the 64² grid) and is resized when R comes: the same numbers, later.
            if layer not in self.pending:
                self.pending[layer] = attn_bqk.new_zeros(batch, n_query, n_key)
                self.pending_grids[layer] = (tuple(grid), query_grid)
            self.pending[layer][:, rows] = attn_bqk
            return
        picked, on_ref = resize_self_attention_rows(
            attn_bqk, rows, grid, self.reference_grid, self.config.renormalize_resized_rows, query_grid
        )
        if self.reference is not None:
            part = layer_similarity(self.reference[:, picked], on_ref)
            self.scores[layer] = part if layer not in self.scores else self.scores[layer] + part
            return
        if layer not in self.pending:
            self.pending[layer] = on_ref.new_zeros(batch, n_ref, n_ref)
            self.pending_grids[layer] = (tuple(self.reference_grid),) * 2
        self.pending[layer][:, picked] = on_ref

    def track_transient(self, *tensors: torch.Tensor) -> None:
        """Note the largest working set one attention call held at once (for the memory report)."""
        self.transient_bytes = max(self.transient_bytes, sum(t.numel() * t.element_size() for t in tensors))

    def set_reference(self, feature_bpc: torch.Tensor, grid: tuple[int, int]) -> None:
        """(b) Take the reference feature F and score the layers that were waiting for it."""
        if self.reference is not None:
            return
        self.reference_grid = tuple(
            grid
        )  # the preset's guess, if it differs, gives way to the feature's grid
        self.reference = reference_affinity(feature_bpc, self.config.reference_channel0)
        for layer, waiting in self.pending.items():
            key_grid, query_grid = self.pending_grids[layer]
            on_ref = resize_self_attention(
                waiting, key_grid, self.reference_grid, self.config.renormalize_resized_rows, query_grid
            )
            self.scores[layer] = layer_similarity(self.reference, on_ref)
        self.pending.clear()
        self.pending_grids.clear()
        self._track()

    def finish(self) -> CapturedAttention:
        """The reductions as plain tensors, in layer order; only layers with cross-attention count."""
        layers = [name for name in self.layer_order if name in self.cross]
        if not layers:
            raise RuntimeError("the forward ran no cross-attention layer that the capture reads")
        scores = None
        if all(name in self.scores for name in layers):
            scores = torch.stack([self.scores[name] for name in layers], 1)
        affinity = None
        if self.affinity_sum is not None:  # in place: a second P_m² copy would double the largest store
            affinity = self.affinity_sum.div_(self.affinity_count)
            self.affinity_count = 1  # it is a mean now: finishing again divides by one
        return CapturedAttention(
            cross=[self.cross[name] for name in layers],
            head_aggregation=self.config.head_aggregation,
            grids=[self.grids[name] for name in layers],
            layer_scores=scores,
            affinity=affinity,
            map_size=self.map_size,
            layer_names=layers,
        )


def _add_rows(total_bpp: torch.Tensor, rows: torch.Tensor | slice, part_bnp: torch.Tensor) -> None:
    """total[:, rows] += part, for a slice or an index tensor of rows (each row once)."""
    if isinstance(rows, slice):
        total_bpp[:, rows].add_(part_bnp)
    else:
        total_bpp.index_add_(1, rows, part_bnp)


def reference_rows(
    grid: tuple[int, int], reference_grid: tuple[int, int] | None
) -> tuple[torch.Tensor, tuple[int, int]] | None:
    """For a layer finer than the reference grid, the query rows that nearest-resizing keeps, and their grid.

    Scoring reads nothing else of such a layer, so the other rows need never be computed.
    """
    if reference_grid is None or grid[0] * grid[1] <= reference_grid[0] * reference_grid[1]:
        return None
    (h, w), (ht, wt) = grid, reference_grid
    ys = (torch.arange(ht) * h) // ht  # the source row F.interpolate(mode="nearest") picks
    xs = (torch.arange(wt) * w) // wt
    return (ys[:, None] * w + xs[None, :]).flatten(), (ht, wt)


# -- attention kernels ----------------------------------------------------------------------------------
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


def _chunking(batch: int, heads: int, rows: int, keys: int, budget_mib: float) -> tuple[list[slice], int]:
    """Head groups and a query-chunk length whose float32 probabilities (B·g·c·keys) stay within the budget.

    Whole head sets are preferred (a chunk's head sum is then done in one pass); heads are split only when a
    single query row of every head is over the budget.
    """
    budget = max(1, int(budget_mib * 2**20) // 4)
    per_row = batch * heads * keys
    if per_row <= budget:
        return [slice(0, heads)], max(1, min(rows, budget // per_row))
    group = max(1, budget // max(1, batch * keys))
    return [slice(i, min(heads, i + group)) for i in range(0, heads, group)], 1


def _row_chunks(rows: int, chunk: int) -> list[slice]:
    return [slice(i, min(rows, i + chunk)) for i in range(0, rows, chunk)]


def _block_softmax(q, k, scale, mask, heads: slice, cols) -> torch.Tensor:
    """softmax(q k^T) restricted to the key columns `cols`, for a group of heads; float32.

    mask: the additive mask for q's rows and the columns `cols` (heads broadcast or all of them), or None.
    Computed in place in one buffer: on a CPU these maps are memory-bound, so each saved pass counts.
    """
    logits = ((q[:, heads] * scale) @ k[:, heads, cols].transpose(-1, -2)).float()
    if mask is not None:
        logits.add_((mask if mask.shape[1] == 1 else mask[:, heads]).float())
    logits.sub_(logits.amax(-1, keepdim=True)).exp_()
    return logits.div_(logits.sum(-1, keepdim=True))


def _restrict(probs: torch.Tensor, cols, joint: bool) -> torch.Tensor:
    """A block of the joint softmax renormalised over its columns: the softmax restricted to that block."""
    block = probs[..., cols]
    return block / block.sum(-1, keepdim=True).clamp_min(1e-30) if joint else block


# -- the three ways a read call is computed -------------------------------------------------------------
# Each walks the image query rows in chunks (and heads in groups) sized by `_chunking`, hands every chunk's
# reduction to the reducer and drops it: the transient of a call is one chunk, whatever the image size.
def _text_rows_fused(q, k, v, scale: float, mask, img: slice) -> torch.Tensor:
    """An output tensor whose text-query rows (of a joint call) come from the fused kernel; image rows unset."""
    out = torch.empty_like(q)
    for part in (slice(0, img.start), slice(img.stop, q.shape[2])):
        if part.stop > part.start:
            out[:, :, part] = _sdpa(q[:, :, part], k, v, _mask_block(mask, part, slice(None)), scale)
    return out


def _attend_propagation(
    q, k, v, scale: float, mask, plan: AttentionPlan, img: slice, reducer: StreamingReducer, out_proj_weight
) -> torch.Tensor:
    """Propagation layers: every image-row probability is needed, so the output comes from them too.

    Returns the output B×H×L×d; the cross-attention (if read) and the head-mean self-attention go to the
    reducer chunk by chunk.
    """
    out = _text_rows_fused(q, k, v, scale, mask, img)
    b, h, positions = q.shape[0], q.shape[1], img.stop - img.start
    grid = reducer.grid_for(positions)
    groups, chunk = _chunking(b, h, positions, k.shape[2], reducer.config.attention_chunk_mib)
    for local in _row_chunks(positions, chunk):
        rows = slice(img.start + local.start, img.start + local.stop)
        row_mask = _mask_block(mask, rows, slice(None))
        cross_heads, self_sum = [], None
        for heads in groups:
            probs = _block_softmax(q[:, :, rows], k, scale, row_mask, heads, slice(None))
            out[:, heads, rows] = (probs.to(v.dtype) @ v[:, heads]).to(out.dtype)
            if plan.read_cross:
                cross_heads.append(_restrict(probs, plan.text_cols, plan.joint))
            block = _restrict(probs, plan.image_cols, plan.joint).sum(1)
            self_sum = block if self_sum is None else self_sum.add_(block)
            reducer.track_transient(probs, block, *cross_heads)
            del probs, block
        if cross_heads:
            cross = torch.cat(cross_heads, 1) if len(cross_heads) > 1 else cross_heads[0]
            reducer.add_cross(plan.layer, cross, grid, out[:, :, rows], out_proj_weight, local)
        reducer.add_self(plan.layer, self_sum.div_(h), grid, grid, local)
    return out


def _cross_rows(
    q_img, k, out_img, scale: float, mask, plan: AttentionPlan, img: slice, reducer, out_proj_weight
) -> None:
    """Cross-attention: the softmax over the text keys only, head-aggregated into the reducer chunk by chunk."""
    b, h, positions = q_img.shape[:3]
    grid = reducer.grid_for(positions)
    n_text = k[:, :, plan.text_cols].shape[2]
    groups, chunk = _chunking(b, h, positions, n_text, reducer.config.attention_chunk_mib)
    for local in _row_chunks(positions, chunk):
        rows = slice(img.start + local.start, img.start + local.stop)
        row_mask = _mask_block(mask, rows, plan.text_cols)
        parts = [_block_softmax(q_img[:, :, local], k, scale, row_mask, g, plan.text_cols) for g in groups]
        probs = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        reducer.track_transient(probs)
        reducer.add_cross(plan.layer, probs, grid, out_img[:, :, local], out_proj_weight, local)


def _scoring_rows(q_img, k, scale: float, mask, plan: AttentionPlan, img: slice, reducer) -> None:
    """Layer scoring: the head-mean self-attention of the query rows that land on the reference grid.

    Layers finer than the reference grid compute only those rows (`reference_rows`), chunk by chunk.
    """
    b, h, positions = q_img.shape[:3]
    grid = reducer.grid_for(positions)
    picked = reference_rows(grid, reducer.reference_grid)
    index = None if picked is None else picked[0].to(q_img.device)
    query_grid = grid if picked is None else picked[1]
    n_rows = positions if index is None else index.numel()
    n_keys = k[:, :, plan.image_cols].shape[2]
    groups, chunk = _chunking(b, h, n_rows, n_keys, reducer.config.attention_chunk_mib)
    for local in _row_chunks(n_rows, chunk):
        source = (
            torch.arange(img.start + local.start, img.start + local.stop, device=q_img.device)
            if index is None
            else img.start + index[local]
        )
        q_rows = q_img[:, :, local] if index is None else q_img[:, :, index[local]]
        row_mask = None
        if mask is not None:
            row_mask = mask if mask.shape[-2] == 1 else mask[..., source, :]
            row_mask = row_mask[..., plan.image_cols] if row_mask.shape[-1] != 1 else row_mask
        self_sum = None
        for heads in groups:
            part = _block_softmax(q_rows, k, scale, row_mask, heads, plan.image_cols)
            reducer.track_transient(part)
            part = part.sum(1)
            self_sum = part if self_sum is None else self_sum.add_(part)
        reducer.add_self(plan.layer, self_sum.div_(h), grid, query_grid, local)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    mask: torch.Tensor | None,
    plan: AttentionPlan | None,
    reducer: StreamingReducer | None,
    out_proj_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention output B×H×L×d, reducing what `plan` reads into `reducer` on the way.

    Dispatches to one of three paths; the output comes from the fused kernel except in propagation layers.
    """
    if reducer is None or plan is None or not plan.reads:
        return _sdpa(q, k, v, mask, scale)
    rows = range(q.shape[2])[plan.image_queries]
    img, grid = slice(rows.start, rows.stop), reducer.grid_for(len(rows))
    if plan.reference_query:
        reducer.set_reference(q[:, :, img].transpose(1, 2).reshape(q.shape[0], len(rows), -1), grid)
    if not (plan.read_cross or plan.read_self):
        return _sdpa(q, k, v, mask, scale)
    if plan.read_self and plan.layer in reducer.propagation_layers:
        return _attend_propagation(q, k, v, scale, mask, plan, img, reducer, out_proj_weight)
    out = _sdpa(q, k, v, mask, scale)
    if plan.read_cross:
        _cross_rows(q[:, :, img], k, out[:, :, img], scale, mask, plan, img, reducer, out_proj_weight)
    if plan.read_self:
        _scoring_rows(q[:, :, img], k, scale, mask, plan, img, reducer)
    return out
