"""How fast the embedded default loads and segments a 64×64 scene on this machine (the issue's < 3 s and < 1 s).

    python benchmarks/embedded_speed.py [--model world-s] [--n 20] [--threads 2]

Run it in a fresh process on a quiet machine: it times the import of attnseg and torch, loading the model,
the first segmentation (warm-up included) and the mean of the next N, and prints one JSON line.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402

import torch  # noqa: E402
from PIL import Image  # noqa: E402

import attnseg  # noqa: E402
from attnseg.world.render import CLASSES, render_scenes  # noqa: E402

IMPORT_S = time.perf_counter() - T0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model name or folder (default: the embedded default)")
    parser.add_argument("--n", type=int, default=20, help="timed segmentations after the first")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = {c.id: c.name for c in CLASSES}
    scenes = [scene for _, scene in render_scenes("test", args.n + 1, seed=0)]

    t = time.perf_counter()
    seg = attnseg.Segmentor.from_pretrained(
        args.model, method="goca", device="cpu", dtype="float32", presence="off"
    )  # oracle classes: the speed of one segmentation pass
    load_s = time.perf_counter() - t

    times = []
    for scene in scenes:
        t = time.perf_counter()
        seg.segment(Image.fromarray(scene.image), [names[i] for i in scene.present])
        times.append(time.perf_counter() - t)
    print(
        json.dumps(
            {
                "model": args.model or "embedded default",
                "import_s": round(IMPORT_S, 2),
                "load_s": round(load_s, 2),
                "first_segment_s": round(times[0], 3),
                "segment_s": round(sum(times[1:]) / max(len(times) - 1, 1), 3),
                "threads": args.threads,
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
            }
        )
    )


if __name__ == "__main__":
    main()
