"""`with attnseg.trace(pipe) as tr:` — capture from a pipeline the user runs, then segment the generated images."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from attnseg.backbones import FAMILIES, Backbone
from attnseg.errors import BadCheckpointError, BadConfigError
from attnseg.method.config import MethodConfig, method_config
from attnseg.method.labels import assign_labels, upsample
from attnseg.method.pipeline import CapturedAttention, run_method
from attnseg.method.presence import label_present, presence_config
from attnseg.method.streaming import CapturePlan, StreamingReducer
from attnseg.prompts import ClassSpec, PromptPlan, parse_classes
from attnseg.segmentation import Segmentation
from attnseg.segmentor import config_for, presence_for


def backbone_for_pipeline(pipe) -> Backbone:
    """The family adapter around a diffusers pipeline's own (already loaded) components."""
    index = {"_class_name": type(pipe).__name__}
    family = next((cls for cls in FAMILIES if cls.detect(index)), None)
    if family is None:
        raise BadCheckpointError(f"attnseg does not know the pipeline {type(pipe).__name__}")
    components = {k: v for k, v in pipe.components.items() if v is not None}
    denoiser = components.get("unet", components.get("transformer"))
    return family(components, type(pipe).__name__, denoiser.device, denoiser.dtype)


def denoiser_sample(output) -> torch.Tensor:
    """The prediction tensor of a denoiser's output (a tensor, a tuple, or a diffusers output class)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output.sample


def denoiser_input(args, kwargs) -> torch.Tensor:
    """The latents a denoiser call was given (UNets name them `sample`, transformers `hidden_states`)."""
    return args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))


def denoiser_timestep(args, kwargs) -> float | None:
    """The (first row's) timestep a denoiser call was given, as the pipeline passed it."""
    t = args[1] if len(args) > 1 else kwargs.get("timestep")
    return None if t is None else float(torch.as_tensor(t).flatten()[0])


def with_sample(output, sample: torch.Tensor):
    """The same output with its prediction replaced."""
    if isinstance(output, torch.Tensor):
        return sample
    if isinstance(output, tuple):
        return (sample, *output[1:])
    output.sample = sample
    return output


class Trace:
    """Captures the denoiser calls of a pipeline run and averages the conditional rows over the read steps.

    Each read call gets its own streaming reducer and capture processors, installed for that call only, so
    nothing outlives a step but the running sum of the conditional rows. `read_last`: the fraction of the
    run's steps, counted from the last, whose attention the masks average (1.0: every step). `presence`:
    "on" tests which named classes a generated image shows (segment with image=); "off" keeps them all.

    Families whose pipelines run CFG as two forwards per step (FLUX's true CFG: cond, then uncond on the same
    latents and timestep) have each call told apart by `_pair_step`: a call on the previous call's latents and
    timestep is that step's uncond forward, whose maps the masks leave out.
    """

    def __init__(
        self,
        pipe,
        method: str = "goca",
        keep_tokens: int = 77,
        read_last: float = 1.0,
        backbone: Backbone | None = None,
        presence: str | bool = "on",
        **overrides: object,
    ) -> None:
        method_config(method, **overrides)  # a bad method or setting fails before anything is touched
        presence_config(presence)  # a bad value fails before anything is touched
        if not 0.0 < read_last <= 1.0:
            raise BadConfigError(f"read_last is a fraction of the steps in (0, 1], got {read_last}")
        self.pipe = pipe
        self.method = method
        self.backbone = backbone or backbone_for_pipeline(pipe)
        self.config = config_for(self.backbone, method, **overrides)
        self.presence = presence_for(self.backbone, presence)
        self.keep_tokens = keep_tokens
        self.read_last = read_last
        self.sum: CapturedAttention | None = None
        self.steps = 0  # denoiser calls whose attention the masks average
        self.calls = 0  # every denoiser call seen
        self._reducer: StreamingReducer | None = None
        self._call_stack = contextlib.ExitStack()
        self._hooks: list = []
        # (latent h×w, whether under the trace's own config) → the capture plan (read-only)
        self._plans: dict[tuple[tuple[int, int], bool], CapturePlan] = {}
        self._testing = False  # True while the presence test runs the denoiser: its calls are not captured
        # Two-forward CFG: the latents and timestep of the last cond forward, and whether this call is uncond.
        self._last_cond: tuple[torch.Tensor, float | None] | None = None
        self._uncond_call = False

    # -- which calls are read ------------------------------------------------------------------------
    def _in_window(self, args, kwargs) -> bool:
        """Whether this call is one of the last `read_last` of the run's steps (from the scheduler's steps)."""
        timesteps = getattr(getattr(self.pipe, "scheduler", None), "timesteps", None)
        t = denoiser_timestep(args, kwargs)
        if timesteps is None or t is None or len(timesteps) == 0:
            return True
        t *= self.backbone.pipeline_timestep_scale
        index = int((timesteps.float() - t).abs().argmin())
        return index >= len(timesteps) - max(1, round(self.read_last * len(timesteps)))

    def _reads(self, args, kwargs) -> bool:
        """Whether this call's attention is captured."""
        return not self._testing and not self._uncond_call and self._in_window(args, kwargs)

    def _accumulates(self, args, kwargs) -> bool:
        """Whether this call's conditional rows join the masks' average."""
        return not self._uncond_call and self._in_window(args, kwargs)

    def _capture_config(self) -> MethodConfig:
        """The method config this call's capture plan and reducer follow (subclasses may read less)."""
        return self.config

    def _pair_step(self, args, kwargs) -> None:
        """Two-forward CFG: mark this call uncond when it repeats the last cond call's latents and timestep."""
        if self.backbone.cfg_in_one_batch:
            return
        latents, t = denoiser_input(args, kwargs), denoiser_timestep(args, kwargs)
        last = self._last_cond
        self._uncond_call = (
            last is not None
            and t == last[1]
            and latents.shape == last[0].shape
            and torch.equal(latents, last[0])
        )
        # Both forwards of a step take the same latents (the pipeline steps them after the pair): the uncond
        # call of a step is the one that repeats them; a third call with them is a new cond call.
        self._last_cond = None if self._uncond_call else (latents, t)

    def _cfg_rows(self, rows: int) -> tuple[list[int], list[int]] | None:
        """(uncond rows, cond rows) of a classifier-free-guidance batch, or None when it is not one."""
        if not self.backbone.cfg_in_one_batch:
            return None  # two-forward CFG: every row of a call is one branch
        cfg = getattr(self.pipe, "do_classifier_free_guidance", None)
        if cfg is None:
            cfg = rows % 2 == 0 and rows > 1
        if not cfg:
            return None
        return list(range(rows // 2)), list(range(rows // 2, rows))

    # -- the hooks -----------------------------------------------------------------------------------
    def _before(self, module, args, kwargs) -> None:
        self._reducer = None
        if self._testing:
            return
        self._pair_step(args, kwargs)
        if not self._reads(args, kwargs):
            return
        sample = denoiser_input(args, kwargs)
        latent = self.backbone.latent_grid(sample)
        config = self._capture_config()
        key = (latent, config is self.config)
        plan = self._plans.get(key)
        if plan is None:  # one plan per latent size: building it walks the denoiser's modules
            plan = self._plans[key] = self.backbone.capture_plan(latent, config)
        self._reducer = StreamingReducer(plan, latent, self.keep_tokens, config)
        self._call_stack.enter_context(self.backbone.capturing(plan, self._reducer))

    def _after(self, module, args, kwargs, output):
        if self._testing:
            return None
        self.calls += 1
        if self._reducer is None:
            return None
        self._call_stack.close()  # processors back as they were before the next call
        captured, self._reducer = self._reducer.finish(), None
        return self.on_capture(captured, args, kwargs, output)

    def on_capture(self, captured: CapturedAttention, args, kwargs, output):
        """Add the call's conditional rows to the running sum; returns None (the output is not changed)."""
        if self._accumulates(args, kwargs):
            split = self._cfg_rows(captured.cross[0].shape[0])
            kept = captured if split is None else captured.rows(split[1])
            self.sum = kept if self.sum is None else _add(self.sum, kept)
            self.steps += 1
        return None

    def __enter__(self) -> Trace:
        denoiser = self.backbone.denoiser
        self._hooks = [
            denoiser.register_forward_pre_hook(self._before, with_kwargs=True),
            denoiser.register_forward_hook(self._after, with_kwargs=True),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._call_stack.close()  # a call that raised leaves its processors installed until here
        self._reducer = None
        self._last_cond, self._uncond_call = None, False

    # -- masks ---------------------------------------------------------------------------------------
    def locate(self, prompt: str, specs: list[ClassSpec]) -> PromptPlan:
        """The classes' token columns in `prompt`, with the rest column at the trace's kept width."""
        plan = self.backbone.prompt_builder().locate(prompt, specs)
        if plan.n_tokens > self.keep_tokens:
            raise BadConfigError(
                f"the prompt has {plan.n_tokens} tokens; create the trace with keep_tokens >= that"
            )
        layout = plan.layout.__class__(
            plan.layout.class_tokens,
            [],
            plan.layout.content_tokens,
            sorted(set(plan.layout.special_tokens) | {self.keep_tokens}),
        )
        return PromptPlan(plan.text, plan.class_indices, layout, plan.token_spans, plan.n_tokens)

    def segment(
        self, prompt: str, classes: list[str] | str, image=None, tau: float | None = None
    ) -> Segmentation:
        """Segment the (first) generated image into classes named in `prompt` (maps averaged over read steps)."""
        return self.segment_all(prompt, classes, [image], tau)[0]

    def segment_all(
        self, prompt: str, classes: list[str] | str, images: list, tau: float | None = None
    ) -> list[Segmentation]:
        """One Segmentation per generated image of the run (rows in the pipeline's order)."""
        if self.sum is None:
            raise BadConfigError(
                "nothing was captured: run the pipeline inside the `with attnseg.trace(pipe)` block"
            )
        specs = parse_classes(classes)
        plan = self.locate(prompt, specs)
        mean = _scale(self.sum, 1.0 / self.steps)
        rows = mean.cross[0].shape[0]
        if len(images) > rows:
            raise BadConfigError(f"{len(images)} images given but the run generated {rows}")
        out = run_method(mean.rows(list(range(len(images)))), plan.layout, self.config)
        tau = self.config.tau if tau is None else tau
        results = []
        for row, image in enumerate(images):
            size = (image.height, image.width) if image is not None else out.class_maps.shape[-2:]
            scores = upsample(out.class_maps[row : row + 1].float(), tuple(size))[0].clamp(0, 1).cpu()
            meta = {
                "method": self.method,
                "settings": self.config.to_dict(),
                "prompt": prompt,
                "steps": self.steps,
                "read_last": self.read_last,
                "token_spans": plan.token_spans,
                "layers": mean.layer_names,
            }
            labels = assign_labels(scores, tau)
            presence = self._presence(specs, scores, image)
            if presence is not None:  # absent classes: no score, no pixels
                decided = label_present(
                    scores, labels == 0, presence.scores, self.presence, tau, presence.rises
                )
                presence.present, presence.weights = decided.present, decided.weights
                scores, labels = decided.maps, decided.labels
            meta["presence"] = (
                {"mode": "off"}
                if not self.presence.enabled
                else {
                    "mode": self.presence.mode,
                    "skipped": "no image= given: nothing to test the classes on",
                }
                if presence is None
                else presence.to_dict([s.name for s in specs], self.presence)
            )
            rises = None if presence is None else presence.rises
            names = [s.name for s in specs]
            results.append(Segmentation(names, scores, labels, tau, image, meta, presence_rises=rises))
        return results

    def _presence(self, specs: list[ClassSpec], scores_khw: torch.Tensor, image):
        """The presence test on a generated image, prompted with the class list (None when off or no image)."""
        if not self.presence.enabled or image is None:
            return None
        from attnseg.presence import find_present

        builder = self.backbone.prompt_builder()
        plans = builder.build(specs)
        size = self.backbone.preset.native_size
        pixels = torch.from_numpy(np.asarray(image.convert("RGB").resize((size, size)), dtype=np.float32))
        pixels = (pixels.permute(2, 0, 1) / 127.5 - 1.0).to(self.backbone.device)
        self._testing = True
        try:
            return find_present(
                self.backbone, builder, pixels, specs, plans, [], scores_khw, self.presence, seed=0
            )
        finally:
            self._testing = False


def _combine(a: CapturedAttention, b: CapturedAttention | None, fa: float, fb: float) -> CapturedAttention:
    mix = lambda x, y: None if x is None else (x * fa if y is None else x * fa + y * fb)  # noqa: E731
    return CapturedAttention(
        cross=[mix(x, None if b is None else y) for x, y in zip(a.cross, b.cross if b else a.cross)],
        head_aggregation=a.head_aggregation,
        grids=a.grids,
        layer_scores=mix(a.layer_scores, None if b is None else b.layer_scores),
        affinity=mix(a.affinity, None if b is None else b.affinity),
        map_size=a.map_size,
        layer_names=a.layer_names,
    )


def _add(a: CapturedAttention, b: CapturedAttention) -> CapturedAttention:
    return _combine(a, b, 1.0, 1.0)


def _scale(a: CapturedAttention, factor: float) -> CapturedAttention:
    return _combine(a, None, factor, 0.0)


def trace(
    pipe,
    method: str = "goca",
    keep_tokens: int = 77,
    read_last: float = 1.0,
    presence: str | bool = "on",
    **overrides: object,
) -> Trace:
    """Context manager: `with trace(pipe) as tr: image = pipe(prompt).images[0]`, then `tr.segment(prompt, [...])`.

    presence "on" (default) tests which named classes the generated image shows (needs image=); "off" keeps all.
    """
    return Trace(pipe, method, keep_tokens, read_last, presence=presence, **overrides)
