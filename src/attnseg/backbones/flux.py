"""FLUX.1: double-stream blocks attend over [text, image]; single-stream blocks get that sequence already joined."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from attnseg.backbones.base import (
    Backbone,
    BackbonePreset,
    flow_add_noise,
    pick_propagation_layers,
    pick_reference_layer,
)
from attnseg.method.config import MethodConfig
from attnseg.method.streaming import AttentionPlan, CapturePlan, StreamingReducer, attend

GUIDANCE = 3.5  # the FluxPipeline default, for guidance-distilled (dev-style) transformers


class FluxCaptureProcessor:
    """FLUX attention, read through `attend`.

    Queries and keys get a per-head RMS norm, the text stream (double-stream blocks only) its own projections
    and norms, text placed before image; then rotary position embedding over the whole sequence. Double-stream
    blocks split the result and project each part; single-stream blocks return it unprojected, because their
    `proj_out` acts on [attention, MLP] — so the head weights there use the attention columns of that weight.
    """

    def __init__(
        self, plan: AttentionPlan, reducer: StreamingReducer, out_proj_weight: torch.Tensor | None
    ) -> None:
        self.plan = plan
        self.reducer = reducer
        # C_out×C: maps this call's attention output (heads concatenated) to the block output.
        self.out_proj_weight = out_proj_weight

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb=None,
    ) -> torch.Tensor:
        from diffusers.models.embeddings import apply_rotary_emb

        heads = attn.heads

        def per_head(x: torch.Tensor) -> torch.Tensor:  # B×L×C → B×L×H×d (rotary runs on this layout)
            return x.unflatten(-1, (heads, -1))

        query = attn.norm_q(per_head(attn.to_q(hidden_states)))
        key = attn.norm_k(per_head(attn.to_k(hidden_states)))
        value = per_head(attn.to_v(hidden_states))
        n_text = 0
        if encoder_hidden_states is not None and getattr(attn, "added_kv_proj_dim", None) is not None:
            n_text = encoder_hidden_states.shape[1]
            text_q = attn.norm_added_q(per_head(attn.add_q_proj(encoder_hidden_states)))
            text_k = attn.norm_added_k(per_head(attn.add_k_proj(encoder_hidden_states)))
            text_v = per_head(attn.add_v_proj(encoder_hidden_states))
            query, key, value = (
                torch.cat(pair, 1) for pair in ((text_q, query), (text_k, key), (text_v, value))
            )
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        query, key, value = (t.transpose(1, 2) for t in (query, key, value))  # B×H×L×d
        out = attend(
            query,
            key,
            value,
            scale=query.shape[-1] ** -0.5,
            mask=attention_mask,
            plan=self.plan,
            reducer=self.reducer,
            out_proj_weight=self.out_proj_weight,
        )
        out = out.transpose(1, 2).flatten(2).to(query.dtype)
        if not n_text:
            return out
        text, image = out[:, :n_text], out[:, n_text:]
        image = attn.to_out[1](attn.to_out[0](image.contiguous()))
        return image, attn.to_add_out(text.contiguous())


class FluxBackbone(Backbone):
    """FLUX.1 dev / schnell: T5 text tokens (CLIP gives only the pooled vector), packed 2×2 latents, flow matching."""

    family = "flux"
    pipeline_classes = ("FluxPipeline", "FluxImg2ImgPipeline")
    description = "FLUX.1 DiT (T5 text tokens, CLIP pooled; double- and single-stream joint attention)"
    # METHOD.md's table, FLUX.1-dev: plain head mean; reference = the output of block 27, counting double-stream
    # then single-stream blocks (single block 8 of FLUX.1's 19 + 38; the middle block for smaller models);
    # propagation = blocks 12 and 18 (both double-stream); k = 2.
    default_preset = BackbonePreset(
        native_size=1024,
        timestep=150,
        sigma=0.15,
        refine_steps=2,
        reference_layer="single_transformer_blocks.8",
        propagation_layers=("transformer_blocks.12", "transformer_blocks.18"),
        head_aggregation="mean",
    )
    t5_tokens = 512  # the pipeline's max_sequence_length
    cfg_in_one_batch = False  # true CFG (true_cfg_scale > 1, a negative prompt): cond forward, then uncond
    pipeline_timestep_scale = 1000.0  # FluxPipeline passes t / 1000 (σ); its scheduler lists t

    def native_size(self) -> int:
        """The transformer has no sample size; the VAE's (1024 for FLUX.1) is the size the model was trained at."""
        size = self.default_preset.native_size
        if "vae" in self.components:
            size = int(getattr(self.components["vae"].config, "sample_size", size) or size)
        return size

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.components["transformer"]

    @property
    def tokenizer(self):
        return self.components["tokenizer_2"]

    @property
    def max_tokens(self) -> int:
        return int(min(self.tokenizer.model_max_length, self.t5_tokens))

    def encode_text(self, prompts: list[str]) -> dict:
        clip_tokenizer = self.components["tokenizer"]
        clip_ids = self.tokenize(clip_tokenizer, prompts, min(clip_tokenizer.model_max_length, 77)).input_ids
        pooled = self.components["text_encoder"](clip_ids, output_hidden_states=False).pooler_output
        t5_ids = self.tokenize(self.tokenizer, prompts, self.max_tokens).input_ids
        hidden = self.components["text_encoder_2"](t5_ids, output_hidden_states=False)[0]
        txt_ids = torch.zeros((hidden.shape[1], 3), device=self.device, dtype=self.dtype)
        return {
            "encoder_hidden_states": hidden.to(self.dtype),
            "pooled_projections": pooled.to(self.dtype),
            "txt_ids": txt_ids,
        }

    def add_noise(
        self, latents: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = float(self.preset.sigma)
        # FluxPipeline passes timestep / 1000 and the transformer multiplies by 1000 again: it takes σ itself.
        t = torch.full((latents.shape[0],), sigma, device=latents.device)
        return flow_add_noise(latents, generator, sigma), t

    def run_denoiser(self, noisy: torch.Tensor, timestep: torch.Tensor, cond: dict) -> torch.Tensor:
        """One forward on the 2×2-packed latents; returns the (packed) prediction."""
        b, _, h, w = noisy.shape
        packed = self.pack_latents(noisy)
        rows, cols = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
        img_ids = (
            torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).to(self.device, self.dtype)
        )
        guidance = None
        if self.denoiser.config.guidance_embeds:
            guidance = torch.full((b,), GUIDANCE, device=self.device, dtype=torch.float32)
        return self.denoiser(
            hidden_states=packed.to(self.dtype),
            timestep=timestep.to(self.dtype),
            guidance=guidance,
            img_ids=img_ids,
            return_dict=False,
            **cond,
        )[0]

    def latent_grid(self, latents: torch.Tensor) -> tuple[int, int]:
        """The latent's h×w; a packed B×P×C input (a pipeline's own call, under trace) is taken as square."""
        if latents.ndim == 4:
            return int(latents.shape[-2]), int(latents.shape[-1])
        side = round(latents.shape[1] ** 0.5)
        if side * side != latents.shape[1]:
            raise RuntimeError(
                f"cannot tell the grid of {latents.shape[1]} packed FLUX tokens; use a square image"
            )
        return 2 * side, 2 * side

    def pack_latents(self, latents_bchw: torch.Tensor) -> torch.Tensor:
        """B×C×h×w → B×(h/2·w/2)×4C: each 2×2 patch one token, channel c·4 + 2·dy + dx (FluxPipeline's packing)."""
        b, c, h, w = latents_bchw.shape
        patches = latents_bchw.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        return patches.reshape(b, (h // 2) * (w // 2), c * 4)

    def unpack_latents(self, sample: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """B×(h/2·w/2)×4C packed tokens → B×C×h×w on the latent grid h×w (the inverse of `pack_latents`)."""
        if sample.ndim == 4:
            return sample
        (b, _, channels), (h, w) = sample.shape, grid
        patches = sample.reshape(b, h // 2, w // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return patches.reshape(b, channels // 4, h, w)

    def _blocks(self) -> list[str]:
        """Block names in forward order: double-stream, then single-stream."""
        double = [f"transformer_blocks.{i}" for i in range(len(self.denoiser.transformer_blocks))]
        single = [
            f"single_transformer_blocks.{i}" for i in range(len(self.denoiser.single_transformer_blocks))
        ]
        return double + single

    def _reference_block(self, config: MethodConfig) -> str:
        """The block whose image output is F: the named one, or the middle block."""
        blocks = self._blocks()
        return pick_reference_layer(blocks, config, self.preset) or blocks[len(blocks) // 2]

    def make_processor(self, module_name: str, plan: AttentionPlan, reducer: StreamingReducer):
        block = self.denoiser.get_submodule(module_name.rsplit(".", 1)[0])
        attn = block.attn
        if module_name.startswith("single_transformer_blocks."):
            # proj_out acts on [attention (C), MLP]: its first C input columns project the attention output.
            weight = block.proj_out.weight[:, : attn.to_q.out_features]
        else:
            weight = attn.to_out[0].weight
        return FluxCaptureProcessor(plan, reducer, weight)

    def capture_plan(self, latent_size: tuple[int, int], config: MethodConfig) -> CapturePlan:
        grid = (latent_size[0] // 2, latent_size[1] // 2)  # 2×2 packing
        positions = grid[0] * grid[1]
        # [text, image] in both kinds of block; slicing from the end leaves the text length to the prompt.
        image = slice(-positions, None)
        score_layers = config.scores_layers
        blocks = list(self._blocks())
        propagation = pick_propagation_layers(blocks, config, self.preset)  # one token grid throughout
        reference = self._reference_block(config) if score_layers else None
        plans = {}
        for layer in blocks:
            plans[f"{layer}.attn"] = AttentionPlan(
                layer,
                read_cross=True,
                read_self=layer in propagation or score_layers,
                image_queries=image,
                text_keys=slice(0, -positions),
                image_keys=image,
            )
        return CapturePlan(plans, grid, grid if score_layers else None, propagation, reference)

    @contextlib.contextmanager
    def capturing(self, plan: CapturePlan, reducer: StreamingReducer) -> Iterator[None]:
        """Capture processors, plus a hook that hands the reference block's image output to the reducer."""
        with super().capturing(plan, reducer):
            handle = None
            if plan.reference_grid is not None:
                grid = plan.reference_grid
                positions = grid[0] * grid[1]

                def take_reference(module, args, output) -> None:
                    # Recent diffusers return (text, image) from both block kinds; older single-stream blocks
                    # returned the joined [text, image] sequence.
                    image = output[1] if isinstance(output, tuple) else output[:, -positions:]
                    reducer.set_reference(image, grid)

                block = self.denoiser.get_submodule(plan.reference_output)
                handle = block.register_forward_hook(take_reference)
            try:
                yield
            finally:
                if handle is not None:
                    handle.remove()
