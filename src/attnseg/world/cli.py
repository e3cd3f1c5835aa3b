"""The `attnseg world ...` subcommands: render, train, export, scaling, tune."""

from __future__ import annotations

import argparse
import importlib
import sys

# name, help: each is the module attnseg.world.<name>, with add_<name>_arguments and run_<name>.
WORLD_COMMANDS = (
    ("render", "render scenes with exact masks and captions"),
    ("train", "train (or resume) one model size and export it"),
    ("export", "export the last checkpoint of a size into the package's models"),
    ("scaling", "evaluate every shipped size with vanilla and goca on the val split"),
    ("tune", "choose a model's timestep, propagation steps and blur on a held-out split"),
)


def add_world_commands(subparsers) -> argparse.ArgumentParser:
    """Register `world render|train|export|scaling|tune` on an argparse subparsers object; return the world parser."""
    world = subparsers.add_parser("world", help="the synthetic scene world and its embedded models")
    sub = world.add_subparsers(dest="world_command", required=True)
    for name, help_text in WORLD_COMMANDS:
        module = importlib.import_module(f"attnseg.world.{name}")
        p = sub.add_parser(name, help=help_text)
        getattr(module, f"add_{name}_arguments")(p)
        p.set_defaults(func=getattr(module, f"run_{name}"))
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
