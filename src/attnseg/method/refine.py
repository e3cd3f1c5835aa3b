"""(d) Refinement of class maps with self-attention: the paper's propagation, and an iSeg-style variant."""

from __future__ import annotations

import torch

from attnseg.method.rescale import minmax


def propagate(maps_bkhw: torch.Tensor, affinity_bpp: torch.Tensor, steps: int) -> torch.Tensor:
    """X <- S @ X, `steps` times, then min-max per class. affinity: B×P×P on the maps' h×w grid."""
    b, k, h, w = maps_bkhw.shape
    if steps == 0:
        return maps_bkhw
    x = maps_bkhw.reshape(b, k, h * w).transpose(1, 2)  # B×P×K
    s = affinity_bpp.to(x)
    for _ in range(steps):
        x = s @ x
    return minmax(x.transpose(1, 2).reshape(b, k, h, w))


def sharpen_affinity(affinity_bpp: torch.Tensor, gamma: float) -> torch.Tensor:
    """Lower each row's entropy by raising it to `gamma` and renormalising (iSeg-style)."""
    a = affinity_bpp.float().clamp_min(0) ** gamma
    return a / a.sum(-1, keepdim=True).clamp_min(1e-30)


def iterative_refine(
    maps_bkhw: torch.Tensor, affinity_bpp: torch.Tensor, steps: int, gamma: float
) -> torch.Tensor:
    """iSeg-style: repeat X <- minmax(S_sharp @ X), re-sharpening S each step."""
    s = affinity_bpp.float()
    x = maps_bkhw
    for _ in range(steps):
        s = sharpen_affinity(s, gamma)
        x = propagate(x, s, 1)
    return x
