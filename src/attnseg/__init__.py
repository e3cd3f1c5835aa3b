"""attnseg: training-free open-vocabulary segmentation from text-to-image diffusion models."""

from attnseg.errors import (
    AttnsegError,
    BadCheckpointError,
    BadClassesError,
    BadConfigError,
    BadDatasetError,
    BadImageError,
    BadOutputError,
    BadPromptError,
    UnknownWordError,
)

__version__ = "0.1.0"

__all__ = [
    "AttnsegError",
    "BadCheckpointError",
    "BadClassesError",
    "BadConfigError",
    "BadDatasetError",
    "BadImageError",
    "BadOutputError",
    "BadPromptError",
    "UnknownWordError",
    "Segmentation",
    "Segmentor",
    "trace",
]


def __getattr__(name: str):
    # Lazy: `import attnseg` stays light; torch and diffusers load on first use.
    if name == "Segmentor":
        from attnseg.segmentor import Segmentor

        return Segmentor
    if name == "Segmentation":
        from attnseg.segmentation import Segmentation

        return Segmentation
    if name == "trace":
        from attnseg.tracing import trace

        return trace
    raise AttributeError(f"module 'attnseg' has no attribute {name!r}")
