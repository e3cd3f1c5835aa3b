"""Export of a trained world model as a diffusers folder (safetensors) laid out like SD1.5's."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from attnseg.errors import BadCheckpointError
from attnseg.io import atomic_write_text, output_folder
from attnseg.world import model as wm
from attnseg.world.train import TrainConfig, model_shape

MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "DDPMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def write_folder(
    folder: Path, unet, text_encoder, tokenizer, vae_dir: Path, info: dict, overwrite: bool = False
) -> Path:
    """Write unet/, text_encoder/, tokenizer/, vae/, scheduler/, model_index.json and world.json atomically."""
    import diffusers
    from diffusers import AutoencoderKL

    folder = Path(folder)
    with output_folder(folder, overwrite, recognise=is_model_folder) as stage:
        # UNet and VAE weights are stored in float16 to keep all shipped sizes within 40 MB; diffusers loads
        # them as float32 unless asked otherwise. The text encoder stays float32 (transformers would keep
        # float16).
        copy.deepcopy(unet).half().save_pretrained(stage / "unet", safe_serialization=True)
        text_encoder.float().save_pretrained(stage / "text_encoder", safe_serialization=True)
        tokenizer.save_pretrained(stage / "tokenizer")
        AutoencoderKL.from_pretrained(vae_dir).half().save_pretrained(stage / "vae", safe_serialization=True)
        wm.build_scheduler().save_pretrained(stage / "scheduler")
        index = {"_diffusers_version": diffusers.__version__, **MODEL_INDEX}
        (stage / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        (stage / "world.json").write_text(json.dumps(info, indent=1) + "\n")
    return folder


def is_model_folder(folder: Path) -> bool:
    """A model folder `world export` wrote (before output manifests): model_index.json and world.json."""
    return (folder / "model_index.json").is_file() and (folder / "world.json").is_file()


def export_from_trainer(trainer, models_dir: str | Path | None = None, name: str | None = None) -> Path:
    """Export a Trainer's EMA weights to <models_dir>/world-<size>."""
    models_dir = Path(models_dir) if models_dir is not None else wm.models_dir()
    name = name or f"world-{trainer.cfg.size}"
    trainer.swap_ema()
    try:
        info = _world_info(name, trainer.cfg, trainer.step, trainer.history)
        info.update(_recommended(models_dir / name))
        return write_folder(
            models_dir / name, trainer.unet, trainer.text, trainer.tokenizer, trainer.vae_dir, info
        )
    finally:
        trainer.swap_ema()


def _world_info(name: str, cfg: TrainConfig, step: int, history: list[dict]) -> dict:
    """The world.json of an exported model: its shape, training settings and history, and the data it saw."""
    render = Path(cfg.data) / "render.json"  # the training folder's world at export: split, seed, patterns
    return {
        "name": name,
        "size": wm.size_dict(model_shape(cfg)),
        "steps": step,
        "train_config": dict(cfg.__dict__),
        "train_data": json.loads(render.read_text()) if render.is_file() else None,
        "history": history,
        "heldout_loss": history[-1].get("heldout_loss") if history else None,
        "image_size": 64,
        "classes": "classes.json of `attnseg world render`",
    }


def _recommended(folder: Path) -> dict:
    """Keep measured settings (timestep, tau) an earlier study wrote into world.json."""
    f = folder / "world.json"
    if not f.is_file():
        return {}
    old = json.loads(f.read_text())
    return {k: old[k] for k in ("recommended", "measured") if k in old}


def export_checkpoint(
    size: str, out: str | Path = "world-train", models_dir: str | Path | None = None
) -> Path:
    """Export the last checkpoint of a size from the training folder without the training data."""
    from safetensors.torch import load_file

    ckpt = Path(out) / size / "ckpt"
    vae_dir = wm.vae_folder(out, wm.get_size(size).latent)
    if not (ckpt / "ema.safetensors").is_file() or not (vae_dir / "config.json").is_file():
        raise BadCheckpointError(f"no finished checkpoint in {ckpt} (or no VAE in {vae_dir}); train it first")
    state = json.loads((ckpt / "state.json").read_text())
    cfg = TrainConfig(**state["config"])
    sz = model_shape(cfg)
    tok = wm.build_tokenizer(cfg.max_length)
    unet = wm.build_unet(sz)
    text = wm.build_text_encoder(sz, len(tok), max_length=cfg.max_length)
    ema = load_file(str(ckpt / "ema.safetensors"))
    with torch.no_grad():
        for k, v in unet.named_parameters():
            v.copy_(ema[f"unet.{k}"])
        for k, v in text.named_parameters():
            v.copy_(ema[f"text.{k}"])
    models_dir = Path(models_dir) if models_dir is not None else wm.models_dir()
    name = f"world-{size}"
    info = _world_info(name, cfg, state["step"], state["history"])
    info.update(_recommended(models_dir / name))
    return write_folder(models_dir / name, unet, text, tok, vae_dir, info)


def set_default(name: str, models_dir: str | Path | None = None) -> Path:
    """Write the DEFAULT file naming the default embedded model."""
    models_dir = Path(models_dir) if models_dir is not None else wm.models_dir()
    if not (models_dir / name / "model_index.json").is_file():
        raise BadCheckpointError(
            f"{models_dir / name} is not an exported model; export it before making it the default"
        )
    f = models_dir / "DEFAULT"
    atomic_write_text(f, name + "\n")
    return f


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options of `world export` to a parser."""
    p.add_argument("--size", default="s", choices=sorted(wm.SIZES), help="which size's checkpoint to export")
    p.add_argument("--out", default="world-train", help="the training folder of `world train`")
    p.add_argument(
        "--models-dir",
        default=None,
        help="models folder to export into (default: the package's embedded models)",
    )
    p.add_argument("--default", action="store_true", help="also make it the default model")


def run_export(args: argparse.Namespace) -> int:
    """Export the last checkpoint of a size (and optionally make it the default) from parsed arguments."""
    folder = export_checkpoint(args.size, args.out, args.models_dir)
    if args.default:
        set_default(folder.name, args.models_dir)
    print(f"exported {folder}")
    return 0
