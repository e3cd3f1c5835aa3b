"""HunyuanDiT: DiT blocks with RoPE self-attention (attn1) and cross-attention (attn2) to [BERT tokens, mT5 tokens]."""

from __future__ import annotations

import torch

from attnseg.backbones.base import Backbone, BackbonePreset, ddpm_add_noise, transformer_blocks_plan
from attnseg.method.config import MethodConfig
from attnseg.method.streaming import CapturePlan


def _crop_region(grid: tuple[int, int], base: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The grid fitted inside a base×base square and centred: the RoPE coordinates HunyuanDiT was trained with."""
    h, w = grid
    if h > w:
        size = (base, int(round(base / h * w)))
    else:
        size = (int(round(base / w * h)), base)
    top, left = int(round((base - size[0]) / 2.0)), int(round((base - size[1]) / 2.0))
    return (top, left), (top + size[0], left + size[1])


class HunyuanDiTBackbone(Backbone):
    """HunyuanDiT 1.x: BERT (77 tokens) and mT5 (256 tokens) states concatenated as the cross-attention keys."""

    family = "hunyuandit"
    pipeline_classes = ("HunyuanDiTPipeline",)
    description = "HunyuanDiT (bilingual BERT + mT5 text encoders, RoPE attention)"
    # METHOD.md's table, HunyuanDiT: plain head mean; reference = block 25's cross-attention query (the middle
    # block for smaller models); propagation = blocks 20–29; k = 4.
    default_preset = BackbonePreset(
        native_size=1024,
        timestep=100,
        refine_steps=4,
        reference_layer="blocks.25",
        propagation_layers=tuple(f"blocks.{i}" for i in range(20, 30)),
        head_aggregation="mean",
    )

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.components["transformer"]

    @property
    def max_tokens(self) -> int:
        """Class tokens are read from the BERT part, which comes first in the keys."""
        return int(min(self.tokenizer.model_max_length, self.denoiser.config.text_len))

    def encode_text(self, prompts: list[str]) -> dict:
        config = self.denoiser.config
        out = {}
        for tok_key, enc_key, length, state_key, mask_key in (
            ("tokenizer", "text_encoder", config.text_len, "encoder_hidden_states", "text_embedding_mask"),
            (
                "tokenizer_2",
                "text_encoder_2",
                config.text_len_t5,
                "encoder_hidden_states_t5",
                "text_embedding_mask_t5",
            ),
        ):
            enc = self.tokenize(self.components[tok_key], prompts, length)
            mask = enc.attention_mask
            states = self.components[enc_key](enc.input_ids, attention_mask=mask)[0]
            out[state_key], out[mask_key] = states.to(self.dtype), mask
        size = float(self.preset.native_size)
        # original size, target size, crop top-left; style 0: what the pipeline passes for a square image.
        out["image_meta_size"] = torch.tensor(
            [[size, size, size, size, 0.0, 0.0]] * len(prompts), device=self.device
        )
        out["style"] = torch.zeros(len(prompts), dtype=torch.long, device=self.device)
        return out

    def add_noise(
        self, latents: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        noisy, t = ddpm_add_noise(self.components["scheduler"], latents, generator, self.preset.timestep)
        return noisy, t.to(torch.float32)  # the transformer embeds the timestep in its own dtype

    def run_denoiser(self, noisy: torch.Tensor, timestep: torch.Tensor, cond: dict) -> torch.Tensor:
        """One forward; returns the prediction (so tests can check the capture does not change it)."""
        from diffusers.models.embeddings import get_2d_rotary_pos_embed

        model = self.denoiser
        patch = int(model.config.patch_size)
        grid = (noisy.shape[-2] // patch, noisy.shape[-1] // patch)
        base = 512 // self.vae_factor // patch  # the pipeline's RoPE base: a 512 px image's token grid
        rotary = get_2d_rotary_pos_embed(
            model.inner_dim // model.num_heads,
            _crop_region(grid, base),
            grid,
            device=self.device,
            output_type="pt",
        )
        cond = dict(cond, image_meta_size=cond["image_meta_size"].to(self.dtype))
        return model(
            noisy.to(self.dtype), timestep.to(self.dtype), image_rotary_emb=rotary, return_dict=False, **cond
        )[0]

    def capture_plan(self, latent_size: tuple[int, int], config: MethodConfig) -> CapturePlan:
        patch = int(self.denoiser.config.patch_size)
        grid = (latent_size[0] // patch, latent_size[1] // patch)
        n_blocks = len(self.denoiser.blocks)
        return transformer_blocks_plan("blocks", n_blocks, grid, config, self.preset)
