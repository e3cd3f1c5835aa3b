"""`with attnseg.guidance.scfg(pipe, prompt):` — semantic-aware CFG inside the user's own diffusers pipeline.

Why a denoiser hook and not a guider or a pipeline subclass: the classic pipelines (StableDiffusion,
StableDiffusionXL, PixArt-α/Σ, StableDiffusion3) run the uncond and cond branches as one batch through the
denoiser and combine them inline, `ε_u + cfg·(ε_c − ε_u)`, with no guider to swap. A forward hook on the
denoiser sees that very forward: capture processors installed for the call feed the streaming reducer, and
the hook hands back the batch with its cond half replaced by `ε_c + (rate − 1)·(ε_c − ε_u)`, so the
pipeline's own CFG step yields `ε_u + cfg·rate·(ε_c − ε_u)`. Nothing else in the pipeline changes (scheduler,
callbacks, guidance_rescale, which sees the adjusted cond), there is no second forward, and only the current
step's reduced maps exist at any time.

FLUX's true CFG (`true_cfg_scale > 1` with a negative prompt) runs the branches as two forwards of a step, cond
first, and combines them as `ε_u + cfg·(ε_c − ε_u)` after the second. The cond forward's class maps and its
output tensor (the very tensor the pipeline holds) are kept; the uncond forward, told apart by repeating the
cond forward's latents and timestep (`Trace._pair_step`), gives the start-token map and ε_u, and the held ε_c is
rewritten in place to `ε_c + (rate − 1)·(ε_c − ε_u)`: the pipeline's own combination then yields the same
`ε_u + cfg·rate·(ε_c − ε_u)`. The predictions are packed 2×2 tokens; the rate is computed on the unpacked
latent grid (the backbone's `unpack_latents`) and the result packed back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from attnseg.backbones import Backbone
from attnseg.errors import BadConfigError
from attnseg.guidance.rate import RateConfig, foreground_mask, guidance_rate, guided_cond, region_masks
from attnseg.method.config import MethodConfig
from attnseg.method.pipeline import CapturedAttention, run_method, token_maps
from attnseg.prompts import ClassSpec, parse_classes
from attnseg.tracing import Trace, denoiser_sample, with_sample


@dataclass
class HeldCond:
    """Two-forward CFG: a step's cond forward, kept until that step's uncond forward arrives."""

    sample: torch.Tensor  # the cond prediction, the tensor the pipeline holds: rewritten in place
    class_maps: torch.Tensor | None  # B×K×h×w from the cond forward's maps (None under a fixed rate)


# The uncond branch's column read as its start token: CLIP's <|startoftext|>; for T5 (no start token) the
# first token of the empty prompt, its </s>.
START_COLUMN = 0


class SemanticCFG(Trace):
    """S-CFG (METHOD.md) applied at every CFG forward of a pipeline run; also a Trace for the run's masks."""

    def __init__(
        self,
        pipe,
        prompt: str,
        classes: list[ClassSpec] | list[str] | str,
        method: str = "goca",
        guidance_scale: float | None = None,
        rate: RateConfig | None = None,
        read_last: float = 1.0,
        backbone: Backbone | None = None,
        **overrides: object,
    ) -> None:
        # The classes are the prompt's own words: the masks keep every one (no presence test).
        super().__init__(pipe, method, 1, read_last, backbone, presence="off", **overrides)
        specs = classes if classes and isinstance(classes[0], ClassSpec) else parse_classes(classes)
        self.prompt = prompt
        self.specs = specs
        self.keep_tokens = self.backbone.prompt_builder().locate(prompt, specs).n_tokens
        self.plan = self.locate(prompt, specs)
        self.guidance_scale = guidance_scale
        self.rate_config = rate or RateConfig()
        self.rate_means: list[float] = []  # the mean rate of each guided forward, for result.json
        self._held: HeldCond | None = None
        self._start_config = dataclasses.replace(self.config, refine="none")
        if not self.backbone.cfg_in_one_batch and guidance_scale is None:
            # FluxPipeline keeps no true_cfg_scale (its guidance_scale is the distilled embedding's, not CFG).
            raise BadConfigError(
                f"{type(pipe).__name__} runs true CFG as two forwards and does not keep true_cfg_scale: "
                "pass guidance_scale=<your true_cfg_scale> to scfg()"
            )

    def _reads(self, args, kwargs) -> bool:
        return not self._testing  # every step's guidance needs that step's maps, the uncond forward's too

    def _capture_config(self) -> MethodConfig:
        # Two-forward CFG: the uncond forward gives only the start-token map, which is never refined, so it
        # reads no propagation layer (their processors then run the fused kernel, as the plain pipeline does).
        if self._uncond_call:
            return self._start_config
        return self.config

    def cfg_scale(self) -> float | None:
        """The guidance scale of the run in progress: the one given, else the pipeline's own."""
        if self.guidance_scale is not None:
            return float(self.guidance_scale)
        try:
            return float(self.pipe.guidance_scale)
        except (AttributeError, TypeError):
            return None

    def on_capture(self, captured: CapturedAttention, args, kwargs, output):
        """Accumulate the masks, then return the output with the cond half re-weighted by the rate."""
        if not self.backbone.cfg_in_one_batch:
            return self._two_forwards(captured, args, kwargs, output)
        super().on_capture(captured, args, kwargs, output)
        sample = denoiser_sample(output)
        split = self._cfg_rows(sample.shape[0])
        if split is None or sample.dim() != 4:
            return None  # no CFG batch: nothing to guide
        cfg = self._required_cfg()
        uncond, cond = split
        eps_u, eps_c = sample[uncond], sample[cond]
        rate = self.rate(captured, uncond, cond, eps_c - eps_u, cfg)
        self.rate_means.append(float(rate.mean()))
        return with_sample(output, torch.cat([eps_u, guided_cond(eps_u, eps_c, rate)]))

    def _required_cfg(self) -> float:
        cfg = self.cfg_scale()
        if cfg is None:
            raise BadConfigError(
                f"{type(self.pipe).__name__} does not expose its guidance scale: pass guidance_scale= to scfg()"
            )
        return cfg

    def _two_forwards(self, captured: CapturedAttention, args, kwargs, output):
        """FLUX's true CFG: hold the cond forward's output and maps; guide it in place at the uncond forward."""
        sample = denoiser_sample(output)
        if not self._uncond_call:
            self._check_paired()
            super().on_capture(captured, args, kwargs, output)  # the masks read the cond forward only
            fixed = self.rate_config.fixed_rate is not None
            class_maps = None if fixed else run_method(captured, self.plan.layout, self.config).class_maps
            self._held = HeldCond(sample, class_maps)
            return None
        held, self._held = self._held, None
        if held is None:
            return None  # its cond forward raised: nothing to guide
        grid = self.backbone.latent_grid(sample)
        eps_u = self.backbone.unpack_latents(sample, grid)
        eps_c = self.backbone.unpack_latents(held.sample, grid)
        delta = eps_c - eps_u
        rate = self._fixed_rate(delta)
        if rate is None:
            rate = self.rate_from_maps(
                held.class_maps, self.start_maps(captured), delta, self._required_cfg()
            )
        self.rate_means.append(float(rate.mean()))
        with torch.no_grad():  # the pipeline combines the tensor it holds: ε_c becomes the guided cond
            held.sample.copy_(self.backbone.pack_latents(guided_cond(eps_u, eps_c, rate)))
        return None

    def _check_paired(self) -> None:
        """A held cond forward whose step had no uncond forward: the pipeline ran without true CFG."""
        if self._held is not None:
            self._held = None
            raise BadConfigError(
                f"{type(self.pipe).__name__} ran a step without its uncond forward: S-CFG guides true CFG, so "
                'call it with negative_prompt= (may be "") and true_cfg_scale > 1'
            )

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        if exc[0] is None:
            self._check_paired()
        self._held = None

    def _fixed_rate(self, delta: torch.Tensor) -> torch.Tensor | None:
        """The configured constant rate as B×1×H×W, or None when the rate comes from the maps."""
        fixed = self.rate_config.fixed_rate
        if fixed is None:
            return None
        b, _, h, w = delta.shape
        return torch.full((b, 1, h, w), fixed, dtype=torch.float32, device=delta.device)

    def start_maps(self, captured: CapturedAttention) -> torch.Tensor:
        """B×h×w: the uncond rows' start-token map (layers combined the method's way)."""
        return token_maps(captured, self.config)[0][:, START_COLUMN]

    def rate(
        self, captured: CapturedAttention, uncond: list[int], cond: list[int], delta: torch.Tensor, cfg: float
    ) -> torch.Tensor:
        """The per-pixel rate B×1×H×W of one CFG batch, from its own maps and its guidance Δε."""
        fixed = self._fixed_rate(delta)
        if fixed is not None:
            return fixed
        class_maps = run_method(captured.rows(cond), self.plan.layout, self.config).class_maps
        # PixArt predicts a variance too (2C channels): the guidance norm is over the ε channels only.
        channels = int(getattr(self.backbone.denoiser.config, "in_channels", delta.shape[1]))
        return self.rate_from_maps(
            class_maps, self.start_maps(captured.rows(uncond)), delta[:, :channels], cfg
        )

    def rate_from_maps(
        self, class_maps: torch.Tensor, start_maps: torch.Tensor, delta: torch.Tensor, cfg: float
    ) -> torch.Tensor:
        """The per-pixel rate B×1×H×W from the cond class maps, the uncond start-token maps and Δε (B×C×H×W)."""
        size = tuple(delta.shape[-2:])
        regions = region_masks(class_maps, size)
        foreground = foreground_mask(start_maps, size, self.rate_config.foreground_threshold)
        return guidance_rate(delta, regions, foreground, cfg, self.rate_config).to(delta.device)

    def segment_all(self, prompt=None, classes=None, images=None, tau=None):
        """Masks of the run's images, into the guidance's classes unless others are named."""
        return super().segment_all(prompt or self.prompt, classes or self.specs_text(), images or [None], tau)

    def specs_text(self) -> list[str]:
        """The guidance's classes as `parse_classes` takes them."""
        return ["|".join(spec.synonyms) for spec in self.specs]


def scfg(
    pipe,
    prompt: str,
    classes: list[str] | str | None = None,
    method: str = "goca",
    guidance_scale: float | None = None,
    rate: RateConfig | None = None,
    read_last: float = 1.0,
    **overrides: object,
) -> SemanticCFG:
    """Context manager: `with scfg(pipe, prompt) as g: pipe(prompt, guidance_scale=7.5)`; masks by `g.segment_all`.

    classes: the prompt's words whose maps give the regions (None: its nouns, see `default_classes`);
    method: the mask source, `goca`, `vanilla` or any method preset; guidance_scale: needed only where the
    pipeline does not expose its own (PixArt; FLUX, whose true_cfg_scale it is: run FLUX with a negative prompt).
    """
    from attnseg.guidance.prompting import check_prompt, default_classes, model_nouns

    prompt = check_prompt(prompt, pipe.tokenizer)
    nouns = model_nouns(getattr(pipe, "name_or_path", None))  # the embedded world models list theirs
    specs = parse_classes(classes) if classes else default_classes(prompt, pipe.tokenizer, nouns)
    return SemanticCFG(pipe, prompt, specs, method, guidance_scale, rate, read_last, **overrides)
