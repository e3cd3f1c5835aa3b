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


def run_train(args: argparse.Namespace) -> int:
    """Run `world train` from parsed arguments (VAE, then the denoiser), then export the model.

    It lives here, not in train.py, because it uses both train and export: export builds on train, and
    train knows nothing of export.
    """
    import json

    from attnseg.world.export import export_from_trainer
    from attnseg.world.train import config_from_args, train, train_vae

    cfg = config_from_args(args)
    if args.vae_only:
        print(f"VAE in {train_vae(cfg)}")
        return 0
    tr = train(cfg)
    print(json.dumps(tr.history[-1]))
    if not args.no_export:
        folder = export_from_trainer(tr, args.export_to)
        print(f"exported {folder}")
    return 0


RUNNERS = {"train": run_train}  # commands whose runner is not the module's own run_<name>


def add_world_commands(subparsers) -> argparse.ArgumentParser:
    """Register `world render|train|export|scaling|tune` on an argparse subparsers object; return the world parser."""
    world = subparsers.add_parser("world", help="the synthetic scene world and its embedded models")
    sub = world.add_subparsers(dest="world_command", required=True)
    for name, help_text in WORLD_COMMANDS:
        module = importlib.import_module(f"attnseg.world.{name}")
        p = sub.add_parser(name, help=help_text)
        getattr(module, f"add_{name}_arguments")(p)
        p.set_defaults(func=RUNNERS.get(name) or getattr(module, f"run_{name}"))
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
