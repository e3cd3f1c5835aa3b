"""Single-file checkpoints (SD1.x / SDXL, original layout) through diffusers' from_single_file, offline."""

from __future__ import annotations

from pathlib import Path

import torch

from attnseg.backbones.base import Backbone
from attnseg.backbones.loading import PICKLE_SUFFIXES, check_weights
from attnseg.errors import BadCheckpointError


def _is_sdxl(path: Path) -> bool:
    if path.suffix != ".safetensors":
        return False
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return any(k.startswith("conditioner.embedders.1") for k in handle.keys())


def load_single_file(
    path: Path, model_id: str, device: torch.device, dtype: torch.dtype, allow_pickle: bool, config_folder
) -> Backbone:
    """Load an SD1/SDXL single-file checkpoint; `config_folder` is a diffusers folder of the same family."""
    if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise BadCheckpointError(
            f"{path} is a pickled checkpoint, which can run code when loaded; "
            "convert it to .safetensors, or pass --allow-pickle if you trust its source"
        )
    if path.suffix not in (".safetensors", *PICKLE_SUFFIXES):
        raise BadCheckpointError(f"{path} is neither a diffusers folder nor a .safetensors/.ckpt checkpoint")
    if path.suffix == ".safetensors":
        check_weights(path, allow_pickle)
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from attnseg.backbones.unet import SDXLBackbone, UNetBackbone

    sdxl = _is_sdxl(path)
    pipeline_cls, backbone_cls = (
        (StableDiffusionXLPipeline, SDXLBackbone) if sdxl else (StableDiffusionPipeline, UNetBackbone)
    )
    kwargs = {"torch_dtype": dtype, "local_files_only": True}
    if config_folder is not None:
        kwargs["config"] = str(config_folder)
    try:
        pipe = pipeline_cls.from_single_file(str(path), **kwargs)
    except Exception as exc:  # noqa: BLE001 — diffusers raises many types here; all mean "cannot build it"
        raise BadCheckpointError(
            f"could not build a {'SDXL' if sdxl else 'SD1/SD2'} pipeline from {path}: {exc}. "
            "Single files need the model's configs offline: pass --config with a diffusers folder of the same "
            "family, or have the base repo in the Hugging Face cache"
        ) from exc
    components = {k: v for k, v in pipe.components.items() if v is not None}
    for value in components.values():
        if isinstance(value, torch.nn.Module):
            value.to(device).eval().requires_grad_(False)
    return backbone_cls(components, model_id, device, dtype)
