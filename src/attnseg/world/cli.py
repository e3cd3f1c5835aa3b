"""The `attnseg world ...` subcommands: render, train, export, scaling, tune."""

from __future__ import annotations

import argparse
import sys


def add_world_commands(subparsers) -> argparse.ArgumentParser:
    """Register `world render|train|export|scaling|tune` on an argparse subparsers object; return the world parser."""
    from attnseg.world import export, render, train

    world = subparsers.add_parser("world", help="the synthetic scene world and its embedded models")
    sub = world.add_subparsers(dest="world_command", required=True)

    p = sub.add_parser("render", help="render scenes with exact masks and captions")
    render.add_render_arguments(p)
    p.set_defaults(func=render.run_render)

    p = sub.add_parser("train", help="train (or resume) one model size and export it")
    train.add_train_arguments(p)
    p.set_defaults(func=train.run_train)

    p = sub.add_parser("export", help="export the last checkpoint of a size into the package's models")
    export.add_export_arguments(p)
    p.set_defaults(func=export.run_export)

    p = sub.add_parser("scaling", help="evaluate every shipped size with vanilla and goca on the val split")
    from attnseg.world import scaling  # imports the Segmentor only when the study runs

    scaling.add_scaling_arguments(p)
    p.set_defaults(func=scaling.run_scaling)

    p = sub.add_parser("tune", help="choose a model's timestep and propagation steps on a held-out split")
    from attnseg.world import tune

    tune.add_tune_arguments(p)
    p.set_defaults(func=tune.run_tune)
    return world


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: `python -m attnseg.world.cli render ...` works before the main CLI wires it in."""
    from attnseg.errors import AttnsegError

    parser = argparse.ArgumentParser(prog="attnseg")
    subs = parser.add_subparsers(dest="command", required=True)
    add_world_commands(subs)
    args = parser.parse_args(["world", *(argv if argv is not None else sys.argv[1:])])
    try:
        return int(args.func(args) or 0)
    except AttnsegError as e:
        print(f"error: {e}")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
