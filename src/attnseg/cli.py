"""The `attnseg` command: thin argument parsing over the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from attnseg import __version__
from attnseg.errors import AttnsegError, BadConfigError
from attnseg.method.config import METHOD_PRESETS
from attnseg.prompts import DEFAULT_TEMPLATE, check_template


class HelpWithDefaults(argparse.HelpFormatter):
    """Help that ends each option with its default, unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default is None and action.nargs != 0 and "default" not in text:
            return f"{text} (default: none)"
        if (
            not action.option_strings
            or "default" in text
            or action.default is None
            or action.default is False  # a flag (0 is a default worth showing, so no `in`)
            or action.default == []
            or action.default is argparse.SUPPRESS
        ):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block) and defaults in every option's help."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpWithDefaults)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


MAX_SEED = 2**63 - 1  # torch's generators take a signed 64-bit seed


def seed_int(text: str) -> int:
    """An argparse type: a seed, a whole number in [0, 2^63)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed lies in 0–{MAX_SEED}, got {value}")
    return value


def setting_pair(text: str) -> tuple[str, object]:
    """One `KEY=VALUE`, the value read as JSON where it parses (numbers, true/false, lists)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE, got {text!r} (e.g. --set head_aggregation=mean)"
        )
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def method_setting(text: str) -> tuple[str, object]:
    """One `--set KEY=VALUE`, the value read by the setting's type and checked (method.config.parse_setting)."""
    from attnseg.method.config import parse_setting
    from attnseg.method.presence import parse_presence_setting

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE, got {text!r} (e.g. --set head_aggregation=mean)"
        )
    parse = parse_presence_setting if key.strip().startswith("presence_") else parse_setting
    try:
        return key.strip(), parse(key.strip(), value)
    except BadConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def template_text(text: str) -> str:
    """An argparse type: a prompt template with exactly one {} where the class names go."""
    try:
        return check_template(text)
    except AttnsegError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    parser.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present, else cpu)"
    )
    parser.add_argument(
        "--dtype", default=None, help="float32 | float16 | bfloat16 (default: fp32 on CPU, fp16 on CUDA)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=method_setting,
        default=[],
        metavar="KEY=VALUE",
        help="override a method setting, e.g. blur=off or refine_steps=3 (repeatable; default: the method's and the model's own; see README)",
    )
    parser.add_argument(
        "--template",
        default=None,
        type=template_text,
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
    parser.add_argument(
        "--presence",
        default=None,
        choices=("on", "off"),
        help="on: first decide which named classes are in the image, absent ones get no pixels; off: every "
        "named class takes part (the paper's setting, for oracle class lists). Default: on for segment and "
        "for eval --protocol open, off for eval --protocol oracle-tags",
    )


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The loading options and the segment-time ones: threshold, background words, batch size."""
    add_loading_options(parser)
    parser.add_argument(
        "--tau", type=float, default=None, help="background threshold in [0, 1] (default: the method's, 0.5)"
    )
    parser.add_argument(
        "--background",
        default="",
        help="comma-separated background words named in the prompt (default: none)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=1, help="images per denoiser forward")


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
        presence=args.presence or "on",
        **parse_settings(args.overrides, args.tau),
    )


def cmd_segment(args: argparse.Namespace) -> int:
    """`attnseg segment`: every check that needs no model first, then load, segment and write."""
    from tqdm import tqdm

    from attnseg.io import check_memory, check_output_folder, check_writable, image_notes, load_image
    from attnseg.prompts import parse_classes
    from attnseg.segmentation import is_segmentation_folder
    from attnseg.segmentor import default_output_name, parse_device

    specs = parse_classes(args.classes)  # a bad class list fails before anything loads
    images = [load_image(path, args.max_pixels) for path in args.images]  # so does a bad image
    check_memory([(path, im.width, im.height) for path, im in zip(args.images, images)], len(specs))
    out = check_writable(Path(args.out))
    names = [default_output_name(p, i) for i, p in enumerate(args.images)]
    if len(set(names)) < len(names):
        names = [f"{i:03d}_{n}" for i, n in enumerate(names)]
    for name in names:  # refuse a folder of the user's before any work, not after it
        check_output_folder(out / name, args.overwrite, is_segmentation_folder)
    parse_device(args.device)
    notes = {str(path): image_notes(path) for path in args.images}
    segmentor = segmentor_from_args(args)
    segmentor.plan(args.classes)  # words the model cannot read fail before any work
    model_note = segmentor.model_note(images)
    if not args.quiet:
        for path, lines in notes.items():
            for line in lines:
                print(f"note: {path}: {line}", file=sys.stderr)
        if model_note:
            print(f"note: {model_note}", file=sys.stderr)
    with tqdm(total=len(images), desc="segment", unit="img", disable=args.quiet) as bar:
        results = segmentor.segment(images, args.classes, seed=args.seed, progress=bar.update)
    for name, path, result in zip(names, args.images, results):
        result.meta["image"] = str(path)
        if notes[str(path)]:
            result.meta["image_notes"] = notes[str(path)]
        folder = result.save(out / name, overwrite=args.overwrite)
        if not args.quiet:
            print(f"{path} -> {folder}  {_found_line(result)}")
    return 0


def _found_line(result) -> str:
    """Which named classes the presence step found and judged absent (or, without it, which got pixels)."""
    presence = result.meta.get("presence", {})
    if "found" in presence:
        return f"(found: {', '.join(presence['found'])}; absent: {', '.join(presence['absent']) or 'none'})"
    labelled = sorted({result.classes[k - 1] for k in result.labels.unique().tolist() if k > 0})
    return f"(labelled: {', '.join(labelled) or 'background only'}; presence off)"


def cmd_models(args: argparse.Namespace) -> int:
    from attnseg.backbones import FAMILIES
    from attnseg.backbones.loading import default_model_name, embedded_models
    from attnseg.prompts import embedded_vocabulary

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
    if names:
        print(
            "  Small models trained on the synthetic world (docs/WORLD.md): 64×64 scenes of 13 classes. They know\n"
            "  only these words (for photos, pass --model with a Stable Diffusion folder):"
        )
        for n in names:
            words = embedded_vocabulary(n)
            print(f"  {n}: {len(words)} words: {', '.join(words)}")
    print(
        "Also: a local diffusers folder, a hub id already in the HF cache (offline), or an SD1/SDXL .safetensors file."
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with the world and eval commands when those subpackages are present."""
    parser = Parser(
        prog="attnseg",
        description="Training-free open-vocabulary segmentation from text-to-image diffusion models. "
        "The default model is a small one trained on synthetic scenes; pass --model for real photos.",
    )
    parser.add_argument("--version", action="version", version=f"attnseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    seg = sub.add_parser(
        "segment",
        help="segment images into named classes",
        description="Segment images into the classes you name. Per image, OUT/<name>/ gets labels.png, "
        "overlay.png, scores.npz and result.json. A folder attnseg did not write is never replaced.",
    )
    seg.add_argument("images", nargs="+", help="image files (PNG, JPEG, WebP, TIFF, …)")
    seg.add_argument(
        "--classes", required=True, help="comma-separated class names; synonyms with | (person|man|woman)"
    )
    seg.add_argument("--out", default="attnseg-out", help="output folder (one subfolder per image)")
    seg.add_argument(
        "--overwrite",
        action="store_true",
        help="write into per-image folders attnseg did not write (only its four files are replaced there)",
    )
    seg.add_argument("--seed", type=seed_int, default=0, help="seed of the noise added to the image")
    seg.add_argument(
        "--max-pixels", type=positive_int, default=4096 * 4096, help="refuse images with more pixels"
    )
    seg.add_argument("--quiet", action="store_true", help="print nothing but errors")
    add_model_options(seg)
    seg.set_defaults(func=cmd_segment)

    models = sub.add_parser(
        "models",
        help="list the model families and embedded models",
        description="The model families attnseg recognises (and how), and the embedded models with the "
        "words each one knows.",
    )
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


def quiet_libraries() -> None:
    """Keep the output to what the user asked for: no weight-loading bars or library notices."""
    import logging
    import warnings

    for name in ("diffusers", "transformers", "accelerate", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    except ImportError:
        pass
    warnings.filterwarnings("ignore", module="diffusers")
    warnings.filterwarnings("ignore", module="transformers")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_libraries()
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
