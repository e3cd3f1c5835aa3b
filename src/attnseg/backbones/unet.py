"""UNet families: Stable Diffusion 1.x / 2.x (and the embedded world models), and SDXL."""

from __future__ import annotations

import re

import torch

from attnseg.backbones.base import Backbone, BackbonePreset, pick_propagation_layers, pick_reference_layer
from attnseg.method.config import MethodConfig
from attnseg.method.streaming import AttentionPlan, CapturePlan

_BLOCK = re.compile(
    r"^(down_blocks|up_blocks|mid_block)(?:\.(\d+))?\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.(attn1|attn2)$"
)


class UNetBackbone(Backbone):
    """SD1.x/2.x: one CLIP text encoder; cross-attention in every transformer block of the UNet."""

    family = "sd"
    pipeline_classes = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
    description = "Stable Diffusion 1.x/2.x UNet (CLIP text encoder); also the embedded world models"
    # METHOD.md's table, SD1.5: reference = the query of the second attention block of the second up level
    # with attention (32² at 512 px); propagation = the first two 64² decoder layers and the second 64² encoder
    # layer. Other layouts (SD2.x-small, world models): the first block of that level, the finest decoder layers.
    default_preset = BackbonePreset(
        native_size=512,
        timestep=100,
        refine_steps=2,
        reference_layer="up_blocks.2.attentions.1",
        reference_up_level=1,
        propagation_layers=(
            "up_blocks.3.attentions.0",
            "up_blocks.3.attentions.1",
            "down_blocks.0.attentions.1",
        ),
    )

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.components["unet"]

    def encode_text(self, prompts: list[str]) -> dict:
        ids = self.tokenize(self.tokenizer, prompts, self.max_tokens).input_ids
        hidden = self.components["text_encoder"](ids)[0]
        return {"encoder_hidden_states": hidden.to(self.dtype)}

    def run_denoiser(self, noisy: torch.Tensor, timestep: torch.Tensor, cond: dict) -> None:
        self.denoiser(noisy.to(self.dtype), timestep, **cond)

    def _grids(self, latent_size: tuple[int, int]) -> dict[str, tuple[int, int]]:
        """Grid of every transformer-block attention module, from the block's level in the UNet."""
        n_down = len(self.denoiser.config.down_block_types)
        h, w = latent_size
        at = lambda level: (-(-h // 2**level), -(-w // 2**level))  # noqa: E731  (ceil, as the convs do)
        grids = {}
        for name in dict(self.denoiser.attn_processors):
            match = _BLOCK.match(name.removesuffix(".processor"))
            if not match:
                continue
            kind, index = match.group(1), int(match.group(2) or 0)
            level = {"down_blocks": index, "mid_block": n_down - 1, "up_blocks": n_down - 1 - index}[kind]
            grids[name.removesuffix(".processor")] = at(level)
        return grids

    def capture_plan(self, latent_size: tuple[int, int], config: MethodConfig) -> CapturePlan:
        grids = self._grids(latent_size)
        if not grids:
            raise RuntimeError("this UNet has no transformer blocks with cross-attention to read")
        map_size = max(grids.values(), key=lambda g: g[0] * g[1])
        layers = list(dict.fromkeys(name.rsplit(".", 1)[0] for name in grids))
        # Reference: the named layer's cross-attention query; else the first one of the preset's up level among
        # those that have attention.
        named = pick_reference_layer(layers, config, self.preset)
        up_levels = sorted({int(n.split(".")[1]) for n in grids if n.startswith("up_blocks")})
        reference = None
        if named is not None:
            reference = f"{named}.attn2"
        elif up_levels:
            level = up_levels[min(self.preset.reference_up_level, len(up_levels) - 1)]
            reference = f"up_blocks.{level}.attentions.0.transformer_blocks.0.attn2"
        score_layers = config.scores_layers
        # Propagation: the named layers (any, encoder included), else the decoder's layers on the finest grid
        # (the encoder's are then only scored, on the reference grid's query rows), the last N of them.
        candidates = [
            n.rsplit(".", 1)[0]
            for n, g in grids.items()
            if n.endswith("attn1") and g == map_size and n.startswith("up_blocks")
        ]
        propagation = pick_propagation_layers(candidates, config, self.preset, layers)
        plans = {}
        for name in grids:
            layer = name.rsplit(".", 1)[0]
            if name.endswith("attn2"):
                plans[name] = AttentionPlan(
                    layer, read_cross=True, text_keys=slice(None), reference_query=name == reference
                )
            elif layer in propagation or score_layers:
                plans[name] = AttentionPlan(layer, read_self=True, image_keys=slice(None))
        reference_grid = grids.get(reference) if (reference and score_layers) else None
        if not score_layers and reference in plans:
            plans[reference] = AttentionPlan(
                reference.rsplit(".", 1)[0], read_cross=True, text_keys=slice(None)
            )
        return CapturePlan(plans, map_size, reference_grid, propagation)


class SDXLBackbone(UNetBackbone):
    """SDXL: two CLIP text encoders (penultimate states concatenated), pooled text and size conditioning."""

    family = "sdxl"
    pipeline_classes = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")
    description = "Stable Diffusion XL UNet (two CLIP text encoders, added size conditioning)"
    # METHOD.md's table, SDXL: reference = the first block of the first up level (64² at 1024 px); propagation =
    # the 64² decoder blocks named below and the first 64² encoder layer's two blocks.
    default_preset = BackbonePreset(
        native_size=1024,
        timestep=100,
        refine_steps=2,
        reference_layer="up_blocks.1.attentions.0.transformer_blocks.0",
        reference_up_level=1,
        propagation_layers=(
            "up_blocks.1.attentions.0.transformer_blocks.0",
            "up_blocks.1.attentions.0.transformer_blocks.1",
            "up_blocks.1.attentions.1.transformer_blocks.0",
            "up_blocks.1.attentions.1.transformer_blocks.1",
            "up_blocks.1.attentions.2.transformer_blocks.0",
            "down_blocks.1.attentions.0.transformer_blocks.0",
            "down_blocks.1.attentions.0.transformer_blocks.1",
        ),
    )

    def encode_text(self, prompts: list[str]) -> dict:
        states, pooled = [], None
        for tok_key, enc_key in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")):
            if enc_key not in self.components:
                continue
            ids = self.tokenize(self.components[tok_key], prompts, self.max_tokens).input_ids
            out = self.components[enc_key](ids, output_hidden_states=True)
            states.append(out.hidden_states[-2])
            if enc_key == "text_encoder_2":
                pooled = out[0] if out[0].dim() == 2 else out.text_embeds
        hidden = torch.cat(states, -1)
        size = self.preset.native_size
        time_ids = torch.tensor([[size, size, 0, 0, size, size]] * len(prompts), device=self.device)
        added = {"text_embeds": pooled.to(self.dtype), "time_ids": time_ids.to(self.dtype)}
        return {"encoder_hidden_states": hidden.to(self.dtype), "added_cond_kwargs": added}
