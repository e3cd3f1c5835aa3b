"""The `attnseg eval` and `attnseg report` commands: thin argument parsing over the runner and the report."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from attnseg.cli import add_loading_options, seed_int, setting_pair
from attnseg.errors import AttnsegError
from attnseg.eval.datasets import DATASETS
from attnseg.eval.protocols import (
    DEFAULT_CLASSES_PER_PROMPT,
    DEFAULT_TAU_GRID,
    NO_BACKGROUND_RULES,
    PROTOCOLS,
    TAU_MODES,
    parse_grid,
    run_paper,
)


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `attnseg eval`."""
    p.add_argument(
        "--dataset", required=True, choices=list(DATASETS), help="which benchmark (its reader and class list)"
    )
    p.add_argument("--root", required=True, help="the data set folder in its official download layout")
    p.add_argument("--out", required=True, help="run folder; run the same command again to resume it")
    p.add_argument("--split", default=None, help="split to score (default: the benchmark's val split)")
    g = p.add_argument_group("model")
    add_loading_options(g)
    g.add_argument(
        "--timestep",
        type=int,
        default=None,
        help="read the maps at this denoising timestep (default: the model's own, from its preset or attnseg.json)",
    )
    g.add_argument(
        "--segmentor",
        default=None,
        metavar="MODULE:CALLABLE",
        help="use the segmentor this factory returns instead (e.g. attnseg.eval.fake:make)",
    )
    g.add_argument(
        "--segmentor-arg",
        dest="segmentor_args",
        action="append",
        type=setting_pair,
        default=[],
        metavar="KEY=VALUE",
        help="keyword argument for --segmentor (repeatable)",
    )
    g = p.add_argument_group("protocol")
    g.add_argument(
        "--protocol",
        default="oracle-tags",
        choices=(*PROTOCOLS, "paper"),
        help="oracle-tags: prompt with the GT's classes; open: prompt with every class; paper: the reference "
        "code's protocol (captions, offset rule, τ swept on the scored images: an oracle; needs --captions)",
    )
    g.add_argument(
        "--captions",
        default=None,
        metavar="FILE",
        help="--protocol paper: a JSON file of one caption per image ({image id: caption}, or with entities)",
    )
    g.add_argument(
        "--tau", type=float, default=None, help="fixed background threshold τ (default: the segmentor's own)"
    )
    g.add_argument(
        "--tau-search",
        default="fixed",
        choices=TAU_MODES,
        help="fixed τ; heldout: sweep τ on a split that is not scored; test-oracle: sweep on the scored split (an oracle, labelled so)",
    )
    g.add_argument(
        "--tau-split",
        default=None,
        help="held-out split for --tau-search heldout (default: the benchmark's train split)",
    )
    g.add_argument(
        "--tau-root",
        default=None,
        help="data set folder of the held-out split (default: --root; for the world: another render)",
    )
    g.add_argument(
        "--tau-images",
        type=int,
        default=200,
        help="held-out images used to choose τ, spread over the split (default 200)",
    )
    g.add_argument(
        "--tau-grid",
        type=parse_grid,
        default=DEFAULT_TAU_GRID,
        help="τ values swept: 'a,b,c' or 'start:stop:step' (default 0.05:0.95:0.05)",
    )
    g.add_argument(
        "--no-background",
        default="argmax",
        choices=NO_BACKGROUND_RULES,
        help="data sets without a background class: argmax labels every pixel (default); tau leaves pixels below τ void",
    )
    g.add_argument(
        "--classes-per-prompt",
        type=int,
        default=DEFAULT_CLASSES_PER_PROMPT,
        help="at most N classes per segment call (default 0: all at once; attnseg.Segmentor splits long lists "
        "over prompts by its token budget itself)",
    )
    g.add_argument(
        "--no-synonyms",
        dest="synonyms",
        action="store_false",
        help="hand the segmentor display names only, not 'name|synonym|...'",
    )
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=seed_int, default=0, help="the segmentor's noise seed")
    g.add_argument(
        "--limit", type=int, default=None, help="score only N images, spread evenly over the split"
    )
    g.add_argument(
        "--batch-size", type=int, default=1, help="images per forward (images sharing a class list)"
    )
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def config_from_args(args: argparse.Namespace, argv: Sequence[str] | None = None) -> Any:
    """The EvalConfig of parsed `attnseg eval` arguments."""
    from attnseg.eval.runner import EvalConfig

    # Every option's dest is the EvalConfig field of the same name; lists become tuples so the config hashes.
    given = vars(args)
    values = {f.name: given[f.name] for f in fields(EvalConfig) if f.name in given}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    values["command"] = tuple(argv if argv is not None else sys.argv)  # args.command is the subcommand's name
    return EvalConfig(**values)


def run_eval_command(args: argparse.Namespace) -> int:
    """`attnseg eval`: evaluate (or resume), then print the headline numbers."""
    from attnseg.eval.runner import run_eval
    from attnseg.io import check_output_folder

    # A run folder is resumed where it holds a run (config.json); a folder of anything else is refused.
    check_output_folder(args.out, recognise=lambda f: (f / "config.json").is_file(), offer_overwrite=False)
    if args.protocol == "paper":
        m = run_paper(config_from_args(args, getattr(args, "argv", None)), args.captions)
        print(
            f"{m['title']} {m['split']}: mIoU {100 * m['mIoU']:.2f}  pixel acc {100 * m['pixel_accuracy']:.2f}  "
            f"[paper protocol (oracle), best τ={m['tau']:g} of the sweep; {m['counts']['images']} images]"
        )
        print(f"wrote {args.out}/metrics.json")
        return 0
    m = run_eval(config_from_args(args, getattr(args, "argv", None)))
    if m["counts"]["processes"] > 1 and _rank() != 0:
        return 0
    p = m["protocol"]
    tau = "" if m["tau"] is None else f", τ={m['tau']:g} ({p['tau_mode']})"
    miou = "n/a" if m["mIoU"] is None else f"{100 * m['mIoU']:.2f}"
    acc = "n/a" if m["pixel_accuracy"] is None else f"{100 * m['pixel_accuracy']:.2f}"
    print(
        f"{m['title']} {m['split']}: mIoU {miou}  pixel acc {acc}  [{p['name']}{tau}; {m['counts']['images']} images]"
    )
    print(f"wrote {args.out}/metrics.json")
    return 0


def _rank() -> int:
    """This process's rank under torchrun / accelerate (0 alone)."""
    import os

    return int(os.environ.get("RANK", "0"))


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `attnseg report`."""
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished eval run folders")
    p.add_argument("--out", default=".", help="folder for report.md and report.png (default: here)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a report.md or report.png that attnseg did not write",
    )


def run_report_command(args: argparse.Namespace) -> int:
    """`attnseg report`: print the Markdown table and write it with per-class bars."""
    from attnseg.eval.report import write_report
    from attnseg.io import check_output_files

    check_output_files(args.out, ["report.md", "report.png"], args.overwrite)
    md, md_path, png_path = write_report(args.runs, args.out, args.overwrite)
    print(md, end="")
    print(f"\nwrote {md_path} and {png_path}")
    return 0


def add_eval_commands(subparsers: Any) -> None:
    """Register `eval` and `report` on an argparse subparsers object; each sets args.func(args) -> int."""
    p = subparsers.add_parser(
        "eval",
        help="score a segmentor on a benchmark (resumable; shards under torchrun / accelerate launch)",
        description="Score a segmentor on a standard benchmark under a named protocol. The run folder keeps "
        "per-image records: run the same command again to resume after any interruption.",
    )
    add_eval_arguments(p)
    p.set_defaults(func=run_eval_command)
    r = subparsers.add_parser(
        "report", help="a paper-style Markdown table and per-class bars of finished runs"
    )
    add_report_arguments(r)
    r.set_defaults(func=run_report_command)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m attnseg.eval {eval,report} ...` until the main attnseg CLI calls add_eval_commands."""
    parser = argparse.ArgumentParser(prog="python -m attnseg.eval")
    sub = parser.add_subparsers(dest="command", required=True)
    add_eval_commands(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = [parser.prog, *argv]
    try:
        return int(args.func(args))
    except AttnsegError as e:
        print(f"attnseg: error: {e}", file=sys.stderr)
        return 2
