"""Per-pixel denoising error of one image under several prompts and noise levels (for the presence test)."""

from __future__ import annotations

import dataclasses

import torch

from attnseg.backbones.base import Backbone
from attnseg.errors import BadConfigError


def _prediction(backbone: Backbone, noisy: torch.Tensor, timestep: torch.Tensor, cond: dict) -> torch.Tensor:
    """The denoiser's raw output for one batch (read with a forward hook, as run_denoiser may return nothing)."""
    seen: list[torch.Tensor] = []

    def hook(module, args, output) -> None:
        value = output.sample if hasattr(output, "sample") else output
        seen.append(value[0] if isinstance(value, (tuple, list)) else value)

    handle = backbone.denoiser.register_forward_hook(hook)
    try:
        backbone.run_denoiser(noisy, timestep, cond)
    finally:
        handle.remove()
    return seen[-1].float()


def _unpack(pred: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The prediction on the latent's B×C×h×w layout (FLUX returns 2×2-packed tokens; learned-σ DiTs 2C channels)."""
    b, c, h, w = like.shape
    if pred.dim() == 3:  # B×(h/2·w/2)×(4C), FLUX's packing
        pred = pred.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
    if pred.shape[1] != c:
        pred = pred[:, :c]
    if pred.shape != like.shape:
        raise BadConfigError(
            f"the denoiser's output {tuple(pred.shape)} does not match its latent {tuple(like.shape)}; "
            "the presence test cannot read it: use presence off"
        )
    return pred


@torch.no_grad()
def noise_errors(
    backbone: Backbone,
    pixels_3ss: torch.Tensor,
    prompts: list[str],
    levels: tuple[int, ...],
    generator: torch.Generator,
    rows_per_forward: int = 32,
) -> torch.Tensor:
    """R×T×h×w squared error of the denoiser's prediction for one image under R prompts at T noise levels.

    Levels are t of 1000 (flow-matching families: σ = t / 1000). One noise draw per level is shared by every
    prompt, so differences between prompts are not differences between draws.
    """
    latent = backbone.encode_images(pixels_3ss[None].to(backbone.device)).float()  # 1×C×h×w
    cond_all = backbone.encode_text(prompts)
    scheduler = backbone.components["scheduler"]
    flow = backbone.preset.sigma is not None
    out = []
    for level in levels:
        noise = torch.randn(latent.shape, generator=generator, dtype=torch.float32).to(latent)
        if flow:
            sigma = level / 1000.0
            noisy = (1.0 - sigma) * latent + sigma * noise
            target = noise - latent
            preset = dataclasses.replace(backbone.preset, sigma=sigma)
        else:
            t = torch.full((1,), int(level), dtype=torch.long, device=latent.device)
            noisy = scheduler.add_noise(latent, noise, t)
            kind = getattr(scheduler.config, "prediction_type", "epsilon")
            target = {"epsilon": noise, "sample": latent}.get(kind)
            if kind == "v_prediction":
                target = scheduler.get_velocity(latent, noise, t)
            preset = dataclasses.replace(backbone.preset, timestep=int(level))
        # The family's own timestep convention (SD3 takes σ·1000, FLUX σ, DDPM t), from its add_noise.
        saved, backbone.preset = backbone.preset, preset
        try:
            _, timestep = backbone.add_noise(latent, torch.Generator().manual_seed(0))
        finally:
            backbone.preset = saved
        errors = []
        for start in range(0, len(prompts), rows_per_forward):
            rows = list(range(start, min(start + rows_per_forward, len(prompts))))
            cond = {k: _rows(v, rows, len(prompts)) for k, v in cond_all.items()}
            batch = noisy.expand(len(rows), -1, -1, -1)
            pred = _unpack(_prediction(backbone, batch, timestep.expand(len(rows)), cond), batch)
            errors.append(((pred - target) ** 2).mean(1))  # rows×h×w
        out.append(torch.cat(errors, 0))
    return torch.stack(out, 1).cpu()  # R×T×h×w


def _rows(value, rows: list[int], n: int):
    """The conditioning of some prompts: tensors with one row per prompt (also inside dicts) cut to `rows`."""
    if isinstance(value, torch.Tensor):
        return value[rows] if value.dim() and value.shape[0] == n else value  # e.g. FLUX's txt_ids are shared
    if isinstance(value, dict):
        return {k: _rows(v, rows, n) for k, v in value.items()}
    return value
