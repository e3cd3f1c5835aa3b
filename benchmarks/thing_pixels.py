"""Where a world model's segmentation puts the pixels of things: the right thing, another thing, or stuff.

    attnseg world render --split test --n 200 --seed 0 --out world-data/tune
    python benchmarks/thing_pixels.py [--model world-m] --root world-data/tune --n 100 [--timestep T] [--set blur=false]

Prints one JSON line: mIoU, the mean IoU of stuff and of things (stuff_iou, things_iou), the shares of thing
pixels labelled with the right thing, another thing present, stuff or void, and the share of stuff
pixels taken by things.
A share of "right thing" near 1 / (things in the scene) means the maps find things but not which is which.
Scored by `attnseg eval` (oracle class prompts, no background class; n scenes spread over the split), each
model's own settings unless overridden.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from attnseg.cli import parse_settings, setting_pair
from attnseg.world.scaling import evaluate
from attnseg.world.tune import model_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default=None,
        help="a shipped world model's name or a model folder (default: the embedded default)",
    )
    parser.add_argument(
        "--root", default="world-data/tune", help="a world split (not the val split you report)"
    )
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--method", default="goca")
    parser.add_argument("--timestep", type=int, default=None)
    parser.add_argument(
        "--set", dest="overrides", action="append", type=setting_pair, default=[], metavar="KEY=VALUE"
    )
    args = parser.parse_args()
    root = Path(args.root)
    overrides = parse_settings(args.overrides)
    r = evaluate(model_folder(args.model), args.method, root, args.n, None, args.timestep, overrides)
    line = (
        {
            "model": args.model,
            "method": args.method,
            "timestep": r["timestep"],
            "settings": overrides,
            "miou": round(r["miou"], 1),
        }
        | {"stuff_iou": round(r["kind_iou"]["stuff"], 1), "things_iou": round(r["kind_iou"]["thing"], 1)}
        | {k: round(v, 3) for k, v in r["thing_pixels"].items()}
    )
    print(json.dumps(line))


if __name__ == "__main__":
    main()
