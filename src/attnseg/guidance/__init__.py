"""Generative uses of the maps: semantic-aware CFG in a diffusers pipeline, and masks of generated images.

`with scfg(pipe, prompt):` guides a pipeline you run; `ImageGenerator` generates (and masks) with a model
attnseg loads; `attnseg generate` is its command. The rate math (`rate.py`) is on plain tensors.
"""

from __future__ import annotations

GUIDANCES = ("cfg", "s-cfg")
# The masks average the cond branch's maps over the last READ_LAST of the steps (docs/GENERATE.md: on the
# embedded world, against `attnseg segment` of the finished image, the last 20% score 78.1 mIoU, the last half
# 71.4 and all steps 61.4; the early steps show a noisy layout the model later revises).
READ_LAST = 0.2

__all__ = ["GenerateOptions", "ImageGenerator", "RateConfig", "SemanticCFG", "scfg"]


def __getattr__(name: str):
    # Lazy, as attnseg's own __init__: importing the package does not import torch or diffusers.
    if name in ("GenerateOptions", "ImageGenerator"):
        from attnseg.guidance import generate

        return getattr(generate, name)
    if name == "RateConfig":
        from attnseg.guidance.rate import RateConfig

        return RateConfig
    if name in ("SemanticCFG", "scfg"):
        from attnseg.guidance import semantic

        return getattr(semantic, name)
    raise AttributeError(f"module 'attnseg.guidance' has no attribute {name!r}")
