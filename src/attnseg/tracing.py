"""`with attnseg.trace(pipe) as tr:` — capture from a pipeline the user runs, then segment the generated image."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from attnseg.backbones import FAMILIES
from attnseg.errors import BadCheckpointError, BadConfigError
from attnseg.method.config import method_config
from attnseg.method.labels import assign_labels, upsample
from attnseg.method.pipeline import CapturedAttention, run_method
from attnseg.method.presence import presence_config
from attnseg.method.streaming import StreamingReducer
from attnseg.prompts import parse_classes
from attnseg.segmentation import Segmentation
from attnseg.segmentor import config_for


class _CurrentReducer:
    """Forwards the capture calls to the reducer of the denoiser call in progress."""

    def __init__(self) -> None:
        self.reducer: StreamingReducer | None = None

    def __getattr__(self, name: str):
        return getattr(self.__dict__["reducer"], name)


class Trace:
    """Captures every denoiser call of a pipeline run and averages the conditional rows over steps."""

    def __init__(
        self,
        pipe,
        method: str = "goca",
        keep_tokens: int = 77,
        presence: str | bool = "on",
        **overrides: object,
    ) -> None:
        method_config(method, **overrides)  # a bad method or setting fails before anything is touched
        self.presence = presence_config(presence)
        self.method = method
        index = {"_class_name": type(pipe).__name__}
        family = next((cls for cls in FAMILIES if cls.detect(index)), None)
        if family is None:
            raise BadCheckpointError(f"trace does not know the pipeline {type(pipe).__name__}")
        components = {k: v for k, v in pipe.components.items() if v is not None}
        denoiser = components.get("unet", components.get("transformer"))
        self.backbone = family(components, type(pipe).__name__, denoiser.device, denoiser.dtype)
        self.config = config_for(self.backbone, method, **overrides)
        self.keep_tokens = keep_tokens
        self.proxy = _CurrentReducer()
        self.sum: CapturedAttention | None = None
        self.steps = 0
        self._hooks: list = []
        self._stack = contextlib.ExitStack()
        self._installed = False
        self._testing = False  # True while the presence test runs the denoiser: its calls are not captured

    def _before(self, module, args, kwargs) -> None:
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        latent = self.backbone.latent_grid(sample)
        plan = self.backbone.capture_plan(latent, self.config)
        self.proxy.reducer = StreamingReducer(plan, latent, self.keep_tokens, self.config)
        if not self._installed:  # processors are installed once, on the first call, and read the proxy
            self._stack.enter_context(self.backbone.capturing(plan, self.proxy))
            self._installed = True

    def _after(self, module, args, kwargs, output) -> None:
        if self._testing:
            return
        captured = self.proxy.reducer.finish()
        rows = captured.cross[0].shape[0]
        captured = captured.rows(
            list(range(rows // 2, rows)) if rows % 2 == 0 and rows > 1 else list(range(rows))
        )
        self.sum = captured if self.sum is None else _add(self.sum, captured)
        self.steps += 1

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
        self._stack.close()
        self._installed = False

    def segment(
        self, prompt: str, classes: list[str] | str, image=None, tau: float | None = None
    ) -> Segmentation:
        """Segment the generated image into classes named in `prompt` (maps averaged over the captured steps)."""
        if self.sum is None:
            raise BadConfigError(
                "nothing was captured: run the pipeline inside the `with attnseg.trace(pipe)` block"
            )
        specs = parse_classes(classes)
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
        mean = _scale(self.sum, 1.0 / self.steps)
        out = run_method(mean.rows([0]), layout, self.config)
        size = (image.height, image.width) if image is not None else out.class_maps.shape[-2:]
        scores = upsample(out.class_maps.float(), tuple(size))[0].clamp(0, 1).cpu()
        tau = self.config.tau if tau is None else tau
        labels = assign_labels(scores, tau)
        presence = self._presence(specs, scores, image)
        if presence is not None:  # absent classes: no score, no pixels
            scores[~presence.present] = 0.0
            labels = assign_labels(scores, tau)
            labels[torch.isin(labels, torch.nonzero(~presence.present).flatten() + 1)] = 0
        meta = {
            "method": self.method,
            "settings": self.config.to_dict(),
            "prompt": prompt,
            "steps": self.steps,
            "token_spans": plan.token_spans,
            "layers": mean.layer_names,
            "presence": {"mode": "off"}
            if not self.presence.enabled
            else {"mode": self.presence.mode, "skipped": "no image= given: nothing to test the classes on"}
            if presence is None
            else presence.to_dict([s.name for s in specs], self.presence),
        }
        return Segmentation([s.name for s in specs], scores, labels, tau, image, meta)

    def _presence(self, specs, scores_khw: torch.Tensor, image):
        """The presence test on the generated image, prompted with the class list (None when off or no image)."""
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
    pipe, method: str = "goca", keep_tokens: int = 77, presence: str | bool = "on", **overrides: object
) -> Trace:
    """Context manager: `with trace(pipe) as tr: image = pipe(prompt).images[0]`, then `tr.segment(prompt, [...])`.

    presence "on" (default) tests which named classes the generated image shows (needs image=); "off" keeps all.
    """
    return Trace(pipe, method, keep_tokens, presence, **overrides)
