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
from attnseg.io import DEFAULT_MAX_PIXELS, check_memory, load_image, prepare_image
from attnseg.method.config import MethodConfig, method_config, model_method_config
from attnseg.method.labels import assign_labels, upsample
from attnseg.method.pipeline import MethodOutput, run_method
from attnseg.method.presence import PresenceConfig, label_present, presence_config
from attnseg.prompts import DEFAULT_TEMPLATE, ClassSpec, PromptPlan, parse_classes, with_rest_column
from attnseg.segmentation import Segmentation

WORLD_IMAGE_SIZE = 64  # the embedded world models' scenes (docs/WORLD.md)

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
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise BadConfigError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "mps" and torch.backends.mps.is_available():
        return device
    if device.type not in ("cpu", "cuda"):
        raise BadConfigError(
            f"--device {str(device)!r} cannot run attnseg here; use cpu"
            + (", cuda or cuda:N" if torch.cuda.is_available() else " (this machine has no CUDA GPU)")
        )
    if (
        device.type == "cuda"
        and torch.cuda.is_available()
        and (device.index or 0) >= torch.cuda.device_count()
    ):
        raise BadConfigError(
            f"--device {device} names a GPU this machine lacks (it has {torch.cuda.device_count()})"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadConfigError(
            "--device cuda was asked for, but this machine has no CUDA GPU; use --device cpu"
        )
    return device


def config_for(backbone: Backbone, method: str, **overrides: object) -> MethodConfig:
    """The method's settings for this model: your overrides, then its attnseg.json, then its family preset."""
    defaults = backbone.preset.method_defaults() | backbone.defaults["method"]
    return model_method_config(method, defaults, overrides)


def presence_for(
    backbone: Backbone, presence: str | bool | PresenceConfig | None, **tests: object
) -> PresenceConfig:
    """The presence test's settings for this model: yours, then its attnseg.json's "presence", then the defaults.

    A PresenceConfig given whole is used as it is. A threshold (or weight power) you give without a rule picks
    the rule it belongs to, so that it is never silently ignored under the model's other rule.
    """
    if isinstance(presence, PresenceConfig):
        return presence
    implied = [
        rule for field, rule in (("threshold", "threshold"), ("weight_power", "weighted")) if field in tests
    ]
    if "labels" not in tests and len(implied) == 1:
        tests = {**tests, "labels": implied[0]}
    return presence_config(presence, **(backbone.defaults.get("presence", {}) | tests))


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
        presence: PresenceConfig | None = None,
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
        self.presence = presence or PresenceConfig()
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
        presence: str | bool | PresenceConfig | None = "on",
        **overrides: object,
    ) -> Segmentor:
        """Load `model` (None: the embedded default) and set up `method` with any setting overridden.

        Precedence: your overrides, then the model's own attnseg.json, then the family preset, then the method
        (for the presence test: yours, then attnseg.json's "presence" section, then PresenceConfig's defaults).
        presence: "on" (default) decides which named classes are in each image first; "off" segments into all.
        Overrides named presence_<field> set a field of PresenceConfig (e.g. presence_threshold=0.05).
        """
        prefix = "presence_"
        tests = {k.removeprefix(prefix): v for k, v in overrides.items() if k.startswith(prefix)}
        overrides = {k: v for k, v in overrides.items() if not k.startswith(prefix)}
        if isinstance(tests.get("timesteps"), list):
            tests["timesteps"] = tuple(tests["timesteps"])
        presence_config(presence, **tests)  # a bad presence setting fails before loading anything
        method_config(method, **overrides)  # fail on a bad method or setting before loading anything
        device = parse_device(device)
        backbone = load_backbone(model, device, parse_dtype(dtype, device), allow_pickle, config_folder)
        config = config_for(backbone, method, **overrides)
        presence_settings = presence_for(backbone, presence, **tests)
        template = template or backbone.defaults["template"] or DEFAULT_TEMPLATE
        return cls(backbone, config, method, template, background, batch_size, max_pixels, presence_settings)

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

    def model_note(self, images: list[Image.Image] | None = None) -> str | None:
        """What to know about an embedded world model, or None for other models; with images, only when one
        of them is not a world scene (another size than the world's)."""
        model_id = self.backbone.info().get("model_id", "")
        if not model_id.startswith("attnseg:"):
            return None
        if images is not None and all(im.size == (WORLD_IMAGE_SIZE, WORLD_IMAGE_SIZE) for im in images):
            return None
        return (
            f"{model_id.removeprefix('attnseg:')} (the default) is a small model trained on synthetic scenes "
            f"({WORLD_IMAGE_SIZE}×{WORLD_IMAGE_SIZE}, 13 classes: see `attnseg models`); on photos its masks "
            "mean little: pass --model with a Stable Diffusion folder for real images"
        )

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
    def plan(self, classes: list[str] | str) -> _Prompts:
        """The class specs and the prompts that name them; raises on a class list this model cannot take."""
        specs = parse_classes(classes)
        overlap = {s.lower() for c in specs for s in c.synonyms} & {
            s.lower() for b in self.background for s in b.synonyms
        }
        if overlap:
            raise BadClassesError(
                f"{', '.join(sorted(overlap))} named both as a class and as a background word"
            )
        return _Prompts(
            specs, self.builder.with_stop_words(self.config.stop_words).build(specs, self.background)
        )

    def segment(self, images, classes: list[str] | str, seed: int = 0, progress=None):
        """Segment one image (PIL or path) or a list; returns one Segmentation or a list of them."""
        pictures, names, single = self._images(images)
        job = self.plan(classes)
        check_memory([(n, im.width, im.height) for n, im in zip(names, pictures)], len(job.specs))
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
                jobs[key] = self.plan(classes)
        per_image = [jobs[(c,) if isinstance(c, str) else tuple(c)] for c in classes_per_image]
        most = max((len(job.specs) for job in per_image), default=0)
        check_memory([(n, im.width, im.height) for n, im in zip(names, pictures)], most)
        return self._run(pictures, names, per_image, seed, progress)

    def _run(self, pictures, names, jobs: list[_Prompts], seed: int, progress) -> list[Segmentation]:
        results: list[Segmentation] = []
        for start in range(0, len(pictures), self.batch_size):
            stop = min(len(pictures), start + self.batch_size)
            batch = (pictures[start:stop], names[start:stop], jobs[start:stop], seed)
            if self.presence.enabled:  # an open pass naming every class locates them for the test
                opened = self._segment_batch(*batch, open_pass=True)
                opened = [self._keep_present(r, job, seed) for r, job in zip(opened, jobs[start:stop])]
            else:
                opened = self._segment_batch(*batch)
                for r in opened:
                    r.meta["presence"] = {"mode": "off"}
            results.extend(opened)
            if progress is not None:
                progress(stop - start)
        return results

    def _keep_present(self, opened: Segmentation, job: _Prompts, seed: int) -> Segmentation:
        """Test which named classes the image shows; label it with those only (absent: no score, no pixel)."""
        from attnseg.presence import find_present

        specs, plans = job.specs, job.plans
        picture = opened.image
        found = find_present(
            self.backbone,
            self.builder,
            self._pixels([picture])[0],
            specs,
            plans,
            self.background,
            opened.scores,
            self.presence,
            seed,
        )
        decided = label_present(
            opened.scores, opened.labels == 0, found.scores, self.presence, self.config.tau, found.rises
        )
        found.present, found.weights = decided.present, decided.weights
        kept = [k for k in range(len(specs)) if found.present[k]]
        kept_specs = [specs[k] for k in kept]
        everything = len(kept) == len(specs) or not self.presence.second_pass
        kept_plans = plans if everything else self.builder.build(kept_specs, self.background)
        if kept_plans is plans:  # the open pass's maps of the kept classes are the segmentation
            # Every labelled pixel went to a kept class: renumber 1 + k (all classes) to 1 + i (kept ones).
            renumber = torch.zeros(len(specs) + 1, dtype=torch.long)
            renumber[torch.tensor(kept, dtype=torch.long) + 1] = torch.arange(1, len(kept) + 1)
            second = Segmentation(
                [s.name for s in kept_specs],
                decided.maps[kept],
                renumber[decided.labels],
                opened.tau,
                picture,
                opened.meta,
            )
        else:
            second = self._segment_batch(
                [picture], [opened.meta["image"]], [_Prompts(kept_specs, kept_plans)], seed
            )[0]
        scores = torch.zeros_like(opened.scores)
        scores[kept] = second.scores
        labels = torch.tensor([0] + [k + 1 for k in kept])[second.labels]
        timings = dict(opened.meta["timings"])
        if kept_plans is not plans:
            timings = {k: v + second.meta["timings"].get(k, 0.0) for k, v in timings.items()}
        # split_into_prompts says whether the named list was split, whatever the kept one needed.
        meta = second.meta | {
            "timings": timings | {"presence_s": found.seconds},
            "presence": found.to_dict([s.name for s in specs], self.presence),
            "open_pass_prompts": opened.meta["prompts"],
            "split_into_prompts": opened.meta["split_into_prompts"],
            "forwards": {
                "open_pass_rows": len(plans),
                "presence_rows": found.rows,
                "second_pass_rows": 0 if kept_plans is plans else len(kept_plans),
            },
        }
        return Segmentation(
            opened.classes, scores, labels, opened.tau, picture, meta, presence_rises=found.rises
        )

    def segment_prompt(
        self, image, text: str, classes: list[str], background: list[str] | None = None, seed: int = 0
    ) -> Segmentation:
        """Segment one image prompted with `text` itself (a caption); each class name and background word must
        occur in it. The background words' map is Segmentation.background."""
        pictures, names, _ = self._images(image)
        specs = parse_classes(classes)
        words = parse_classes(background) if background else []
        plan = self.builder.with_stop_words(self.config.stop_words).locate(text, specs, words)
        if plan.n_tokens > self.builder.max_tokens:
            raise BadClassesError(
                f"the prompt {text!r} takes {plan.n_tokens} tokens, more than the text encoder's "
                f"{self.builder.max_tokens}; shorten it"
            )
        return self._segment_batch(pictures, names, [_Prompts(specs, [plan])], seed)[0]

    def _segment_batch(
        self, pictures, names, jobs: list[_Prompts], seed, open_pass: bool = False
    ) -> list[Segmentation]:
        """One denoiser forward for every (image, prompt) row of a batch; each image is encoded once.

        open_pass: the presence step's open pass, whose method settings are `PresenceConfig.open_pass_config`'s
        for a job naming several classes (one class alone has nothing to be tested against: the method's own).
        """
        config = self.config

        def config_of(job: _Prompts) -> MethodConfig:
            return self.presence.open_pass_config(config) if open_pass and len(job.specs) > 1 else config

        keep = max(plan.n_tokens for job in jobs for plan in job.plans)  # kept columns, shared by every row
        image_rows = [i for i, job in enumerate(jobs) for _ in job.plans]  # rows: image-major, prompt-minor
        prompts = [plan.text for job in jobs for plan in job.plans]
        times = {}
        t0 = time.perf_counter()
        generator = torch.Generator().manual_seed(seed)
        if self.backbone.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.backbone.device)
        captured, capture_bytes = self.backbone.capture(
            self._pixels(pictures), prompts, keep, config, generator, image_rows=image_rows
        )
        times["forward_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        # Rows that share a prompt and settings (the same class list on several images) run the method together.
        groups: dict[tuple[str, MethodConfig], list[int]] = {}
        for row, text in enumerate(prompts):
            groups.setdefault((text, config_of(jobs[image_rows[row]])), []).append(row)
        plan_of = {plan.text: with_rest_column(plan, keep) for job in jobs for plan in job.plans}
        outputs: dict[int, tuple[MethodOutput, int]] = {}
        for (text, settings), rows in groups.items():
            out = run_method(captured.rows(rows), plan_of[text].layout, settings)
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
            labels = assign_labels(scores, config.tau, bg, rule=config.label_rule)
            meta = {
                "image": names[i],
                "image_size": [picture.width, picture.height],
                "method": self.method,
                "settings": config_of(job).to_dict(),
                "model": {**self.backbone.info(), "hash": self.model_hash}
                | ({"note": self.model_note()} if self.model_note() else {}),
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
            merged = bg.amax(0) if bg is not None else None
            results.append(
                Segmentation([s.name for s in job.specs], scores, labels, config.tau, picture, meta, merged)
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
