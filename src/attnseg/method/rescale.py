"""(c) Per-pixel rescaling of token scores, and the blur + min-max every method ends with."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_maps(
    attn_bnhw: torch.Tensor, class_tokens: list[list[list[int]]], pooling: str = "max"
) -> torch.Tensor:
    """X_c = mean of the class's tokens; with synonyms, the max over synonyms ('max') or the mean over all the
    synonyms' tokens ('mean', the reference code's). B×K×h×w.

    class_tokens[k] is a list of synonyms, each a list of token columns of attn_bnhw.
    """
    out = []
    for synonyms in class_tokens:
        if pooling == "mean":
            out.append(attn_bnhw[:, [c for cols in synonyms for c in cols]].mean(1))
            continue
        per_syn = torch.stack([attn_bnhw[:, cols].mean(1) for cols in synonyms], 0)
        out.append(per_syn.max(0).values)
    return torch.stack(out, 1)


def content_sum(attn_bnhw: torch.Tensor, content_tokens: list[int]) -> torch.Tensor:
    """Z(p) = sum of the content-word tokens' scores; B×1×h×w."""
    return attn_bnhw[:, content_tokens].sum(1, keepdim=True)


def gaussian_blur(maps_bkhw: torch.Tensor, kernel: int = 5, sigma: float = 1.1) -> torch.Tensor:
    """Separable gaussian blur with reflect padding, per channel."""
    half = kernel // 2
    x = torch.arange(kernel, dtype=torch.float32, device=maps_bkhw.device) - half
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = (g / g.sum()).to(maps_bkhw.dtype)
    b, k, h, w = maps_bkhw.shape
    if h <= half or w <= half:
        return maps_bkhw
    flat = maps_bkhw.reshape(b * k, 1, h, w)
    flat = F.conv2d(F.pad(flat, (half, half, 0, 0), mode="reflect"), g.view(1, 1, 1, kernel))
    flat = F.conv2d(F.pad(flat, (0, 0, half, half), mode="reflect"), g.view(1, 1, kernel, 1))
    return flat.reshape(b, k, h, w)


def minmax(maps_bkhw: torch.Tensor) -> torch.Tensor:
    """Scale each map to [0, 1] over space; a flat map becomes 0."""
    lo = maps_bkhw.amin(dim=(2, 3), keepdim=True)
    hi = maps_bkhw.amax(dim=(2, 3), keepdim=True)
    return (maps_bkhw - lo) / (hi - lo).clamp_min(1e-12)


def rescale_scores(
    attn_bnhw: torch.Tensor,
    class_tokens: list[list[list[int]]],
    content_tokens: list[int],
    per_pixel: bool,
    blur: bool = True,
    pooling: str = "max",
    steps: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Token maps → class maps in [0, 1]: Y_c = X_c / Z (if per_pixel), blur, min-max. B×K×h×w.

    steps: if given, receives each intermediate (entity_maps, content_sum, divided, blurred), for checks.
    """
    maps = class_maps(attn_bnhw, class_tokens, pooling)
    own = {c for synonyms in class_tokens[:1] for cols in synonyms for c in cols}
    if len(class_tokens) == 1 and set(content_tokens) <= own:
        # A lone class with no other word to compete with: X / Z is 1 everywhere and min-max would turn it
        # into 0, so its map is the plain token map (the vanilla score) instead.
        per_pixel = False
    record = steps if steps is not None else {}
    record["entity_maps"] = maps
    record["content_sum"] = content_sum(attn_bnhw, content_tokens)
    if per_pixel:
        maps = maps / record["content_sum"].clamp_min(1e-12)
        record["divided"] = maps
    if blur:
        maps = gaussian_blur(maps)
    record["blurred"] = maps
    return minmax(maps)
