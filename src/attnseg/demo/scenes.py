"""`attnseg demo`: segment sample scenes of the synthetic world with the default model, next to the truth."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from attnseg.errors import BadConfigError
from attnseg.eval.metrics import ConfusionMeter
from attnseg.io import check_output_folder, output_folder
from attnseg.labelmaps import IGNORE_INDEX

SCALE = 4


def _tiny_random_model() -> Path:
    """A tiny random-weight SD-style model, cached, for machines where no embedded model is installed."""
    from attnseg.testing import build_tiny_sd

    folder = Path(tempfile.gettempdir()) / "attnseg-tiny-random-sd"
    if not (folder / "model_index.json").is_file():
        build_tiny_sd(folder)
    return folder


def _coloured(labels: np.ndarray, palette: list[tuple[int, int, int]]) -> np.ndarray:
    return np.array(palette, dtype=np.uint8)[np.clip(labels, 0, len(palette) - 1)]


def _wrap(text: str, font, width: int) -> list[str]:
    """Lines of `text` that each fit `width` pixels in `font`, broken between words."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def _panel(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, title: str, palette) -> Image.Image:
    """Input | ground truth | prediction, enlarged, under the title wrapped to the panel's width."""
    tiles = [image, _coloured(truth, palette), _coloured(pred, palette)]
    h, w = image.shape[:2]
    font = ImageFont.load_default()
    width = 3 * w * SCALE + 8
    lines = _wrap(title, font, width - 4)
    top = 14 * len(lines) + 2
    canvas = Image.new("RGB", (width, h * SCALE + top), (255, 255, 255))
    for i, tile in enumerate(tiles):
        canvas.paste(
            Image.fromarray(tile).resize((w * SCALE, h * SCALE), Image.NEAREST), (i * (w * SCALE + 4), top)
        )
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        draw.text((2, 2 + 14 * k), line, fill=(0, 0, 0), font=font)
    return canvas


def _legend(names: list[str], palette, width: int) -> Image.Image:
    font = ImageFont.load_default()
    per_row = max(1, width // 120)
    rows = -(-len(names) // per_row)
    canvas = Image.new("RGB", (width, rows * 14 + 4), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, name in enumerate(names):
        x, y = (i % per_row) * 120 + 4, (i // per_row) * 14 + 2
        draw.rectangle([x, y + 2, x + 9, y + 11], fill=tuple(palette[i]), outline=(90, 90, 90))
        draw.text((x + 13, y), name, fill=(0, 0, 0), font=font)
    return canvas


def is_demo_folder(folder: Path) -> bool:
    """A folder an attnseg from before output manifests wrote with `attnseg demo`."""
    return (folder / "summary.md").is_file() and (folder / "demo.png").is_file()


def run_demo(
    out: Path, n: int, seed: int, model: str | None, device: str | None, overwrite: bool = False
) -> Path:
    """Render n test scenes, segment each into the classes its caption names; write panels, a grid, summary.md."""
    from attnseg.backbones.loading import default_model_name
    from attnseg.segmentor import Segmentor, parse_device
    from attnseg.world.render import CLASSES, render_scenes

    if n < 1:
        raise BadConfigError(f"--n must be at least 1 scene, got {n}")
    check_output_folder(out, overwrite, is_demo_folder)  # before the model loads
    parse_device(device)

    note = ""
    if model is None and default_model_name() is None:
        model = str(_tiny_random_model())
        note = (
            "NOTE: no embedded model is installed in this build, so this demo uses a tiny model with RANDOM "
            "weights built from config: the pipeline runs end to end, but its masks mean nothing."
        )
        print(note, file=sys.stderr)
    # Each scene is prompted with the classes its caption names, all present: no presence step to run.
    segmentor = Segmentor.from_pretrained(model, device=device, presence="off")
    names = [c.name for c in CLASSES]  # label k+1 = world class id k+1
    palette = [(0, 0, 0)] + [
        tuple(int(v) for v in np.random.default_rng(c.id * 7 + 1).integers(40, 256, 3)) for c in CLASSES
    ]
    scenes = list(render_scenes("test", n, seed))
    images = [Image.fromarray(scene.image) for _, scene in scenes]
    # Each scene is prompted with the classes its caption names, as a user who knows what is in the picture
    # would; labels are then mapped back to world class ids.
    results = [
        segmentor.segment(image, [names[c - 1] for c in scene.named], seed=seed)
        for image, (_, scene) in zip(images, scenes)
    ]
    with output_folder(out, overwrite, is_demo_folder) as stage:
        _write_demo(stage, scenes, results, names, palette, note, segmentor, seed)
    return out


def _write_demo(out: Path, scenes, results, names, palette, note: str, segmentor, seed: int) -> None:
    """Panels, the grid and summary.md of the demo, into `out`."""
    panels, lines = [], []
    # Scored as `attnseg eval --dataset world` scores: eval id = world id - 1 (the world has no background),
    # a pixel below τ is void and counts as a miss.
    n_classes = len(names)
    total = ConfusionMeter(n_classes)
    for (index, scene), result in zip(scenes, results):
        pred = np.array([0, *scene.named])[result.labels.numpy()]  # label k → the k-th named class's id
        pred_eval = np.where(pred == 0, n_classes, pred - 1)
        # 0 (background) never occurs: stuff covers every pixel
        unscored = (scene.mask == IGNORE_INDEX) | (scene.mask == 0)
        gt_eval = np.where(unscored, IGNORE_INDEX, scene.mask.astype(np.int64) - 1)
        meter = ConfusionMeter(n_classes)
        meter.update(torch.from_numpy(pred_eval), torch.from_numpy(gt_eval))
        total.merge(meter)
        scores = meter.compute()
        found = sorted({names[k - 1] for k in np.unique(pred) if k > 0})
        truth = [names[c - 1] for c in scene.present]
        lines.append(
            f"| {index} | {scene.caption} | {', '.join(truth)} | {', '.join(found)} | "
            f"{100 * scores.pixel_accuracy:.1f} | {100 * scores.miou:.1f} |"
        )
        panel = _panel(scene.image, scene.mask, pred, f"#{index}: {scene.caption}", palette)
        panel.save(out / f"scene_{index:02d}.png", format="PNG")
        panels.append(panel)
    grid_w = panels[0].width
    legend = _legend(["background", *names], palette, grid_w)
    grid = Image.new("RGB", (grid_w, sum(p.height for p in panels) + legend.height), (255, 255, 255))
    y = 0
    for panel in panels:
        grid.paste(panel, (0, y))
        y += panel.height
    grid.paste(legend, (0, y))
    grid.save(out / "demo.png", format="PNG")
    meta = results[0].meta
    summary = [
        "# attnseg demo",
        "",
        *([note, ""] if note else []),
        f"Model: `{meta['model']['model_id']}` ({meta['model']['family']}), method `{meta['method']}`, "
        f"seed {seed}, τ = {segmentor.config.tau}. Each scene is prompted with the classes its caption names "
        "(a caption may leave a present class out; pixels below τ stay background).",
        "",
        "Each panel of `demo.png`: input | ground truth | attnseg. Per scene:",
        "",
        "| scene | caption | present | found | pixel acc % | mIoU % |",
        "|---|---|---|---|---|---|",
        *lines,
        "",
        f"Overall pixel accuracy: {100 * total.compute().pixel_accuracy:.1f}%, mIoU {100 * total.compute().miou:.1f}% "
        "(over the classes in the truth or the labels of these scenes, as `attnseg eval` counts them)",
        "",
    ]
    (out / "summary.md").write_text("\n".join(summary))


def add_demo_command(subparsers) -> None:
    """Register `attnseg demo`."""
    from attnseg.cli import seed_int

    parser = subparsers.add_parser(
        "demo",
        help="segment sample scenes with the embedded default model",
        description="Render sample scenes of the synthetic world, segment each into the classes its caption "
        "names, and write demo.png (input | truth | attnseg) and summary.md.",
    )
    parser.add_argument(
        "--out", default="attnseg-demo", help="output folder (replaced only if attnseg wrote it)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="write into a folder attnseg did not write (its files only)"
    )
    parser.add_argument("--n", type=int, default=6, help="number of sample scenes")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the scenes and of the noise")
    parser.add_argument("--model", default=None, help="as for segment (default: the embedded default)")
    parser.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present, else cpu)"
    )
    parser.set_defaults(func=lambda a: _cmd(a))


def _cmd(args: argparse.Namespace) -> int:
    with torch.no_grad():  # not set_grad_enabled(False): the CLI may run in-process, beside training
        out = run_demo(Path(args.out), args.n, args.seed, args.model, args.device, args.overwrite)
    print(f"wrote {out / 'demo.png'} (input | truth | attnseg per scene) and {out / 'summary.md'}")
    print((out / "summary.md").read_text())
    return 0
