"""(e) Labels: argmax over a background channel and the class maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def assign_labels(
    scores_khw: torch.Tensor,
    tau: float,
    background_khw: torch.Tensor | None = None,
    rule: str = "max",
) -> torch.Tensor:
    """H×W int64 labels: 0 = background, k+1 = class k; ties go to the lower index (background first).

    The background score is τ without background maps; with them (B = their max), max(τ, B) under the 'max'
    rule or B + τ under 'offset' (the reference code's data-set rule). Works on K×H×W or a batch B×K×H×W.
    """
    batched = scores_khw.dim() == 4
    scores = scores_khw if batched else scores_khw.unsqueeze(0)
    bg = torch.full_like(scores[:, :1], float(tau))
    if background_khw is not None and background_khw.numel():
        extra = (background_khw if batched else background_khw.unsqueeze(0)).to(bg).amax(1, keepdim=True)
        bg = extra + float(tau) if rule == "offset" else torch.maximum(bg, extra)
    # Channels last, so the argmax runs over contiguous memory: at 512² with ~10 classes the strided
    # reduction over the channel axis is ~15× slower. The first maximum wins either way.
    stacked = torch.cat([bg, scores], 1).permute(0, 2, 3, 1).contiguous()  # B×H×W×(K+1)
    labels = stacked.argmax(-1)
    return labels if batched else labels[0]


def upsample(maps_bkhw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of B×K×h×w maps to the image size (H, W)."""
    if tuple(maps_bkhw.shape[-2:]) == tuple(size):
        return maps_bkhw
    return F.interpolate(maps_bkhw, size=size, mode="bilinear", align_corners=False)
