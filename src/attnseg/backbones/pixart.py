"""PixArt-α and PixArt-Σ: a DiT whose blocks have self-attention (attn1) then cross-attention to T5 (attn2)."""

from __future__ import annotations

import torch

from attnseg.backbones.base import Backbone, BackbonePreset, ddpm_add_noise, transformer_blocks_plan
from attnseg.method.config import MethodConfig
from attnseg.method.streaming import CapturePlan

# METHOD.md's table, PixArt-α (512 px) and -Σ (1024 px; the size comes from the model): reference = block 13's
# cross-attention query (the middle block for smaller models); propagation = blocks 10–17; k = 5.
PRESET = BackbonePreset(
    native_size=1024,
    timestep=100,
    refine_steps=5,
    reference_layer="transformer_blocks.13",
    propagation_layers=tuple(f"transformer_blocks.{i}" for i in range(10, 18)),
)


class PixArtAlphaBackbone(Backbone):
    """PixArt-α: T5 text (120 tokens, masked), size conditioning for the 1024 px model."""

    family = "pixart-alpha"
    pipeline_classes = ("PixArtAlphaPipeline",)
    description = "PixArt-α DiT (T5 text encoder, 120 tokens)"
    default_preset = PRESET
    text_tokens = 120  # the pipeline's max_sequence_length

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
        return transformer_blocks_plan("transformer_blocks", n_blocks, grid, config, self.preset)


class PixArtSigmaBackbone(PixArtAlphaBackbone):
    """PixArt-Σ: T5 text (300 tokens, masked), no size conditioning."""

    family = "pixart-sigma"
    pipeline_classes = ("PixArtSigmaPipeline",)
    description = "PixArt-Σ DiT (T5 text encoder, 300 tokens)"
    default_preset = PRESET
    text_tokens = 300
