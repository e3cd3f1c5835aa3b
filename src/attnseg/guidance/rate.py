"""Semantic-aware CFG (S-CFG) on plain tensors: regions, foreground, the per-pixel guidance rate (METHOD.md).

No diffusers here: the hooks in `guidance/semantic.py` hand these functions the maps of one denoiser forward and
its two predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attnseg.errors import BadConfigError
from attnseg.method.rescale import gaussian_blur, minmax


@dataclass(frozen=True)
class RateConfig:
    """The S-CFG paper's constants, as METHOD.md states them."""

    rate_min: float = 0.8  # no region's guidance is cut below 0.8× plain CFG
    rate_max: float = 3.0  # nor raised above 3×
    max_rate_times_cfg: float = 15.0  # and rate·cfg ≤ 15, so a high cfg is not pushed further still
    smooth_kernel: int = 3  # the rate map is smoothed with a 3×3 Gaussian …
    smooth_sigma: float = 0.5  # … of σ 0.5 latent cells, so region borders do not step
    foreground_threshold: float = 0.5  # foreground: the uncond start-token map < this after blur + min-max
    fixed_rate: float | None = None  # a constant rate instead (1.0 = plain CFG through the same hooks)

    def __post_init__(self) -> None:
        if not 0 < self.rate_min <= self.rate_max:
            raise BadConfigError(f"need 0 < rate_min <= rate_max, got {self.rate_min} and {self.rate_max}")
        if self.fixed_rate is not None and self.fixed_rate <= 0:
            raise BadConfigError(f"fixed_rate must be > 0, got {self.fixed_rate}")


def region_masks(class_maps_bkhw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """One-hot regions B×K×H×W on the latent grid: each pixel to the class whose map is highest there."""
    maps = F.interpolate(class_maps_bkhw.float(), size=size, mode="bilinear", align_corners=False)
    return F.one_hot(maps.argmax(1), maps.shape[1]).permute(0, 3, 1, 2).float()


def foreground_mask(
    start_map_bhw: torch.Tensor, size: tuple[int, int], threshold: float = 0.5
) -> torch.Tensor:
    """B×H×W bool: where the uncond branch's start-token map, blurred and min-maxed, is below `threshold`.

    The start token soaks up the attention of pixels no word claims, so its map is high on background.
    """
    maps = start_map_bhw.float()[:, None]
    maps = minmax(gaussian_blur(maps))
    maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return maps[:, 0] < threshold


def guidance_norm(delta_bchw: torch.Tensor) -> torch.Tensor:
    """g = ‖ε_c − ε_u‖ over channels per pixel: B×H×W."""
    return delta_bchw.float().norm(dim=1)


def guidance_rate(
    delta_bchw: torch.Tensor,
    regions_bkhw: torch.Tensor,
    foreground_bhw: torch.Tensor,
    cfg: float,
    config: RateConfig = RateConfig(),
) -> torch.Tensor:
    """The per-pixel rate B×1×H×W: rate_k = mean_fg(g) / mean_region k(g), clamped and smoothed.

    An empty foreground (a flat start-token map: T5's masked empty prompt, SDXL's zeroed negative) falls back
    to the mean over the whole image, so each region's guidance is brought to the image's mean.
    """
    g_bhw = guidance_norm(delta_bchw)
    fg = foreground_bhw.float()
    everywhere = torch.ones_like(fg)
    fg = torch.where(fg.sum((1, 2), keepdim=True) > 0, fg, everywhere)
    target_b = (g_bhw * fg).sum((1, 2)) / fg.sum((1, 2))
    area_bk = regions_bkhw.sum((2, 3))
    region_mean_bk = (g_bhw[:, None] * regions_bkhw).sum((2, 3)) / area_bk.clamp_min(1)
    rate_bk = target_b[:, None] / region_mean_bk.clamp_min(1e-12)
    rate_bhw = (rate_bk[:, :, None, None] * regions_bkhw).sum(1)  # empty regions contribute nothing
    upper = min(config.rate_max, config.max_rate_times_cfg / cfg)
    rate_bhw = rate_bhw.clamp_min(config.rate_min).clamp_max(upper)
    return gaussian_blur(rate_bhw[:, None], config.smooth_kernel, config.smooth_sigma)


def guided_cond(eps_u: torch.Tensor, eps_c: torch.Tensor, rate_b1hw: torch.Tensor) -> torch.Tensor:
    """The cond prediction that makes a pipeline's own CFG step give ε_u + cfg·rate·(ε_c − ε_u).

    Written as ε_c + (rate − 1)·Δε, so a rate of exactly 1 returns ε_c bit for bit.
    """
    return eps_c + (rate_b1hw.to(eps_c.dtype) - 1) * (eps_c - eps_u)
