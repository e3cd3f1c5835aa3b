"""`with attnseg.guidance.scfg(pipe, prompt):` — semantic-aware CFG inside the user's own diffusers pipeline.

Why a denoiser hook and not a guider or a pipeline subclass: the classic pipelines (StableDiffusion,
StableDiffusionXL, PixArt-α/Σ, StableDiffusion3) run the uncond and cond branches as one batch through the
denoiser and combine them inline, `ε_u + cfg·(ε_c − ε_u)`, with no guider to swap. A forward hook on the
denoiser sees that very forward: capture processors installed for the call feed the streaming reducer, and
the hook hands back the batch with its cond half replaced by `ε_c + (rate − 1)·(ε_c − ε_u)`, so the
pipeline's own CFG step yields `ε_u + cfg·rate·(ε_c − ε_u)`. Nothing else in the pipeline changes (scheduler,
callbacks, guidance_rescale, which sees the adjusted cond), there is no second forward, and only the current
step's reduced maps exist at any time. FLUX's true CFG runs the two branches as two forwards and is not
handled here.
"""

from __future__ import annotations

import torch

from attnseg.backbones import Backbone
from attnseg.errors import BadConfigError
from attnseg.guidance.rate import RateConfig, foreground_mask, guidance_rate, guided_cond, region_masks
from attnseg.method.pipeline import CapturedAttention, run_method, token_maps
from attnseg.prompts import ClassSpec, parse_classes
from attnseg.tracing import Trace, denoiser_sample, with_sample

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

    def _reads(self, args, kwargs) -> bool:
        return True  # every step's guidance needs that step's maps

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
        super().on_capture(captured, args, kwargs, output)
        sample = denoiser_sample(output)
        split = self._cfg_rows(sample.shape[0])
        cfg = self.cfg_scale()
        if split is None or sample.dim() != 4:
            return None  # no CFG batch (or a packed FLUX sample): nothing to guide
        if cfg is None:
            raise BadConfigError(
                f"{type(self.pipe).__name__} does not expose its guidance scale: pass guidance_scale= to scfg()"
            )
        uncond, cond = split
        eps_u, eps_c = sample[uncond], sample[cond]
        rate = self.rate(captured, uncond, cond, eps_c - eps_u, cfg)
        self.rate_means.append(float(rate.mean()))
        return with_sample(output, torch.cat([eps_u, guided_cond(eps_u, eps_c, rate)]))

    def rate(
        self, captured: CapturedAttention, uncond: list[int], cond: list[int], delta: torch.Tensor, cfg: float
    ) -> torch.Tensor:
        """The per-pixel rate B×1×H×W of one forward, from its own maps and its guidance Δε."""
        b, _, h, w = delta.shape
        fixed = self.rate_config.fixed_rate
        if fixed is not None:
            return torch.full((b, 1, h, w), fixed, dtype=torch.float32, device=delta.device)
        class_maps = run_method(captured.rows(cond), self.plan.layout, self.config).class_maps
        start_maps = token_maps(captured.rows(uncond), self.config)[0][:, START_COLUMN]
        regions = region_masks(class_maps, (h, w))
        foreground = foreground_mask(start_maps, (h, w), self.rate_config.foreground_threshold)
        # PixArt predicts a variance too (2C channels): the guidance norm is over the ε channels only.
        channels = int(getattr(self.backbone.denoiser.config, "in_channels", delta.shape[1]))
        return guidance_rate(delta[:, :channels], regions, foreground, cfg, self.rate_config).to(delta.device)

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
    pipeline does not expose its own (PixArt).
    """
    from attnseg.guidance.prompting import check_prompt, default_classes, model_nouns

    prompt = check_prompt(prompt, pipe.tokenizer)
    nouns = model_nouns(getattr(pipe, "name_or_path", None))  # the embedded world models list theirs
    specs = parse_classes(classes) if classes else default_classes(prompt, pipe.tokenizer, nouns)
    return SemanticCFG(pipe, prompt, specs, method, guidance_scale, rate, read_last, **overrides)
