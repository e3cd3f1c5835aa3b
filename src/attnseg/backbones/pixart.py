"""PixArt-α and PixArt-Σ: a DiT whose blocks have self-attention (attn1) then cross-attention to T5 (attn2)."""

from __future__ import annotations

import dataclasses

import torch

from attnseg.backbones.base import Backbone, BackbonePreset, CapturePlan, transformer_blocks_plan
from attnseg.method.config import MethodConfig

REFERENCE_BLOCK = 13  # METHOD.md (b): PixArt's reference feature is block 13's query


def ddpm_add_noise(
    scheduler, latents: torch.Tensor, generator: torch.Generator, t: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t = sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·ε from the scheduler's ᾱ, one noise draw shared by every row."""
    noise = torch.randn((1, *latents.shape[1:]), generator=generator, dtype=torch.float32)
    noise = noise.to(latents).expand_as(latents)
    # Multistep solvers (PixArt ships DPM-Solver) keep inference state in add_noise; ᾱ_t is all we need.
    alpha_bar = scheduler.alphas_cumprod[t].to(torch.float32).item()
    noisy = alpha_bar**0.5 * latents + (1 - alpha_bar) ** 0.5 * noise
    return noisy, torch.full((latents.shape[0],), t, dtype=torch.long, device=latents.device)


class PixArtAlphaBackbone(Backbone):
    """PixArt-α: T5 text (120 tokens, masked), size conditioning for the 1024 px model."""

    family = "pixart-alpha"
    pipeline_classes = ("PixArtAlphaPipeline",)
    description = "PixArt-α DiT (T5 text encoder, 120 tokens)"
    default_preset = BackbonePreset(native_size=1024, timestep=100, refine_steps=5)
    text_tokens = 120  # the pipeline's max_sequence_length

    def __init__(self, components: dict, model_id: str, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(components, model_id, device, dtype)
        # Native size = the transformer's latent size × the VAE's downsampling (512 or 1024 for PixArt).
        sample = int(self.denoiser.config.sample_size)
        factor = 2 ** (len(components["vae"].config.block_out_channels) - 1) if "vae" in components else 8
        preset = self.default_preset
        self.preset = dataclasses.replace(preset, native_size=sample * factor)

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.components["transformer"]

    @property
    def max_tokens(self) -> int:
        return int(min(self.tokenizer.model_max_length, self.text_tokens))

    def encode_text(self, prompts: list[str]) -> dict:
        enc = self.tokenize(self.tokenizer, prompts, self.max_tokens)
        mask = enc.attention_mask
        hidden = self.components["text_encoder"](enc.input_ids, attention_mask=mask)[0]
        added = {"resolution": None, "aspect_ratio": None}
        if self.denoiser.use_additional_conditions:
            size = float(self.preset.native_size)
            added = {
                "resolution": torch.tensor(
                    [[size, size]] * len(prompts), device=self.device, dtype=self.dtype
                ),
                "aspect_ratio": torch.ones((len(prompts), 1), device=self.device, dtype=self.dtype),
            }
        return {
            "encoder_hidden_states": hidden.to(self.dtype),
            "encoder_attention_mask": mask,
            "added_cond_kwargs": added,
        }

    def add_noise(
        self, latents: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scheduler = self.components["scheduler"]
        if getattr(scheduler, "alphas_cumprod", None) is None:
            return super().add_noise(latents, generator)
        return ddpm_add_noise(scheduler, latents, generator, self.preset.timestep)

    def run_denoiser(self, noisy: torch.Tensor, timestep: torch.Tensor, cond: dict) -> torch.Tensor:
        """One forward; returns the prediction (so tests can check the capture does not change it)."""
        return self.denoiser(noisy.to(self.dtype), timestep=timestep, return_dict=False, **cond)[0]

    def capture_plan(self, latent_size: tuple[int, int], config: MethodConfig) -> CapturePlan:
        patch = int(self.denoiser.config.patch_size)
        grid = (latent_size[0] // patch, latent_size[1] // patch)
        n_blocks = len(self.denoiser.transformer_blocks)
        reference = REFERENCE_BLOCK if n_blocks > REFERENCE_BLOCK else n_blocks // 2
        return transformer_blocks_plan("transformer_blocks", n_blocks, reference, grid, config, self.preset)


class PixArtSigmaBackbone(PixArtAlphaBackbone):
    """PixArt-Σ: T5 text (300 tokens, masked), no size conditioning."""

    family = "pixart-sigma"
    pipeline_classes = ("PixArtSigmaPipeline",)
    description = "PixArt-Σ DiT (T5 text encoder, 300 tokens)"
    default_preset = BackbonePreset(native_size=1024, timestep=100, refine_steps=5)
    text_tokens = 300
