"""Stable Diffusion 3 / 3.5: an MMDiT whose blocks attend jointly over [image tokens, text tokens]."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnseg.backbones.base import (
    Backbone,
    BackbonePreset,
    flow_add_noise,
    pick_propagation_layers,
    pick_reference_layer,
)
from attnseg.method.config import MethodConfig
from attnseg.method.streaming import AttentionPlan, CapturePlan, StreamingReducer, attend
from attnseg.prompts import DEFAULT_TEMPLATE, PromptBuilder


class SD3CaptureProcessor:
    """SD3's joint attention, read through `attend`.

    The image stream and (when given) the text stream are projected separately, each with its own optional
    q/k RMS norm, then attended as one sequence with the image tokens first. The image part of the result goes
    through `to_out`; the text part through `to_add_out`, except in the last block, which only feeds text in
    (context_pre_only) and has no text output projection. Calls without text (SD3.5's second, image-only
    attention) are computed the same way and read nothing.
    """

    def __init__(self, plan: AttentionPlan, reducer: StreamingReducer) -> None:
        self.plan = plan
        self.reducer = reducer

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *args,
        **kwargs,
    ):
        batch, n_image = hidden_states.shape[:2]

        def per_head(x: torch.Tensor) -> torch.Tensor:  # B×L×C → B×H×L×d
            return x.view(batch, x.shape[1], attn.heads, -1).transpose(1, 2)

        query = per_head(attn.to_q(hidden_states))
        key = per_head(attn.to_k(hidden_states))
        value = per_head(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        joint = encoder_hidden_states is not None
        if joint:
            text_q = per_head(attn.add_q_proj(encoder_hidden_states))
            text_k = per_head(attn.add_k_proj(encoder_hidden_states))
            text_v = per_head(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                text_q = attn.norm_added_q(text_q)
            if attn.norm_added_k is not None:
                text_k = attn.norm_added_k(text_k)
            query, key, value = (
                torch.cat(pair, 2) for pair in ((query, text_q), (key, text_k), (value, text_v))
            )

        # The diffusers processor ignores any mask here; so does this one, to compute the same thing.
        out = attend(
            query,
            key,
            value,
            scale=attn.scale,
            mask=None,
            plan=self.plan if joint else None,
            reducer=self.reducer,
            out_proj_weight=attn.to_out[0].weight,
        )
        out = out.transpose(1, 2).flatten(2).to(query.dtype)
        image = attn.to_out[1](attn.to_out[0](out[:, :n_image]))
        if not joint:
            return image
        text = out[:, n_image:]
        if not attn.context_pre_only:
            text = attn.to_add_out(text)
        return image, text


class SD3Backbone(Backbone):
    """SD3 / SD3.5: CLIP-L + CLIP-G (77 tokens each, channel-concatenated) followed by T5 tokens; flow matching."""

    family = "sd3"
    pipeline_classes = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline")
    description = "Stable Diffusion 3 / 3.5 MMDiT (CLIP-L, CLIP-G and optional T5; joint attention)"
    # METHOD.md names no SD3 reference: the middle block's image query, the rule used for small PixArts.
    default_preset = BackbonePreset(native_size=1024, timestep=150, sigma=0.15, refine_steps=2)
    t5_tokens = 256  # the pipeline's max_sequence_length

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.components["transformer"]

    @property
    def has_t5(self) -> bool:
        return "text_encoder_3" in self.components and "tokenizer_3" in self.components

    @property
    def clip_tokens(self) -> int:
        return int(min(self.components["tokenizer"].model_max_length, 77))

    @property
    def tokenizer(self):
        """Class tokens are read from T5's part of the text sequence when there is one, else from CLIP's."""
        return self.components["tokenizer_3"] if self.has_t5 else self.components["tokenizer"]

    @property
    def max_tokens(self) -> int:
        if self.has_t5:
            return int(min(self.components["tokenizer_3"].model_max_length, self.t5_tokens))
        return self.clip_tokens

    def prompt_builder(self, template: str = DEFAULT_TEMPLATE) -> PromptBuilder:
        offset = self.clip_tokens if self.has_t5 else 0  # T5 tokens follow the 77 CLIP positions
        return PromptBuilder(self.tokenizer, self.max_tokens, template, position_offset=offset)

    def encode_text(self, prompts: list[str]) -> dict:
        states, pooled = [], []
        for tok_key, enc_key in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")):
            ids = self.tokenize(self.components[tok_key], prompts, self.clip_tokens).input_ids
            out = self.components[enc_key](ids, output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled.append(out[0])
        width = int(self.denoiser.config.joint_attention_dim)
        if self.has_t5:
            ids = self.tokenize(self.components["tokenizer_3"], prompts, self.max_tokens).input_ids
            t5 = self.components["text_encoder_3"](ids)[0]
        else:
            t5 = torch.zeros((len(prompts), self.t5_tokens, width), device=self.device)
        clip = torch.cat(states, -1)
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        hidden = torch.cat([clip.to(t5.dtype), t5], 1)
        return {
            "encoder_hidden_states": hidden.to(self.dtype),
            "pooled_projections": torch.cat(pooled, -1).to(self.dtype),
        }

    def add_noise(
        self, latents: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = float(self.preset.sigma)
        t = torch.full((latents.shape[0],), sigma * 1000.0, device=latents.device)  # SD3 takes σ·1000
        return flow_add_noise(latents, generator, sigma), t

    def run_denoiser(self, noisy: torch.Tensor, timestep: torch.Tensor, cond: dict) -> torch.Tensor:
        """One forward; returns the prediction (so tests can check the capture does not change it)."""
        return self.denoiser(
            noisy.to(self.dtype), timestep=timestep.to(self.dtype), return_dict=False, **cond
        )[0]

    def make_processor(self, module_name: str, plan: AttentionPlan, reducer: StreamingReducer):
        return SD3CaptureProcessor(plan, reducer)

    def capture_plan(self, latent_size: tuple[int, int], config: MethodConfig) -> CapturePlan:
        patch = int(self.denoiser.config.patch_size)
        grid = (latent_size[0] // patch, latent_size[1] // patch)
        image = slice(0, grid[0] * grid[1])  # the joint sequence is [image, text]
        n_blocks = len(self.denoiser.transformer_blocks)
        score_layers = config.scores_layers
        layers = [f"transformer_blocks.{index}" for index in range(n_blocks)]
        named = pick_reference_layer(layers, config, self.preset)
        reference = layers.index(named) if named else n_blocks // 2
        propagation = pick_propagation_layers(layers, config, self.preset)  # one token grid throughout
        plans = {}
        for index, layer in enumerate(layers):
            plans[f"{layer}.attn"] = AttentionPlan(
                layer,
                read_cross=True,
                read_self=layer in propagation or score_layers,
                image_queries=image,
                text_keys=slice(image.stop, None),
                image_keys=image,
                reference_query=score_layers and index == reference,
            )
        return CapturePlan(plans, grid, grid if score_layers else None, propagation)
