"""Model families: one adapter each, and the registry that recognises a folder's family."""

from __future__ import annotations

from pathlib import Path

import torch

from attnseg.backbones.base import Backbone, BackbonePreset
from attnseg.backbones.flux import FluxBackbone
from attnseg.backbones.hunyuan import HunyuanDiTBackbone
from attnseg.backbones.loading import check_weights, load_components, read_model_index, resolve_model
from attnseg.backbones.pixart import PixArtAlphaBackbone, PixArtSigmaBackbone
from attnseg.backbones.sd3 import SD3Backbone
from attnseg.backbones.unet import SDXLBackbone, UNetBackbone
from attnseg.errors import BadCheckpointError, BadConfigError
from attnseg.method.presence import presence_config
from attnseg.method.streaming import CapturePlan

FAMILIES: list[type[Backbone]] = [
    UNetBackbone,
    SDXLBackbone,
    PixArtAlphaBackbone,
    PixArtSigmaBackbone,
    SD3Backbone,
    FluxBackbone,
    HunyuanDiTBackbone,
]


def register_family(cls: type[Backbone]) -> type[Backbone]:
    """Add an adapter to the registry (usable as a class decorator)."""
    if cls not in FAMILIES:
        FAMILIES.append(cls)
    return cls


def family_for(index: dict, folder: Path) -> type[Backbone]:
    """The adapter whose pipeline class matches model_index.json."""
    for cls in FAMILIES:
        if cls.detect(index):
            return cls
    known = ", ".join(c for f in FAMILIES for c in f.pipeline_classes)
    raise BadCheckpointError(
        f"{folder} holds a {index.get('_class_name')!r}, a family attnseg does not know; known pipelines: {known}"
    )


def load_backbone(
    model: str | Path | None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    allow_pickle: bool = False,
    config_folder: str | Path | None = None,
) -> Backbone:
    """Resolve, recognise and load a model into its family's adapter."""
    path, model_id = resolve_model(model)
    device = torch.device(device)
    if path.is_file():
        from attnseg.backbones.single_file import load_single_file

        return load_single_file(path, model_id, device, dtype, allow_pickle, config_folder)
    index = read_model_index(path)
    cls = family_for(index, path)
    components = load_components(path, index, device, dtype, allow_pickle)
    backbone = cls(components, model_id, device, dtype)
    apply_model_defaults(backbone, path)
    return backbone


def apply_model_defaults(backbone: Backbone, folder: Path) -> None:
    """Read the optional `attnseg.json` beside model_index.json: preset fields, method defaults, prompt template.

    It lets a shipped model carry what was measured for it (its best timestep, τ, caption style) as data.
    """
    import dataclasses
    import json

    path = folder / "attnseg.json"
    if not path.is_file():
        return
    try:
        data = json.loads(path.read_text())
        backbone.preset = dataclasses.replace(backbone.preset, **data.get("preset", {}))
    except (json.JSONDecodeError, TypeError) as exc:
        raise BadCheckpointError(f"{path} is not a valid attnseg.json ({exc})") from exc
    presence = dict(data.get("presence", {}))
    try:
        presence_config("on", **presence)  # a bad section names the file now, not at the first segment call
    except BadConfigError as exc:
        raise BadCheckpointError(f'{path}: its "presence" section is not valid ({exc})') from exc
    backbone.defaults = {
        "method": dict(data.get("method", {})),
        "presence": presence,
        "template": data.get("template"),
    }


__all__ = [
    "FAMILIES",
    "Backbone",
    "BackbonePreset",
    "CapturePlan",
    "check_weights",
    "family_for",
    "load_backbone",
    "register_family",
]
