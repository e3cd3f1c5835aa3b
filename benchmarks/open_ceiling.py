"""How far the open pass's maps can go: open-vocabulary ceilings on world scenes, with the ground truth deciding.

    attnseg world render --split test --n 200 --seed 0 --out world-data/tune
    python benchmarks/open_ceiling.py --root world-data/tune --n 80 [--model M] [--method goca]
        [--set rescale=minmax] [--second-pass-sets] [--threads 2]

Prints, τ 0 (the world has no background):
- `open maps, truth decides`: every world class named in one open pass, each pixel labelled by the highest map
  among the scene's own classes (the best any presence decision can do with these maps, one forward);
- `oracle prompt`: a prompt naming the scene's classes only (oracle tags, what a perfect test plus a second
  forward would give).
With `--second-pass-sets` it also runs the shipped presence step (the model's `attnseg.json`) and segments
again naming: the classes it found (F), F without its wrong ones, F with the missed ones added, and the ground
truth's classes: which of the test's two kinds of mistake a second forward pays for.
Method settings (`--set`) apply to every pass. Tune split only: what is chosen from it is never scored on val.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from attnseg import Segmentor
from attnseg.cli import parse_settings, setting_pair
from attnseg.eval.metrics import ConfusionMeter
from attnseg.world.render import CLASSES
from attnseg.world.scaling import read_rows

NAMES = [c.name for c in CLASSES]
IDS = torch.tensor([0] + [c.id for c in CLASSES])


def labelled(seg: Segmentor, image: Image.Image, kept: list[int]) -> torch.Tensor:
    """World ids of a segmentation whose prompt names the classes `kept` (indices into CLASSES)."""
    out = seg.segment(image, [NAMES[k] for k in kept])
    return IDS[torch.tensor([0] + [k + 1 for k in kept])[out.labels]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--method", default="goca")
    ap.add_argument("--root", default="world-data/tune")
    ap.add_argument("--n", type=int, default=80)
    ap.add_argument("--set", dest="overrides", action="append", type=setting_pair, default=[])
    ap.add_argument("--second-pass-sets", action="store_true", help="also the second forward over four sets")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.root)
    settings = parse_settings(args.overrides)
    plain = Segmentor.from_pretrained(
        args.model, args.method, dtype="float32", tau=0.0, presence="off", **settings
    )
    tested = Segmentor.from_pretrained(args.model, args.method, dtype="float32", tau=0.0, **settings)
    schemes = ["open maps, truth decides", "oracle prompt"]
    if args.second_pass_sets:
        schemes += ["second pass: found", "found minus wrong", "found plus missed", "ground truth"]
    meters = {s: ConfusionMeter(int(IDS.max()) + 1) for s in schemes}
    for i, row in enumerate(read_rows(root, args.n)):
        image = Image.open(root / row["image"]).convert("RGB")
        truth = torch.from_numpy(np.asarray(Image.open(root / row["mask"])).astype("int64"))
        present = torch.tensor([c.id in row["present"] for c in CLASSES])
        maps = plain.segment(image, NAMES).scores.clone()
        maps[~present] = -1.0
        meters["open maps, truth decides"].update(IDS[maps.argmax(0) + 1], truth)
        meters["oracle prompt"].update(labelled(plain, image, present.nonzero().flatten().tolist()), truth)
        if args.second_pass_sets:
            found_names = tested.segment(image, NAMES).meta["presence"]["found"]
            found = torch.tensor([n in found_names for n in NAMES])
            sets = {
                "second pass: found": found,
                "found minus wrong": found & present,
                "found plus missed": found | present,
                "ground truth": present,
            }
            for scheme, chosen in sets.items():
                kept = chosen.nonzero().flatten().tolist() or found.nonzero().flatten().tolist()
                meters[scheme].update(labelled(plain, image, kept), truth)
        if (i + 1) % 20 == 0:
            print(f"scene {i + 1}/{args.n}", flush=True)
    line = {"method": args.method, "set": dict(args.overrides), "n": args.n}
    line |= {s: round(100 * m.compute().miou, 2) for s, m in meters.items()}
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
