"""The segmentation method on plain tensors (METHOD.md); never imports diffusers."""

from attnseg.method.config import METHOD_PRESETS, MethodConfig, method_config
from attnseg.method.labels import assign_labels
from attnseg.method.pipeline import CapturedAttention, MethodOutput, TokenLayout, run_method

__all__ = [
    "METHOD_PRESETS",
    "CapturedAttention",
    "MethodConfig",
    "MethodOutput",
    "TokenLayout",
    "assign_labels",
    "method_config",
    "run_method",
]
