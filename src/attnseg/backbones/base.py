"""The adapter interface every model family implements, and the capture run they share."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch

from attnseg.backbones.processors import CaptureAttnProcessor
from attnseg.errors import BadConfigError
from attnseg.method.config import MethodConfig
from attnseg.method.pipeline import CapturedAttention
from attnseg.method.streaming import AttentionPlan, CapturePlan, StreamingReducer
from attnseg.prompts import DEFAULT_TEMPLATE, PromptBuilder


@dataclass(frozen=True)
class BackbonePreset:
    """Per-family defaults: input size, noise level, reference layer, refinement steps (data, not branches).

    Layers are named by diffusers module paths, as the reference code's configs name them (METHOD.md's table).
    A model of another layout (a smaller test or world model) lacks some of them and gets the rules instead.
    """

    native_size: int
    timestep: int = 100  # DDPM-style models: t of num_train_timesteps
    sigma: float | None = None  # flow-matching models: the noise level instead of t
    refine_steps: int = 2
    # (b) The reference feature F: the layer whose cross-attention query (FLUX: whose output) it is. Rule when
    # the model has no such layer: DiTs, the middle block; UNets, the first cross-attention query of up level
    # `reference_up_level`, counting the up levels that have attention (the last one if there are fewer).
    reference_layer: str | None = None
    reference_up_level: int = 1
    # (d) The layers whose self-attention propagation averages (a path selects every layer under it). Rule when
    # the model lacks any of them: the last `propagation_last` layers of the finest grid (0: all of them).
    propagation_layers: tuple[str, ...] = ()
    propagation_last: int = 0
    # (a) The reference code's head mode for this family (FLUX, HunyuanDiT: a plain mean); None: the method's.
    head_aggregation: str | None = None

    def method_defaults(self) -> dict[str, object]:
        """The method settings this family sets (a method preset may keep its own; see PRESET_FIXED)."""
        defaults: dict[str, object] = {"refine_steps": self.refine_steps}
        if self.head_aggregation is not None:
            defaults["head_aggregation"] = self.head_aggregation
        return defaults


def select_layers(paths: tuple[str, ...], layers: list[str], what: str) -> list[str]:
    """The layers at or under each module path (or holding it: `….attn2` names its block), in forward order.

    A path that selects no layer is an error that lists the layers there are.
    """
    chosen = set()
    for path in paths:
        hits = [
            layer
            for layer in layers
            if layer == path or layer.startswith(path + ".") or path.startswith(layer + ".")
        ]
        if not hits:
            shown = ", ".join(layers[:8]) + (f", … ({len(layers)} in all)" if len(layers) > 8 else "")
            raise BadConfigError(f"{what}: this model has no layer at {path!r}; its layers are {shown}")
        chosen.update(hits)
    return [layer for layer in layers if layer in chosen]


def _preset_layers(paths: tuple[str, ...], layers: list[str]) -> list[str] | None:
    """The preset's named layers when this model has every one of them, else None (another layout: the rule)."""
    if not paths:
        return None
    try:
        return select_layers(paths, layers, "preset")
    except BadConfigError:
        return None


def pick_reference_layer(layers: list[str], config: MethodConfig, preset: BackbonePreset) -> str | None:
    """The layer named for the reference feature: the user's (which must exist), the preset's, or None (rule)."""
    if config.reference_layer is not None:
        return select_layers((config.reference_layer,), layers, "reference_layer")[0]
    named = _preset_layers((preset.reference_layer,) if preset.reference_layer else (), layers)
    return named[0] if named else None


def shared_noise(latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One noise draw shared by every row: a row's result does not depend on what it is batched with."""
    noise = torch.randn((1, *latents.shape[1:]), generator=generator, dtype=torch.float32)
    return noise.to(latents).expand_as(latents)


def ddpm_add_noise(
    scheduler, latents: torch.Tensor, generator: torch.Generator, t: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t = sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·ε from the scheduler's ᾱ, and the timestep tensor."""
    noise = shared_noise(latents, generator)
    # Multistep solvers (PixArt ships DPM-Solver) keep inference state in add_noise; ᾱ_t is all we need.
    alpha_bar = scheduler.alphas_cumprod[t].to(torch.float32).item()
    noisy = alpha_bar**0.5 * latents + (1 - alpha_bar) ** 0.5 * noise
    return noisy, torch.full((latents.shape[0],), t, dtype=torch.long, device=latents.device)


def flow_add_noise(latents: torch.Tensor, generator: torch.Generator, sigma: float) -> torch.Tensor:
    """Rectified-flow noising x_σ = (1 − σ)·x0 + σ·ε."""
    return (1.0 - sigma) * latents + sigma * shared_noise(latents, generator)


def pick_propagation_layers(
    candidates: list[str],
    config: MethodConfig,
    preset: BackbonePreset,
    layers: list[str] | None = None,
) -> set[str]:
    """The layers whose self-attention propagation averages: named by module path (the user's, else the
    preset's when this model has them all), or the last N candidate layers (finest grid, forward order).

    layers: every layer a path may name (encoder layers included); default the candidates. Propagation layers
    cost the most to read (every probability of their grid), so the set is a preset.
    """
    if not config.refines:
        return set()
    layers = layers or candidates
    if config.names_propagation_layers:
        return set(select_layers(config.propagation_layers, layers, "propagation_layers"))
    if config.propagation_layers is None:
        named = _preset_layers(preset.propagation_layers, layers)
        if named:
            return set(named)
    n = preset.propagation_last if config.propagation_layers is None else config.propagation_layers
    return set(candidates[-n:] if n else candidates)


def transformer_blocks_plan(
    prefix: str,
    n_blocks: int,
    grid: tuple[int, int],
    config: MethodConfig,
    preset: BackbonePreset,
) -> CapturePlan:
    """Plan for DiTs whose blocks have a self-attention `attn1` and a cross-attention `attn2` on one token grid.

    Every block's cross-attention is read; the reference is the named block's cross-attention query (or the
    middle block's).
    """
    score_layers = config.scores_layers
    layers = [f"{prefix}.{index}" for index in range(n_blocks)]
    named = pick_reference_layer(layers, config, preset)
    reference = layers.index(named) if named else n_blocks // 2
    propagation = pick_propagation_layers(layers, config, preset)
    plans = {}
    for index, layer in enumerate(layers):
        plans[f"{layer}.attn2"] = AttentionPlan(
            layer, read_cross=True, text_keys=slice(None), reference_query=score_layers and index == reference
        )
        if layer in propagation or score_layers:
            plans[f"{layer}.attn1"] = AttentionPlan(layer, read_self=True, image_keys=slice(None))
    return CapturePlan(plans, grid, grid if score_layers else None, propagation)


class Backbone:
    """One model family: how to load it, encode text and images, noise, run the denoiser and read attention."""

    family: ClassVar[str] = ""
    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    default_preset: ClassVar[BackbonePreset]
    # Whether the family's pipelines run the uncond and cond branches of CFG as one denoiser batch (uncond rows
    # first). FLUX's true CFG runs them as two forwards of a step instead, cond first (see tracing.Trace).
    cfg_in_one_batch: ClassVar[bool] = True
    # What a pipeline passes the denoiser as its timestep, in the scheduler's units (FLUX passes t / 1000).
    pipeline_timestep_scale: ClassVar[float] = 1.0

    def __init__(self, components: dict, model_id: str, device: torch.device, dtype: torch.dtype) -> None:
        self.components = components
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.preset = dataclasses.replace(self.default_preset, native_size=self.native_size())
        # From a model's attnseg.json, if it has one: method and presence settings, the prompt template.
        self.defaults: dict = {"method": {}, "presence": {}, "template": None}

    # -- what a family provides -------------------------------------------------------------------------
    def native_size(self) -> int:
        """The square image size the model was trained at: its latent sample size × the VAE's downsampling."""
        return int(self.denoiser.config.sample_size) * self.vae_factor

    @property
    def denoiser(self) -> torch.nn.Module:
        """The UNet or transformer whose attention is read."""
        raise NotImplementedError

    @property
    def tokenizer(self):
        """The tokenizer whose token positions the cross-attention keys follow."""
        return self.components["tokenizer"]

    @property
    def max_tokens(self) -> int:
        """How many tokens one prompt may use."""
        return int(min(self.tokenizer.model_max_length, 4096))

    def prompt_builder(self, template: str = DEFAULT_TEMPLATE) -> PromptBuilder:
        """Packs class names into prompts this family's text encoder takes."""
        return PromptBuilder(self.tokenizer, self.max_tokens, template)

    def encode_text(self, prompts: list[str]) -> dict:
        """Conditioning for the denoiser, one row per prompt."""
        raise NotImplementedError

    def tokenize(self, tokenizer, prompts: list[str], length: int):
        """Token ids and attention mask, padded to `length` and truncated, on the model's device."""
        enc = tokenizer(
            prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        )
        return enc.to(self.device)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Latents (scaled as the denoiser expects) from B×3×S×S pixels in [-1, 1]."""
        vae = self.components["vae"]
        latents = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist.mean
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (latents - shift) * vae.config.scaling_factor

    def add_noise(
        self, latents: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Noisy latents at the preset's timestep, and the timestep tensor to pass to the denoiser."""
        noise = shared_noise(latents, generator)
        t = torch.full((latents.shape[0],), self.preset.timestep, dtype=torch.long, device=latents.device)
        return self.components["scheduler"].add_noise(latents, noise, t), t

    def run_denoiser(self, noisy: torch.Tensor, timestep: torch.Tensor, cond: dict) -> None:
        """One forward of the denoiser on the noisy latents."""
        raise NotImplementedError

    def capture_plan(self, latent_size: tuple[int, int], config: MethodConfig) -> CapturePlan:
        """Which attention calls to read for this input size and method."""
        raise NotImplementedError

    def make_processor(self, module_name: str, plan: AttentionPlan, reducer: StreamingReducer):
        """The capture processor for one attention module (families with other attention classes override)."""
        return CaptureAttnProcessor(plan, reducer)

    # -- shared ----------------------------------------------------------------------------------------
    @property
    def vae_factor(self) -> int:
        """How much the VAE downsamples (8 when there is no VAE to ask)."""
        vae = self.components.get("vae")
        return 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8

    @classmethod
    def detect(cls, model_index: dict) -> bool:
        """Whether a diffusers folder's model_index.json belongs to this family."""
        return model_index.get("_class_name") in cls.pipeline_classes

    def attention_modules(self) -> dict[str, torch.nn.Module]:
        """The denoiser's attention modules by name, found once: walking the module tree costs ms per call."""
        cached = self.__dict__.get("_attention_modules")
        if cached is None:
            cached = {n: m for n, m in self.denoiser.named_modules() if hasattr(m, "set_processor")}
            self.__dict__["_attention_modules"] = cached
        return cached

    @contextlib.contextmanager
    def capturing(self, plan: CapturePlan, reducer: StreamingReducer) -> Iterator[None]:
        """Install capture processors on the read modules only; always restore the originals."""
        modules = self.attention_modules()
        original = {}
        try:
            for module_name, attention_plan in plan.plans.items():
                module = modules.get(module_name)
                if module is None:
                    continue
                original[module_name] = module.processor
                module.set_processor(self.make_processor(module_name, attention_plan, reducer))
            yield
        finally:
            for module_name, processor in original.items():
                modules[module_name].set_processor(processor)

    @torch.no_grad()
    def capture(
        self,
        pixels: torch.Tensor,
        prompts: list[str],
        keep_tokens: int,
        config: MethodConfig,
        generator: torch.Generator,
        image_rows: list[int] | None = None,
    ) -> tuple[CapturedAttention, int]:
        """One noised forward, row i = image image_rows[i] (default i) with prompts[i]; the capture, its peak bytes.

        Each image of `pixels` is encoded once, however many rows (prompts) read it.
        """
        latents = self.encode_images(pixels)
        if image_rows is not None:
            latents = latents[torch.as_tensor(image_rows, device=latents.device)]
        noisy, timestep = self.add_noise(latents, generator)
        cond = self.encode_text(prompts)
        latent_size = self.latent_grid(noisy)
        plan = self.capture_plan(latent_size, config)
        reducer = StreamingReducer(plan, latent_size, keep_tokens, config)
        with self.capturing(plan, reducer):
            self.run_denoiser(noisy, timestep, cond)
        return reducer.finish(), reducer.peak_bytes

    def latent_grid(self, latents: torch.Tensor) -> tuple[int, int]:
        """The h×w of the latent that image tokens are laid out on (before any patching)."""
        return int(latents.shape[-2]), int(latents.shape[-1])

    def unpack_latents(self, sample: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """A denoiser input or prediction in the pipeline's layout as B×C×h×w (families that pack override)."""
        return sample

    def pack_latents(self, latents_bchw: torch.Tensor) -> torch.Tensor:
        """B×C×h×w back to the layout the pipeline passes and receives (the inverse of `unpack_latents`)."""
        return latents_bchw

    def info(self) -> dict:
        """Identity for result.json."""
        return {
            "family": self.family,
            "model_id": self.model_id,
            "dtype": str(self.dtype).removeprefix("torch."),
        }
