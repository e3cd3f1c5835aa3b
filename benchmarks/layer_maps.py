"""How good each cross-attention layer's class maps are on their own, against the layer aggregations.

    attnseg world render --split test --n 200 --seed 0 --out world-data/tune
    python benchmarks/layer_maps.py [--model world-l] --root world-data/tune --n 100 [--timestep T] [--set key=value]

Prints a Markdown table: for every layer that reads cross-attention (its name and grid), goca's mIoU with all the
layer weight on that layer, the mean IoU of stuff and of things, and the share of thing pixels given the right
thing; then the same for goca's layer aggregation and for the mean over layers. One denoiser forward per scene
serves every row. Oracle class prompts (the classes present), every pixel its best class (the world has no
background), scored by eval's ConfusionMeter on the World reader; the first n scenes; the model's own settings
unless overridden.
It tells which resolution carries the text's layout: on the world models of a 16² latent the 8² layers do
(docs/WORLD.md, "A 32² latent").
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from attnseg import Segmentor
from attnseg.cli import parse_settings, setting_pair
from attnseg.eval.datasets import get_dataset
from attnseg.eval.metrics import ConfusionMeter
from attnseg.eval.protocols import Protocol
from attnseg.method.labels import upsample
from attnseg.method.pipeline import run_method
from attnseg.prompts import parse_classes
from attnseg.world.scaling import WORLD_TAU, thing_pixels
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
    parser.add_argument("--timestep", type=int, default=None)
    parser.add_argument(
        "--set", dest="overrides", action="append", type=setting_pair, default=[], metavar="KEY=VALUE"
    )
    args = parser.parse_args()
    root = Path(args.root)
    overrides = {"tau": WORLD_TAU} | parse_settings(args.overrides) | {"layer_aggregation": "goca"}
    seg = Segmentor.from_pretrained(str(model_folder(args.model)), device="cpu", dtype="float32", **overrides)
    if args.timestep is not None:
        seg.backbone.preset = dataclasses.replace(seg.backbone.preset, timestep=args.timestep)
    ds, oracle = get_dataset("world", root), Protocol("oracle-tags")
    samples: list = ds.samples[: args.n]
    meters: dict[str, ConfusionMeter] = {}
    layers = None
    for sample in samples:
        gt = torch.from_numpy(ds.load_mask(sample))
        ids = oracle.prompt_ids(ds, gt.numpy())
        plan = seg.builder.build(parse_classes([oracle.prompt_text(ds, i) for i in ids]), [])[0]
        pixels = seg._pixels([ds.load_image(sample)])
        captured, _ = seg.backbone.capture(
            pixels, [plan.text], plan.n_tokens, seg.config, torch.Generator().manual_seed(0)
        )
        n_layers = len(captured.grids)
        layers = layers or [f"{name} ({h}²)" for name, (h, _) in zip(captured.layer_names, captured.grids)]
        # goca's layer weights are max(score, 0) normalised, so one-hot scores put all the weight on one layer
        variants = {name: torch.eye(n_layers)[i][None] for i, name in enumerate(layers)}
        variants |= {
            "goca's layer aggregation": captured.layer_scores,
            "mean over layers": torch.ones(1, n_layers),
        }
        lut = torch.tensor(ids)
        for name, layer_scores in variants.items():
            out = run_method(
                dataclasses.replace(captured, layer_scores=layer_scores), plan.layout, seg.config
            )
            pred = lut[upsample(out.class_maps.float(), tuple(gt.shape))[0].argmax(0)]
            meters.setdefault(name, ConfusionMeter(ds.num_classes, ds.class_kinds)).update(pred, gt)
    print(
        f"{model_folder(args.model).name}, t = {seg.backbone.preset.timestep}, {len(samples)} scenes of {root}\n"
    )
    print("| class maps from | mIoU | stuff IoU | things IoU | right thing |\n|---|---|---|---|---|")
    for name, meter in meters.items():
        s = meter.compute()
        right = thing_pixels(meter.mat, ds.class_kinds)["right_thing"]
        print(
            f"| {name} | {100 * s.miou:.1f} | {100 * s.kind_iou['stuff']:.1f} | {100 * s.kind_iou['thing']:.1f} | {right:.2f} |"
        )


if __name__ == "__main__":
    main()
