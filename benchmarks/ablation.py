"""Ablation of GoCA's steps on the synthetic world: each step switched off alone, plus the vanilla baseline.

    attnseg world render --split val --n 500 --seed 0 --out world-data/val
    python benchmarks/ablation.py --root world-data/val [--model world-s] [--protocol oracle-tags] [--limit N]

Every variant is one `attnseg eval` run (resumable, in --out/<variant>); the table is printed as Markdown and
written to --out/ablation.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from attnseg.cli import main as attnseg_main
from attnseg.io import atomic_path

VARIANTS: dict[str, tuple[str, list[str]]] = {
    "goca (all steps)": ("goca", []),
    "− head aggregation (mean heads)": ("goca", ["head_aggregation=mean"]),
    "− layer aggregation (mean layers)": ("goca", ["layer_aggregation=mean"]),
    "− per-pixel rescaling (min-max only)": ("goca", ["rescale=minmax"]),
    "− propagation": ("goca", ["refine=none"]),
    "propagation with 2 steps (SD's k)": ("goca", ["refine=propagate", "refine_steps=2"]),
    "layer scores without row renormalisation": ("goca", ["renormalize_resized_rows=false"]),
    "reference channel 0 (reference code path)": ("goca", ["reference_channel0=true"]),
    "blur on (the paper's σ 1.1 map cells)": ("goca", ["blur=true"]),
    "vanilla": ("vanilla", []),
    "goca-reference (the published code's every choice)": ("goca-reference", []),
    "vanilla-reference": ("vanilla-reference", []),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="a world split written by `attnseg world render`")
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--model", default=None)
    parser.add_argument("--protocol", default="oracle-tags", choices=["oracle-tags", "open"])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    out = Path(args.out) / args.protocol
    rows = []
    for name, (method, settings) in VARIANTS.items():
        run = out / name.split(" (")[0].strip("− ").replace(" ", "-")
        cmd = [
            "eval",
            "--dataset",
            "world",
            "--root",
            args.root,
            "--out",
            str(run),
            "--method",
            method,
            "--protocol",
            args.protocol,
            "--no-progress",
        ]
        for setting in settings:
            cmd += ["--set", setting]
        for flag, value in (("--model", args.model), ("--limit", args.limit), ("--device", args.device)):
            if value is not None:
                cmd += [flag, str(value)]
        if attnseg_main(cmd) != 0:
            raise SystemExit(f"variant {name!r} failed")
        metrics = json.loads((run / "metrics.json").read_text())
        rows.append((name, 100 * metrics["mIoU"], 100 * metrics["pixel_accuracy"]))
    lines = [
        f"Ablation on {args.root} ({args.protocol}, no background class, model {args.model or 'embedded default'})",
        "",
        "| variant | mIoU | pixel acc. |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {miou:.1f} | {acc:.1f} |" for name, miou, acc in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    with atomic_path(out / "ablation.md") as tmp:
        tmp.write_text(text)


if __name__ == "__main__":
    main()
