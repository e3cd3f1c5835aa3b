"""The `attnseg` command: thin argument parsing over the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from attnseg.errors import AttnsegError
from attnseg.method.config import METHOD_PRESETS
from attnseg.prompts import DEFAULT_TEMPLATE


def setting_pair(text: str) -> tuple[str, object]:
    """One `--set KEY=VALUE`, the value read as JSON where it parses (numbers, true/false, lists)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE, got {text!r} (e.g. --set head_aggregation=mean)"
        )
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def parse_settings(pairs: list[tuple[str, object]], tau: float | None = None) -> dict:
    """Method settings from the `--set` pairs and --tau, as Segmentor.from_pretrained takes them."""
    out = dict(pairs or [])
    if tau is not None:
        out["tau"] = tau
    if isinstance(out.get("resolution_weights"), list):
        out["resolution_weights"] = tuple(out["resolution_weights"])
    return out


def add_loading_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """How a model is loaded and which method runs on it: the options `segment` and `eval` share."""
    parser.add_argument(
        "--model",
        default=None,
        help="embedded name, diffusers folder, cached hub id, or .safetensors (default: embedded)",
    )
    parser.add_argument("--method", default="goca", choices=sorted(METHOD_PRESETS), help="method preset")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present)")
    parser.add_argument(
        "--dtype", default=None, help="float32 | float16 | bfloat16 (default: fp32 on CPU, fp16 on CUDA)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=setting_pair,
        default=[],
        metavar="KEY=VALUE",
        help="override a method setting (repeatable)",
    )
    parser.add_argument(
        "--template",
        default=None,
        help=f"prompt template with {{}} for the class list (default: the model's, else {DEFAULT_TEMPLATE!r})",
    )
    parser.add_argument(
        "--allow-pickle", action="store_true", help="allow pickled (.ckpt/.bin) weights you trust"
    )
    parser.add_argument(
        "--config",
        dest="config_folder",
        default=None,
        help="diffusers folder with configs for a single-file checkpoint",
    )


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The loading options and the segment-time ones: threshold, background words, batch size."""
    add_loading_options(parser)
    parser.add_argument("--tau", type=float, default=None, help="background threshold in [0, 1]")
    parser.add_argument(
        "--background", default="", help="comma-separated background words named in the prompt"
    )
    parser.add_argument("--batch-size", type=int, default=1, help="images per denoiser forward")


def segmentor_from_args(args: argparse.Namespace):
    """Build a Segmentor from the shared model options."""
    from attnseg.segmentor import Segmentor

    background = [w for w in args.background.split(",") if w.strip()] if args.background else None
    return Segmentor.from_pretrained(
        args.model,
        args.method,
        args.device,
        args.dtype,
        template=args.template,
        background=background,
        batch_size=args.batch_size,
        allow_pickle=args.allow_pickle,
        config_folder=args.config_folder,
        max_pixels=getattr(args, "max_pixels", None) or 4096 * 4096,
        **parse_settings(args.overrides, args.tau),
    )


def cmd_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from attnseg.io import load_image
    from attnseg.prompts import parse_classes
    from attnseg.segmentor import default_output_name

    parse_classes(args.classes)  # a bad class list fails before anything loads
    images = [load_image(path, args.max_pixels) for path in args.images]  # so does a bad image
    segmentor = segmentor_from_args(args)
    out = Path(args.out)
    names = [default_output_name(p, i) for i, p in enumerate(args.images)]
    if len(set(names)) < len(names):
        names = [f"{i:03d}_{n}" for i, n in enumerate(names)]
    with tqdm(total=len(images), desc="segment", unit="img", disable=args.quiet) as bar:
        results = segmentor.segment(images, args.classes, seed=args.seed, progress=bar.update)
    for name, path, result in zip(names, args.images, results):
        result.meta["image"] = str(path)
        folder = result.save(out / name)
        if not args.quiet:
            present = sorted({result.classes[k - 1] for k in result.labels.unique().tolist() if k > 0})
            print(f"{path} -> {folder}  (found: {', '.join(present) or 'background only'})")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from attnseg.backbones import FAMILIES
    from attnseg.backbones.loading import default_model_name, embedded_models

    print("Model families (recognised by model_index.json's _class_name):")
    for cls in FAMILIES:
        preset = cls.default_preset
        noise = f"sigma {preset.sigma}" if preset.sigma is not None else f"t {preset.timestep}"
        print(f"  {cls.family:13s} {cls.description}")
        print(
            f"  {'':13s} pipelines: {', '.join(cls.pipeline_classes)}; native {preset.native_size}px, {noise}"
        )
    default = default_model_name()
    names = embedded_models()
    print(
        "Embedded models:", ", ".join(f"{n}{' (default)' if n == default else ''}" for n in names) or "none"
    )
    print(
        "Also: a local diffusers folder, a hub id already in the HF cache (offline), or an SD1/SDXL .safetensors file."
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with the world and eval commands when those subpackages are present."""
    parser = argparse.ArgumentParser(
        prog="attnseg", description="Training-free segmentation from diffusion models."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment images into named classes")
    seg.add_argument("images", nargs="+", help="image files")
    seg.add_argument(
        "--classes", required=True, help="comma-separated class names; synonyms with | (person|man|woman)"
    )
    seg.add_argument("--out", default="attnseg-out", help="output folder (one subfolder per image)")
    seg.add_argument("--seed", type=int, default=0)
    seg.add_argument(
        "--max-pixels", type=int, default=4096 * 4096, help="refuse larger images (raise to allow)"
    )
    seg.add_argument("--quiet", action="store_true")
    add_model_options(seg)
    seg.set_defaults(func=cmd_segment)

    models = sub.add_parser("models", help="list the model families and embedded models")
    models.set_defaults(func=cmd_models)

    optional = (
        ("attnseg.demo.scenes", "add_demo_command"),
        ("attnseg.demo.web", "add_serve_command"),
        ("attnseg.world.cli", "add_world_commands"),
        ("attnseg.eval.cli", "add_eval_commands"),
        ("attnseg.guidance.cli", "add_parser"),
    )
    for module, adder in optional:
        try:  # optional subpackages: a build without them still segments
            getattr(__import__(module, fromlist=[adder]), adder)(sub)
        except ImportError:
            continue
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AttnsegError as exc:
        print(f"attnseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("attnseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
