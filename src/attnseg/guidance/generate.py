"""Generate images with plain CFG or S-CFG, and each image's masks from the attention of its own generation."""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from PIL import Image

from attnseg.backbones import Backbone, load_backbone
from attnseg.backbones.loading import resolve_model
from attnseg.errors import BadConfigError
from attnseg.guidance import GUIDANCES, READ_LAST
from attnseg.guidance.prompting import check_prompt, default_classes, model_nouns
from attnseg.guidance.rate import RateConfig
from attnseg.guidance.semantic import SemanticCFG
from attnseg.method.config import method_config
from attnseg.prompts import ClassSpec, parse_classes
from attnseg.segmentation import Segmentation
from attnseg.segmentor import _fingerprint, parse_device, parse_dtype
from attnseg.tracing import Trace


@dataclass(frozen=True)
class GenerateOptions:
    """How images are generated and masked; checked when built."""

    guidance: str = "s-cfg"  # cfg | s-cfg
    cfg: float = 7.5  # the guidance scale
    steps: int = 25  # denoising steps
    mask_method: str = "goca"  # the maps S-CFG's regions and the masks come from: any method preset
    masks: bool = False  # also segment each image from its generation's attention
    read_last: float = READ_LAST  # fraction of the last steps whose maps the masks average
    batch_size: int = 4  # images per pipeline call
    rate: RateConfig = field(default_factory=RateConfig)

    def __post_init__(self) -> None:
        if self.guidance not in GUIDANCES:
            raise BadConfigError(f"--guidance must be one of {', '.join(GUIDANCES)}, got {self.guidance!r}")
        if not self.cfg > 0:
            raise BadConfigError(f"--cfg must be > 0 (1 = no guidance, 7.5 is usual), got {self.cfg}")
        if self.semantic and self.cfg <= 1:
            raise BadConfigError(f"s-cfg rescales the guidance, so it needs --cfg > 1, got {self.cfg}")
        if self.steps < 1:
            raise BadConfigError(f"--steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise BadConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 < self.read_last <= 1:
            raise BadConfigError(f"read_last must lie in (0, 1], got {self.read_last}")
        method_config(self.mask_method)

    @property
    def semantic(self) -> bool:
        """Whether the guidance is S-CFG (regions from the maps) rather than plain CFG."""
        return self.guidance == "s-cfg"


@dataclass
class GeneratedImage:
    """One generated image, its seed, and (with masks) its Segmentation."""

    image: Image.Image
    seed: int
    segmentation: Segmentation | None
    meta: dict


def build_pipeline(backbone: Backbone):
    """The family's diffusers pipeline around the backbone's loaded components (DDPM swapped for DDIM)."""
    import diffusers

    cls = getattr(diffusers, type(backbone).pipeline_classes[0])
    components = dict(backbone.components)
    scheduler = components.get("scheduler")
    if isinstance(scheduler, diffusers.DDPMScheduler):  # 25 ancestral DDPM steps blur; DDIM is deterministic
        components["scheduler"] = diffusers.DDIMScheduler.from_config(scheduler.config)
    params = inspect.signature(cls.__init__).parameters
    kwargs = {}
    for name, param in params.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name in components:
            kwargs[name] = components[name]
        elif param.default is inspect.Parameter.empty:
            kwargs[name] = None  # safety checker, feature extractor, image encoder
    if "requires_safety_checker" in params:
        kwargs["requires_safety_checker"] = False
    pipe = cls(**kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class ImageGenerator:
    """A loaded model that generates images with CFG or S-CFG, and masks them from their own attention."""

    def __init__(self, backbone: Backbone, nouns: list[str] | None = None) -> None:
        self.backbone = backbone
        self.pipe = build_pipeline(backbone)
        self.nouns = nouns
        self.model_hash = _fingerprint(backbone)

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        allow_pickle: bool = False,
    ) -> ImageGenerator:
        """Load `model` (None: the embedded default) as `Segmentor.from_pretrained` does."""
        device = parse_device(device)
        backbone = load_backbone(model, device, parse_dtype(dtype, device), allow_pickle)
        folder, _ = resolve_model(model)
        return cls(backbone, model_nouns(folder))

    def classes_for(self, prompt: str, classes: list[str] | str | None) -> list[ClassSpec]:
        """The classes given (each must occur in the prompt), or the prompt's nouns the model knows."""
        specs = (
            parse_classes(classes)
            if classes
            else default_classes(prompt, self.backbone.tokenizer, self.nouns)
        )
        self.backbone.prompt_builder().locate(prompt, specs)  # raises if a class is not in the prompt
        return specs

    def check(self, prompt: str, classes: list[str] | str | None) -> tuple[str, list[ClassSpec]]:
        """The tidied prompt and its classes; raises on anything the run would fail on, before any work."""
        prompt = check_prompt(prompt, self.backbone.tokenizer)
        return prompt, self.classes_for(prompt, classes)

    def generate(
        self,
        prompt: str,
        classes: list[str] | str | None = None,
        options: GenerateOptions | None = None,
        seed: int = 0,
        n: int = 1,
        progress: Callable[[int], None] | None = None,
        **overrides: object,
    ) -> list[GeneratedImage]:
        """`n` images of `prompt`, image i from seed `seed + i`; with `options.masks`, each with its masks."""
        options = options or GenerateOptions()
        if n < 1:
            raise BadConfigError(f"n must be >= 1, got {n}")
        prompt, specs = self.check(prompt, classes)
        size = self.backbone.preset.native_size
        results: list[GeneratedImage] = []
        for start in range(0, n, options.batch_size):
            seeds = list(range(seed + start, seed + min(n, start + options.batch_size)))
            results.extend(self._batch(prompt, specs, options, seeds, size, overrides))
            if progress is not None:
                progress(len(seeds))
        return results

    def _hooks(self, prompt: str, specs: list[ClassSpec], options: GenerateOptions, overrides: dict):
        if options.semantic:
            return SemanticCFG(
                self.pipe,
                prompt,
                specs,
                options.mask_method,
                options.cfg,
                options.rate,
                options.read_last,
                self.backbone,
                **overrides,
            )
        if options.masks:
            keep = self.backbone.prompt_builder().locate(prompt, specs).n_tokens
            return Trace(  # the classes are the prompt's own words: no presence test
                self.pipe,
                options.mask_method,
                keep,
                options.read_last,
                self.backbone,
                presence="off",
                **overrides,
            )
        return None

    def _batch(self, prompt, specs, options, seeds, size, overrides) -> list[GeneratedImage]:
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        hooks = self._hooks(prompt, specs, options, overrides)
        t0 = time.perf_counter()
        call = dict(
            num_inference_steps=options.steps,
            guidance_scale=options.cfg,
            num_images_per_prompt=len(seeds),
            generator=generators,
            height=size,
            width=size,
        )
        if "use_resolution_binning" in inspect.signature(self.pipe.__call__).parameters:
            call["use_resolution_binning"] = False  # PixArt: the native square size needs no binning
        if not self.backbone.cfg_in_one_batch:
            # FLUX: CFG is the pipeline's true CFG against an empty negative prompt (its guidance_scale is the
            # distilled guidance embedding, left at the pipeline's default).
            del call["guidance_scale"]
            call |= {"true_cfg_scale": options.cfg, "negative_prompt": ""}
        if hooks is None:
            images = self.pipe(prompt, **call).images
        else:
            with hooks:
                images = self.pipe(prompt, **call).images
        seconds = (time.perf_counter() - t0) / len(seeds)
        masks = [None] * len(seeds)
        if options.masks:
            masks = hooks.segment_all(prompt, ["|".join(s.synonyms) for s in specs], images)
        out = []
        for image, image_seed, seg in zip(images, seeds, masks):
            meta = {
                "prompt": prompt,
                "seed": image_seed,
                "generation": asdict(options) | {"seconds_per_image": seconds},
                "model": {**self.backbone.info(), "hash": self.model_hash},
                "classes": [s.name for s in specs],
            }
            if isinstance(hooks, SemanticCFG):
                meta["rate_mean_per_step"] = hooks.rate_means
            if seg is not None:
                seg.meta = {**seg.meta, **meta, "image": "image.png", "image_size": list(image.size)}
            out.append(GeneratedImage(image, image_seed, seg, meta))
        return out
