"""Choose a world model's per-model settings (timestep, propagation steps, blur) on a held-out split.

The choice is made on a split that no reported number uses (`--split test`, not val), by goca's mIoU over a
small grid, and shipped as data in the model's `attnseg.json`, which the loader reads
(`backbones.apply_model_defaults`): a per-model timestep and number of propagation steps, as SD's and
PixArt's presets carry their own, and whether to blur the class maps. The paper's blur (σ 1.1 cells) was set
for SD's 64² maps; on the world models' 16² maps the same σ covers four times as much of the image. Each
setting is scored by `attnseg eval` (`run_eval` on the World reader, in a temporary run folder), so the number
chosen here is the number `attnseg eval --dataset world` reports. τ is not searched: the world has no
background, so τ 0 (`WORLD_TAU`) is written with the choice.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

from attnseg.backbones.loading import resolve_model
from attnseg.errors import BadConfigError
from attnseg.io import atomic_path
from attnseg.world.scaling import WORLD_TAU, evaluate, read_rows

TIMESTEPS = (100, 300, 500, 700)
REFINE_STEPS = (0, 2)
BLUR = (True, False)


def model_folder(name: str | None) -> Path:
    """The diffusers folder of a shipped model's name or a path (None: the default): where attnseg.json is written."""
    folder, _ = resolve_model(name)
    if not (folder / "model_index.json").is_file():
        raise BadConfigError(
            f"{folder} is not a diffusers folder (no model_index.json); tune writes attnseg.json into one"
        )
    return folder


def tune(model: Path, root: Path, n: int, timesteps=TIMESTEPS, refine_steps=REFINE_STEPS, blur=BLUR) -> dict:
    """goca's mIoU on the first n scenes of root for every (timestep, refine steps, blur); the best and the grid."""
    meta = root / "render.json"
    split = json.loads(meta.read_text()) if meta.is_file() else {}
    if split.get("split") == "val":
        raise BadConfigError(f"{root} is a val split; tune on a split no reported number uses (--split test)")
    n_scenes = len(read_rows(root, n))
    grid = []
    with tempfile.TemporaryDirectory(prefix="attnseg-tune-") as tmp:
        for t, k, b in itertools.product(timesteps, refine_steps, blur):
            run = Path(tmp) / f"t{t}-k{k}-blur{int(b)}"
            r = evaluate(model, "goca", root, n, run, timestep=t, overrides={"refine_steps": k, "blur": b})
            grid.append({"timestep": t, "refine_steps": k, "blur": b, "miou": round(r["miou"], 2)})
            print(f"t={t} refine_steps={k} blur={b}: mIoU {r['miou']:.1f}", flush=True)
    best = max(grid, key=lambda g: g["miou"])
    return {
        "preset": {"timestep": best["timestep"], "refine_steps": best["refine_steps"]},
        "method": {"blur": best["blur"], "tau": WORLD_TAU},
        "tuned": {
            "by": "goca mIoU (attnseg eval, oracle class prompts, no background class); tau 0: the world has none",
            "split": split,
            "n_scenes": n_scenes,
            "grid": grid,
        },
    }


def write_defaults(model: Path, chosen: dict) -> Path:
    """Merge the chosen preset and method fields into the model's attnseg.json (written atomically)."""
    path = model / "attnseg.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    for section in ("preset", "method"):
        data[section] = {**data.get(section, {}), **chosen.get(section, {})}
    data["tuned"] = chosen["tuned"]
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
    return path


def add_tune_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options of `world tune` to a parser."""
    p.add_argument(
        "--model",
        default=None,
        help="a shipped world model's name or a model folder (default: the embedded default)",
    )
    p.add_argument(
        "--root",
        default="world-data/tune",
        help="a held-out split: attnseg world render --split test --n 200 --out world-data/tune",
    )
    p.add_argument("--n", type=int, default=200, help="scenes to tune on")
    p.add_argument("--dry-run", action="store_true", help="print the choice, do not write attnseg.json")


def run_tune(args: argparse.Namespace) -> int:
    """Run `world tune` from parsed arguments."""
    model = model_folder(args.model)
    chosen = tune(model, Path(args.root), args.n)
    print(json.dumps({**chosen["preset"], **chosen["method"]}))
    if not args.dry_run:
        print(f"wrote {write_defaults(model, chosen)}")
    return 0
