"""`attnseg generate`: images from a prompt with CFG or S-CFG, and with --masks each image's segmentation."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from attnseg.errors import BadConfigError
from attnseg.guidance import GUIDANCES, READ_LAST
from attnseg.method.config import METHOD_PRESETS


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `attnseg generate` on the top-level subparsers."""
    from attnseg.cli import setting_pair  # the KEY=VALUE parsing `segment` uses

    p = subparsers.add_parser(
        "generate", help="generate images (CFG or semantic-aware CFG), optionally with their masks"
    )
    p.add_argument("prompt", help='what to draw, e.g. "a red star on the grass"')
    p.add_argument(
        "--classes",
        default=None,
        help="comma-separated words of the prompt to mask (default: the prompt's nouns the model knows)",
    )
    p.add_argument("--guidance", default="s-cfg", choices=GUIDANCES, help="plain CFG or S-CFG (default)")
    p.add_argument(
        "--mask-method",
        default="goca",
        choices=sorted(METHOD_PRESETS),
        help="where S-CFG's regions and the masks come from",
    )
    p.add_argument("--cfg", type=float, default=7.5, help="guidance scale (> 1 for s-cfg)")
    p.add_argument("--steps", type=int, default=25, help="denoising steps")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    p.add_argument("--n", type=int, default=4, help="how many images")
    p.add_argument("--batch-size", type=int, default=4, help="images per pipeline call")
    p.add_argument(
        "--read-last",
        type=float,
        default=READ_LAST,
        help=f"fraction of the last steps whose maps the masks average (default {READ_LAST})",
    )
    p.add_argument("--masks", action="store_true", help="also write labels, overlay, scores and result.json")
    p.add_argument(
        "--model", default=None, help="embedded name, diffusers folder or cached hub id (default: embedded)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present)")
    p.add_argument("--dtype", default=None, help="float32 | float16 | bfloat16")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=setting_pair,
        default=[],
        metavar="KEY=VALUE",
        help="override a setting of the mask method (repeatable)",
    )
    p.add_argument("--out", default="attnseg-generate", help="output folder (new, or one attnseg wrote)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an --out that holds files attnseg did not write (they are kept)",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_generate)
    return p


def cmd_generate(args: argparse.Namespace) -> int:
    """Check every input, load, generate, then write each image's folder."""
    from tqdm import tqdm

    from attnseg.cli import parse_settings
    from attnseg.guidance.generate import GenerateOptions, ImageGenerator
    from attnseg.guidance.prompting import check_prompt
    from attnseg.io import check_output_folder, output_folder, write_json
    from attnseg.method.config import method_config

    overrides = parse_settings(args.overrides)
    options = GenerateOptions(
        guidance=args.guidance,
        cfg=args.cfg,
        steps=args.steps,
        mask_method=args.mask_method,
        masks=args.masks,
        read_last=args.read_last,
        batch_size=args.batch_size,
    )
    method_config(args.mask_method, **overrides)
    if args.n < 1:
        raise BadConfigError(f"--n must be >= 1, got {args.n}")
    out = check_output_folder(Path(args.out), args.overwrite)  # refused before any work, not after it
    check_prompt(args.prompt, tokenizer=None)  # an empty prompt fails before the model loads
    generator = ImageGenerator.from_pretrained(args.model, args.device, args.dtype)
    prompt, specs = generator.check(args.prompt, args.classes)  # a bad prompt or class fails before writing
    classes = ["|".join(s.synonyms) for s in specs]
    with tqdm(total=args.n, desc="generate", unit="img", disable=args.quiet) as bar:
        results = generator.generate(
            prompt, classes, options, seed=args.seed, n=args.n, progress=bar.update, **overrides
        )
    # One staging folder: every image lands at once or none does (io.output_folder, with its manifest).
    with output_folder(out, args.overwrite) as stage:
        for index, result in enumerate(results):
            name = f"{index:03d}_seed{result.seed}"
            (stage / name).mkdir()
            if result.segmentation is not None:
                result.segmentation.write_files(stage / name)
            else:
                write_json(stage / name / "result.json", result.meta)
            result.image.save(stage / name / "image.png", format="PNG")
    if not args.quiet:
        for index, result in enumerate(results):
            print(f"{out / f'{index:03d}_seed{result.seed}'}{os.sep}image.png  (seed {result.seed})")
    return 0
