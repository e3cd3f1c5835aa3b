"""Finding and loading a model: embedded names, local diffusers folders, the HF cache (offline), single files."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import torch

from attnseg.errors import BadCheckpointError

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "models"
WEIGHT_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")


def embedded_models() -> list[str]:
    """Names of the models shipped inside the package."""
    if not ASSETS.is_dir():
        return []
    return sorted(p.name for p in ASSETS.iterdir() if (p / "model_index.json").is_file())


def default_model_name() -> str | None:
    """The embedded default's name (assets/models/DEFAULT), if any model is shipped."""
    marker = ASSETS / "DEFAULT"
    if marker.is_file():
        name = marker.read_text().strip()
        if (ASSETS / name / "model_index.json").is_file():
            return name
    names = embedded_models()
    return names[0] if names else None


def _hf_cache_folder(repo_id: str) -> Path | None:
    """The newest cached snapshot of a hub repo, without any network access."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 — any failure means "not in the cache"
        return None


def resolve_model(model: str | os.PathLike | None) -> tuple[Path, str]:
    """The folder or file to load for `model`, and the id to record. Never downloads."""
    if model is None:
        name = default_model_name()
        if name is None:
            raise BadCheckpointError(
                f"no embedded model is installed (looked in {ASSETS}); pass --model with a diffusers folder"
            )
        return ASSETS / name, f"attnseg:{name}"
    text = str(model)
    if text in embedded_models():
        return ASSETS / text, f"attnseg:{text}"
    path = Path(text).expanduser()
    if path.exists():
        return path.resolve(), str(path.resolve())
    looked = [str(path.resolve())]
    if text.count("/") == 1 and not text.startswith((".", "/")):
        cached = _hf_cache_folder(text)
        if cached is not None:
            return cached, text
        from huggingface_hub.constants import HF_HUB_CACHE

        looked.append(f"the Hugging Face cache ({HF_HUB_CACHE}) for repo {text!r}")
    raise BadCheckpointError(
        f"model {text!r} not found; looked at: {'; '.join(looked)}; embedded models: {', '.join(embedded_models()) or 'none'}. "
        "attnseg never downloads: pass a local diffusers folder, a .safetensors file, or pre-fill the HF cache "
        "(HF_HOME) on a machine with network access"
    )


def read_model_index(folder: Path) -> dict:
    """model_index.json of a diffusers folder, checked."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise BadCheckpointError(
            f"{folder} is not a diffusers model folder: {index_path.name} is missing. "
            "Pass the folder that contains model_index.json, or a single .safetensors checkpoint"
        )
    try:
        return json.loads(index_path.read_text())
    except json.JSONDecodeError as exc:
        raise BadCheckpointError(
            f"{index_path} is not valid JSON ({exc}); the download is probably partial"
        ) from exc


def check_weights(path: Path, allow_pickle: bool) -> None:
    """Refuse pickled weights without the flag, and open each safetensors header to catch corrupt files."""
    files = [path] if path.is_file() else sorted(path.rglob("*"))
    weights = [f for f in files if f.suffix in WEIGHT_SUFFIXES]
    pickled = [f for f in files if f.suffix in PICKLE_SUFFIXES]
    if pickled and not weights and not allow_pickle:
        raise BadCheckpointError(
            f"{pickled[0]} is a pickled checkpoint, which can run code when loaded; "
            "convert it to safetensors, or pass --allow-pickle if you trust its source"
        )
    from safetensors import safe_open

    for file in weights:
        try:
            with safe_open(str(file), framework="pt") as handle:
                names = list(handle.keys())
                if names:
                    handle.get_slice(names[-1])
        except Exception as exc:  # noqa: BLE001 — safetensors raises several types for a bad file
            raise BadCheckpointError(
                f"{file} is not a readable safetensors file ({exc}); re-copy or re-convert it"
            ) from exc


def _component_class(library: str, class_name: str):
    if library == "transformers" and "Tokenizer" in class_name:
        from transformers import AutoTokenizer

        return AutoTokenizer
    try:
        return getattr(importlib.import_module(library), class_name)
    except (ImportError, AttributeError) as exc:
        raise BadCheckpointError(
            f"component class {library}.{class_name} is not available in this install"
        ) from exc


def load_components(
    folder: Path, index: dict, device: torch.device, dtype: torch.dtype, allow_pickle: bool = False
) -> dict:
    """Load every non-null component listed in model_index.json from its subfolder."""
    components: dict = {}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or len(spec) != 2 or None in spec:
            continue
        sub = folder / name
        if not sub.is_dir():
            raise BadCheckpointError(
                f"{folder} is partial: model_index.json lists {name!r} but the folder {sub} is missing"
            )
        library, class_name = spec
        check_weights(sub, allow_pickle)
        cls = _component_class(library, class_name)
        kwargs = {"local_files_only": True}
        is_model = hasattr(cls, "config_class") or hasattr(cls, "load_config") and hasattr(cls, "dtype")
        try:
            if "Tokenizer" in class_name:
                obj = cls.from_pretrained(sub, use_fast=True, **kwargs)
            elif "Scheduler" in class_name:
                obj = cls.from_pretrained(sub, **kwargs)
            else:
                obj = cls.from_pretrained(
                    sub, torch_dtype=dtype, use_safetensors=not allow_pickle or None, **kwargs
                )
        except BadCheckpointError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise BadCheckpointError(f"could not load {name!r} from {sub}: {exc}") from exc
        if is_model and isinstance(obj, torch.nn.Module):
            obj = obj.to(device).eval().requires_grad_(False)
        components[name] = obj
    return components
