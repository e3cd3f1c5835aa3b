"""S-CFG's rate on hand-made cases with known predictions (METHOD.md, "Generative integration")."""

from __future__ import annotations

import pytest
import torch

from attnseg.errors import BadConfigError
from attnseg.guidance.rate import (
    RateConfig,
    foreground_mask,
    guidance_norm,
    guidance_rate,
    guided_cond,
    region_masks,
)


def two_regions(g_left: float, g_right: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ε_u = 0 and ε_c with guidance norm g_left on columns 0–3 and g_right on 4–7 (1×2×6×8); left/right regions."""
    eps_u = torch.zeros(1, 2, 6, 8)
    eps_c = torch.zeros(1, 2, 6, 8)
    eps_c[:, 0, :, :4] = g_left  # norm over channels: |(g, 0)| = g
    eps_c[:, 1, :, 4:] = g_right
    class_maps = torch.zeros(1, 2, 6, 8)
    class_maps[:, 0, :, :4] = 1.0
    class_maps[:, 1, :, 4:] = 1.0
    return eps_u, eps_c, class_maps


def test_rate_brings_each_region_to_the_foreground_mean():
    eps_u, eps_c, class_maps = two_regions(1.0, 2.0)
    regions = region_masks(class_maps, (6, 8))
    assert (
        regions[0, 0, :, :4].eq(1).all() and regions[0, 1, :, 4:].eq(1).all() and regions.sum(1).eq(1).all()
    )
    assert torch.allclose(guidance_norm(eps_c - eps_u)[0, 0], torch.tensor([1.0] * 4 + [2.0] * 4))
    everywhere = torch.ones(1, 6, 8, dtype=torch.bool)
    rate = guidance_rate(eps_c - eps_u, regions, everywhere, cfg=2.0)
    assert rate.shape == (1, 1, 6, 8)
    # mean_fg(g) = 1.5: the left region 1.5 / 1 = 1.5; the right 1.5 / 2 = 0.75, clamped up to 0.8. The 3×3
    # smoothing leaves columns at least one cell from the border as they are.
    assert torch.allclose(rate[0, 0, :, :3], torch.tensor(1.5))
    assert torch.allclose(rate[0, 0, :, 5:], torch.tensor(0.8))
    assert (rate[0, 0, :, 3] < 1.5).all() and (rate[0, 0, :, 4] > 0.8).all()  # the border is smoothed


def test_foreground_sets_the_target_and_cfg_caps_the_rate():
    eps_u, eps_c, class_maps = two_regions(1.0, 4.0)
    regions = region_masks(class_maps, (6, 8))
    right = torch.zeros(1, 6, 8, dtype=torch.bool)
    right[..., 4:] = True
    # Foreground = the right region: target 4, so the left region gets 4 / 1 = 4 → clamped to 3.0 at cfg 2 …
    rate = guidance_rate(eps_c - eps_u, regions, right, cfg=2.0)
    assert torch.allclose(rate[0, 0, :, :3], torch.tensor(3.0)) and torch.allclose(
        rate[0, 0, :, 5:], torch.tensor(1.0)
    )
    # … and to 15 / 10 = 1.5 at cfg 10.
    rate = guidance_rate(eps_c - eps_u, regions, right, cfg=10.0)
    assert torch.allclose(rate[0, 0, :, :3], torch.tensor(1.5))
    # An empty foreground falls back to the image mean (2.5): left 2.5, right 0.625 → 0.8.
    rate = guidance_rate(eps_c - eps_u, regions, torch.zeros_like(right), cfg=2.0)
    assert torch.allclose(rate[0, 0, :, :3], torch.tensor(2.5)) and torch.allclose(
        rate[0, 0, :, 5:], torch.tensor(0.8)
    )


def test_guided_cond_gives_the_rated_cfg_step_and_is_exact_at_rate_one():
    gen = torch.Generator().manual_seed(0)
    eps_u, eps_c = torch.randn(2, 4, 5, 5, generator=gen), torch.randn(2, 4, 5, 5, generator=gen)
    rate = 0.8 + torch.rand(2, 1, 5, 5, generator=gen)
    cfg = 7.5
    cond = guided_cond(eps_u, eps_c, rate)
    pipeline_step = eps_u + cfg * (cond - eps_u)  # what the pipeline computes with the returned cond
    assert torch.allclose(pipeline_step, eps_u + cfg * rate * (eps_c - eps_u), atol=1e-5)
    assert torch.equal(guided_cond(eps_u, eps_c, torch.ones(2, 1, 5, 5)), eps_c)


def test_foreground_is_where_the_start_token_is_low():
    start = torch.zeros(1, 4, 4)
    start[:, :2] = 1.0  # the start token holds the top half: background
    fg = foreground_mask(start, (8, 8))
    assert fg.shape == (1, 8, 8) and not fg[0, 0].any() and fg[0, -1].all()


def test_rate_config_checks():
    with pytest.raises(BadConfigError, match="rate_min"):
        RateConfig(rate_min=2.0, rate_max=1.0)
    with pytest.raises(BadConfigError, match="fixed_rate"):
        RateConfig(fixed_rate=0.0)
