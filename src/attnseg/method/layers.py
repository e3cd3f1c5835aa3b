"""(b) Layer-wise auto aggregation: weight each layer by how much its self-attention resembles a reference."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def reference_affinity(feature_bpc: torch.Tensor, channel0: bool = False) -> torch.Tensor:
    """R = softmax_rows(F^T F / sqrt(C_r)), B×P_r×P_r, from a dense feature B×P_r×C_r.

    channel0 reproduces the published reference code's path that keeps only channel 0 (a bug there, a flag here).
    """
    feat = feature_bpc.float()
    if channel0:
        feat = feat[..., :1]
    logits = feat @ feat.transpose(1, 2) / math.sqrt(feat.shape[-1])
    return logits.softmax(-1)


def resize_self_attention(
    attn_bqk: torch.Tensor,
    grid: tuple[int, int],
    target: tuple[int, int],
    renormalize: bool,
    query_grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Resize a self-attention with keys on `grid` and queries on `query_grid` (default `grid`) to `target`.

    Keys bilinear, queries nearest.
    """
    query_grid = tuple(query_grid or grid)
    if tuple(grid) == tuple(target) == query_grid:
        return attn_bqk
    b, p, _ = attn_bqk.shape
    (h, w), (ht, wt), (hq, wq) = grid, target, query_grid
    if (hq, wq) != (ht, wt) and ht * wt < hq * wq:
        # Fewer target rows: pick them first (nearest is a row selection), so the key resize touches fewer rows.
        ys = (torch.arange(ht, device=attn_bqk.device) * hq) // ht
        xs = (torch.arange(wt, device=attn_bqk.device) * wq) // wt
        attn_bqk = attn_bqk[:, (ys[:, None] * wq + xs[None, :]).flatten()]
        hq, wq = ht, wt
    keys = attn_bqk.reshape(b, hq * wq, h, w)
    if (h, w) != (ht, wt):
        keys = F.interpolate(keys, size=(ht, wt), mode="bilinear", align_corners=False)  # B×Pq×Ht×Wt
    keys = keys.reshape(b, hq, wq, ht * wt).permute(0, 3, 1, 2)  # B×Pt(keys)×Hq×Wq(queries)
    both = keys if (hq, wq) == (ht, wt) else F.interpolate(keys, size=(ht, wt), mode="nearest")
    out = both.reshape(b, ht * wt, ht * wt).transpose(1, 2)  # queries × keys
    if renormalize:
        out = out / out.sum(-1, keepdim=True).clamp_min(1e-12)
    return out.contiguous()


def resize_self_attention_rows(
    attn_bck: torch.Tensor,
    rows: slice,
    grid: tuple[int, int],
    target: tuple[int, int],
    renormalize: bool,
    query_grid: tuple[int, int] | None = None,
) -> tuple[torch.Tensor | slice, torch.Tensor]:
    """The rows of `resize_self_attention` that come from the source query rows `rows` only.

    attn_bck: B×c×P, the queries `rows` of `query_grid` (default `grid`) against every key of `grid`.
    Returns the target query rows they give (a slice or an index tensor) and their values B×n×P_target,
    so that a self-attention computed in query chunks is resized chunk by chunk to the same numbers.
    """
    query_grid = tuple(query_grid or grid)
    if tuple(grid) == tuple(target) == query_grid:
        return rows, attn_bck
    (hq, wq), (ht, wt), (h, w) = query_grid, target, grid
    # Nearest resizing of the queries: target row t reads source row `source[t]` (as F.interpolate picks).
    ys = (torch.arange(ht) * hq) // ht
    xs = (torch.arange(wt) * wq) // wt
    source = (ys[:, None] * wq + xs[None, :]).flatten()
    picked = ((source >= rows.start) & (source < rows.stop)).nonzero().flatten()
    b = attn_bck.shape[0]
    if picked.numel() == 0:
        return picked.to(attn_bck.device), attn_bck.new_zeros(b, 0, ht * wt)
    keys = attn_bck[:, (source[picked] - rows.start).to(attn_bck.device)].reshape(b, -1, h, w)
    if (h, w) != (ht, wt):
        keys = F.interpolate(keys, size=(ht, wt), mode="bilinear", align_corners=False)
    out = keys.reshape(b, -1, ht * wt)
    if renormalize:
        out = out / out.sum(-1, keepdim=True).clamp_min(1e-12)
    return picked.to(attn_bck.device), out


def layer_similarity(reference_bqk: torch.Tensor, attn_bqk: torch.Tensor) -> torch.Tensor:
    """s_l = sum_{p,q} R[p,q] S_l[p,q] per image; B."""
    return (reference_bqk.float() * attn_bqk.float()).sum(dim=(1, 2))


def layer_weights(scores_bl: torch.Tensor) -> torch.Tensor:
    """w_l = max(s_l, 0) / sum_l' max(s_l', 0); uniform where every score is <= 0. B×L."""
    pos = scores_bl.float().clamp_min(0)
    total = pos.sum(1, keepdim=True)
    uniform = torch.full_like(pos, 1.0 / pos.shape[1])
    return torch.where(total > 0, pos / total.clamp_min(1e-30), uniform)


def resolution_weights(grids: list[tuple[int, int]], per_level: tuple[float, ...]) -> torch.Tensor:
    """Fixed weights by resolution (DiffSegmenter-style): per_level lists coarse → fine; L, sums to 1."""
    sizes = sorted({g[0] * g[1] for g in grids})
    levels = [sizes.index(g[0] * g[1]) for g in grids]
    table = list(per_level) + [per_level[-1]] * max(0, len(sizes) - len(per_level))
    raw = torch.tensor([table[lv] / levels.count(lv) for lv in levels], dtype=torch.float32)
    return raw / raw.sum()


def combine_layers(
    maps: list[torch.Tensor], grids: list[tuple[int, int]], weights_bl: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """A = sum_l w_l upsample(M_l), then clamp at 0 and normalise over tokens. maps: B×P_l×N → B×N×h×w."""
    out = None
    for index, (maps_bpn, (h, w)) in enumerate(zip(maps, grids)):
        b, _, n = maps_bpn.shape
        grid_map = maps_bpn.float().transpose(1, 2).reshape(b, n, h, w)
        if (h, w) != tuple(size):
            grid_map = F.interpolate(grid_map, size=size, mode="bilinear", align_corners=False)
        term = grid_map * weights_bl[:, index].view(b, 1, 1, 1).to(grid_map)
        out = term if out is None else out + term
    out = out.clamp_min(0)
    return out / out.sum(1, keepdim=True).clamp_min(1e-12)
