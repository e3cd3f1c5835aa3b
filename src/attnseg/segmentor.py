"""Segmentor: load a model once, then segment images into the classes you name."""

from __future__ import annotations

import copy
import hashlib
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from attnseg.backbones import Backbone, load_backbone
from attnseg.errors import BadClassesError, BadConfigError
from attnseg.io import DEFAULT_MAX_PIXELS, load_image, prepare_image
from attnseg.method.config import MethodConfig, method_config, model_method_config
from attnseg.method.labels import assign_labels, upsample
from attnseg.method.pipeline import MethodOutput, run_method
from attnseg.prompts import DEFAULT_TEMPLATE, ClassSpec, PromptPlan, parse_classes, with_rest_column
from attnseg.segmentation import Segmentation

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """A torch dtype from a name; None is float32 on CPU and float16 on CUDA."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise BadConfigError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def parse_device(device: str | torch.device | None) -> torch.device:
    """A torch device; None picks CUDA when present. Asking for CUDA without it is an error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadConfigError(
            "--device cuda was asked for, but this machine has no CUDA GPU; use --device cpu"
        )
    return device


def config_for(backbone: Backbone, method: str, **overrides: object) -> MethodConfig:
    """The method's settings for this model: your overrides, then its attnseg.json, then its family preset."""
    defaults = {"refine_steps": backbone.preset.refine_steps} | backbone.defaults["method"]
    return model_method_config(method, defaults, overrides)


def _peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _fingerprint(backbone: Backbone) -> str:
    """A short hash of the denoiser's weights (first elements of every tensor), to tell checkpoints apart."""
    digest = hashlib.sha256()
    for name, tensor in sorted(backbone.denoiser.state_dict().items())[:64]:
        digest.update(name.encode())
        digest.update(tensor.flatten()[:64].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class Segmentor:
    """A diffusion model turned into an open-vocabulary segmentor (METHOD.md), training-free."""

    def __init__(
        self,
        backbone: Backbone,
        config: MethodConfig,
        method: str = "goca",
        template: str = DEFAULT_TEMPLATE,
        background: list[str] | None = None,
        batch_size: int = 1,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if batch_size < 1:
            raise BadConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.backbone = backbone
        self.config = config
        self.method = method
        self.template = template
        self.background = parse_classes(background) if background else []
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.builder = backbone.prompt_builder(template)
        self.model_hash = _fingerprint(backbone)

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike | None = None,
        method: str = "goca",
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        *,
        template: str | None = None,
        background: list[str] | None = None,
        batch_size: int = 1,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        allow_pickle: bool = False,
        config_folder: str | os.PathLike | None = None,
        **overrides: object,
    ) -> Segmentor:
        """Load `model` (None: the embedded default) and set up `method` with any setting overridden.

        Precedence: your overrides, then the model's own attnseg.json, then the family preset, then the method.
        """
        method_config(method, **overrides)  # fail on a bad method or setting before loading anything
        device = parse_device(device)
        backbone = load_backbone(model, device, parse_dtype(dtype, device), allow_pickle, config_folder)
        config = config_for(backbone, method, **overrides)
        template = template or backbone.defaults["template"] or DEFAULT_TEMPLATE
        return cls(backbone, config, method, template, background, batch_size, max_pixels)

    def with_config(
        self, method: str | None = None, tau: float | None = None, **overrides: object
    ) -> Segmentor:
        """A copy with another method or settings that shares the loaded model (nothing reloaded or re-hashed).

        `method` given: that preset for this model, with `overrides`; None: the current settings, with `overrides`.
        """
        if tau is not None:
            overrides["tau"] = tau
        if method is None:
            method, config = self.method, self.config.with_overrides(**overrides)
        else:
            config = config_for(self.backbone, method, **overrides)
        clone = copy.copy(self)
        clone.method, clone.config = method, config
        return clone

    # -- inputs -----------------------------------------------------------------------------------------
    def _images(self, images) -> tuple[list[Image.Image], list[str], bool]:
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        if not items:
            raise BadConfigError("no images given")
        loaded, names = [], []
        for i, item in enumerate(items):
            if isinstance(item, (str, os.PathLike)):
                loaded.append(load_image(item, self.max_pixels))
                names.append(str(item))
            else:
                loaded.append(prepare_image(item, f"image #{i + 1}", self.max_pixels))
                names.append(f"image #{i + 1}")
        return loaded, names, single

    def _pixels(self, images: list[Image.Image]) -> torch.Tensor:
        size = self.backbone.preset.native_size
        arrays = [np.asarray(im.resize((size, size), Image.BICUBIC), dtype=np.float32) for im in images]
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0
        return pixels.to(self.backbone.device)

    # -- the work ---------------------------------------------------------------------------------------
    def segment(self, images, classes: list[str] | str, seed: int = 0, progress=None):
        """Segment one image (PIL or path) or a list; returns one Segmentation or a list of them."""
        pictures, names, single = self._images(images)
        job = self._prompts_for(classes)
        results = self._run(pictures, names, [job] * len(pictures), seed, progress)
        return results[0] if single else results

    def segment_each(
        self, images, classes_per_image: list[list[str] | str], seed: int = 0, progress=None
    ) -> list[Segmentation]:
        """Segment each image of a list with its own class list; images still share batched forwards.

        The same as calling `segment(image, classes)` image by image (up to float rounding), only faster.
        """
        pictures, names, _ = self._images(list(images))
        if len(classes_per_image) != len(pictures):
            raise BadClassesError(
                f"{len(classes_per_image)} class lists for {len(pictures)} images: give one list per image"
            )
        jobs: dict[tuple, _Prompts] = {}
        for classes in classes_per_image:
            key = (classes,) if isinstance(classes, str) else tuple(classes)
            if key not in jobs:
                jobs[key] = self._prompts_for(classes)
        per_image = [jobs[(c,) if isinstance(c, str) else tuple(c)] for c in classes_per_image]
        return self._run(pictures, names, per_image, seed, progress)

    def _prompts_for(self, classes: list[str] | str) -> _Prompts:
        """Check a class list and pack it into prompts."""
        specs = parse_classes(classes)
        overlap = {s.lower() for c in specs for s in c.synonyms} & {
            s.lower() for b in self.background for s in b.synonyms
        }
        if overlap:
            raise BadClassesError(
                f"{', '.join(sorted(overlap))} named both as a class and as a background word"
            )
        return _Prompts(specs, self.builder.build(specs, self.background))

    def _run(self, pictures, names, jobs: list[_Prompts], seed: int, progress) -> list[Segmentation]:
        results: list[Segmentation] = []
        for start in range(0, len(pictures), self.batch_size):
            stop = min(len(pictures), start + self.batch_size)
            results.extend(
                self._segment_batch(pictures[start:stop], names[start:stop], jobs[start:stop], seed)
            )
            if progress is not None:
                progress(stop - start)
        return results

    def _segment_batch(self, pictures, names, jobs: list[_Prompts], seed) -> list[Segmentation]:
        """One denoiser forward for every (image, prompt) row of a batch; each image is encoded once."""
        keep = max(plan.n_tokens for job in jobs for plan in job.plans)  # kept columns, shared by every row
        image_rows = [i for i, job in enumerate(jobs) for _ in job.plans]  # rows: image-major, prompt-minor
        prompts = [plan.text for job in jobs for plan in job.plans]
        times = {}
        t0 = time.perf_counter()
        generator = torch.Generator().manual_seed(seed)
        if self.backbone.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.backbone.device)
        captured, capture_bytes = self.backbone.capture(
            self._pixels(pictures), prompts, keep, self.config, generator, image_rows=image_rows
        )
        times["forward_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        # Rows that share a prompt (the same class list on several images) run the method together.
        groups: dict[str, list[int]] = {}
        for row, text in enumerate(prompts):
            groups.setdefault(text, []).append(row)
        plan_of = {plan.text: with_rest_column(plan, keep) for job in jobs for plan in job.plans}
        outputs: dict[int, tuple[MethodOutput, int]] = {}
        for text, rows in groups.items():
            out = run_method(captured.rows(rows), plan_of[text].layout, self.config)
            outputs.update({row: (out, local) for local, row in enumerate(rows)})
        times["method_s"] = time.perf_counter() - t1
        peak = {"capture_store_bytes": capture_bytes, "process_peak_rss_bytes": _peak_rss_bytes()}
        if self.backbone.device.type == "cuda":
            peak["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated(self.backbone.device))
        results, row = [], 0
        for i, (picture, job) in enumerate(zip(pictures, jobs)):
            class_maps: list[torch.Tensor | None] = [None] * len(job.specs)
            background_maps, diagnostics = [], []
            for plan in job.plans:
                out, local = outputs[row]
                row += 1
                diagnostics.append(
                    {
                        "prompt": plan.text,
                        "layer_weights": out.layer_weights[local].tolist(),
                        "special_token_mass": float(out.special_token_mass[local]),
                    }
                )
                for index, k in enumerate(plan.class_indices):
                    class_maps[k] = out.class_maps[local, index]
                if out.background_maps.shape[1]:
                    background_maps.append(out.background_maps[local])
            size = (picture.height, picture.width)
            scores = upsample(torch.stack(class_maps)[None].float(), size)[0].clamp(0, 1).cpu()
            bg = None
            if background_maps:
                bg = upsample(torch.stack(background_maps).mean(0)[None].float(), size)[0].clamp(0, 1).cpu()
            labels = assign_labels(scores, self.config.tau, bg)
            meta = {
                "image": names[i],
                "image_size": [picture.width, picture.height],
                "method": self.method,
                "settings": self.config.to_dict(),
                "model": {**self.backbone.info(), "hash": self.model_hash},
                "native_size": self.backbone.preset.native_size,
                "timestep": self.backbone.preset.timestep,
                "sigma": self.backbone.preset.sigma,
                "seed": seed,
                "prompts": [
                    {
                        "text": p.text,
                        "classes": [job.specs[k].name for k in p.class_indices],
                        "token_spans": p.token_spans,
                    }
                    for p in job.plans
                ],
                "split_into_prompts": len(job.plans) > 1,
                "background_words": [b.name for b in self.background],
                "layers": captured.layer_names,
                "diagnostics": diagnostics,
                "timings": {k: v / len(pictures) for k, v in times.items()}
                | {"batch_images": len(pictures), "batch_rows": len(prompts)},
                "memory": peak,
            }
            results.append(
                Segmentation([s.name for s in job.specs], scores, labels, self.config.tau, picture, meta)
            )
        return results


@dataclass(frozen=True)
class _Prompts:
    """A checked class list and the prompts it is packed into."""

    specs: list[ClassSpec]
    plans: list[PromptPlan]


def default_output_name(name: str, index: int) -> str:
    """A folder name for an image's outputs: its file stem, or its position."""
    stem = Path(name).stem if not name.startswith("image #") else f"image_{index:03d}"
    return stem or f"image_{index:03d}"
