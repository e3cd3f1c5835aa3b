"""The scaling study: every shipped world model, vanilla and goca, on the val split; plus a generation grid.

Each (model, method) is one `attnseg eval` run (`run_eval` on the World reader, oracle class prompts), in
its own resumable run folder under `--out/runs/`, so the study's mIoU is the number `attnseg eval --dataset
world` gives, with the same class rule (eval/metrics.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from attnseg.errors import BadDatasetError
from attnseg.io import MANIFEST, atomic_path, atomic_write_text, claim_folder
from attnseg.world import model as wm
from attnseg.world.render import render_split

# The world has no background pixel (stuff covers every pixel), so it is scored without a background class:
# every pixel takes its best prompted class, as the paper does on COCO-Stuff, Cityscapes and ADE20K. τ 0 makes
# a world model's own labels (attnseg segment, the demo) the same argmax; `attnseg world tune` ships it.
WORLD_TAU = 0.0


def shipped_models(models_dir: Path | None = None) -> list[Path]:
    """Exported world model folders, by latent side, then smallest first (by UNet weight bytes)."""
    models_dir = models_dir or wm.models_dir()
    found = [p for p in models_dir.glob("world-*") if (p / "model_index.json").is_file()]
    weights = lambda p: (p / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size  # noqa: E731
    return sorted(found, key=lambda p: (latent_side(p), weights(p)))


def latent_side(model: Path) -> int:
    """The side of a world model's latent (its UNet's sample size): 16 or 32 for a 64×64 image."""
    return int(json.loads((model / "unet" / "config.json").read_text())["sample_size"])


def ensure_val(folder: Path, n: int, seed: int) -> Path:
    """The val split folder, rendered if it is missing or differs in size or seed."""
    meta = folder / "render.json"
    if meta.is_file():
        m = json.loads(meta.read_text())
        if m.get("split") == "val" and m.get("n", 0) >= n and m.get("seed") == seed:
            classes = json.loads((folder / "classes.json").read_text())
            if classes.get("background_id", 0) is not None:
                raise BadDatasetError(
                    f"{folder} was rendered before the world dropped its background class (classes.json names "
                    f"background_id {classes.get('background_id', 0)}); render it again into another folder with "
                    f"`attnseg world render --split val --n {n} --seed {seed} --out DIR` and pass --val DIR"
                )
            return folder
    return render_split(folder, "val", n=n, seed=seed)


def read_rows(folder: Path, n: int) -> list[dict]:
    """The first n lines of index.jsonl."""
    index = folder / "index.jsonl"
    if not index.is_file():
        raise BadDatasetError(
            f"{folder} has no index.jsonl; render it with `attnseg world render --split val`"
        )
    rows = [json.loads(line) for line in index.read_text().splitlines() if line.strip()]
    return rows[:n]


def model_fingerprint(model: Path) -> str:
    """A short hash of a model's weights and attnseg.json: a re-exported or re-tuned model gets new run folders."""
    digest = hashlib.sha256()
    files = sorted(model.glob("*/*.safetensors")) + [model / "attnseg.json"]
    for f in files:
        if f.is_file():
            digest.update(f.relative_to(model).as_posix().encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()[:10]


def evaluate(
    model: Path,
    method: str,
    root: Path,
    n: int | None,
    out: Path | None = None,
    timestep: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> dict:
    """One `attnseg eval` run of a model and method on n scenes of a world split (oracle prompts); its scores.

    mIoU and IoUs are in %. Without `out` the run folder is temporary.
    """
    if out is None:
        with tempfile.TemporaryDirectory(prefix="attnseg-world-eval-") as tmp:
            return evaluate(model, method, root, n, Path(tmp) / "run", timestep, overrides, progress)
    from attnseg.eval.datasets import get_dataset
    from attnseg.eval.runner import EvalConfig, run_eval

    overrides = dict(overrides or {})
    cfg = EvalConfig(
        dataset="world",
        root=str(root),
        out=str(out),
        model=str(model),
        method=method,
        dtype="float32",
        overrides=tuple(sorted(overrides.items())),
        timestep=timestep,
        limit=n,
        progress=progress,
        command=("attnseg world", method, str(model)),
    )
    metrics = run_eval(cfg)
    kinds = get_dataset("world", root).class_kinds
    mat = torch.from_numpy(np.load(out / "confusion.npy"))
    meta = json.loads((out / "segmentor.json").read_text()).get("meta", {})
    pct = lambda v: None if v is None else 100 * v  # noqa: E731
    return {
        "model": model.name,
        "method": method,
        "timestep": meta.get("timestep"),
        "miou": pct(metrics["mIoU"]),
        "per_class_iou": {k: pct(v) for k, v in metrics["per_class_iou"].items()},
        "kind_iou": {k: pct(v) for k, v in (metrics["kind_iou"] or {}).items()},
        "pixel_accuracy": pct(metrics["pixel_accuracy"]),
        "special_token_mass": (metrics["diagnostics"] or {}).get("special_token_mass"),
        "thing_pixels": thing_pixels(mat, kinds),
        "seconds_per_image": metrics["counts"]["seconds_per_image"],
        "n_scenes": metrics["counts"]["images"],
        "overrides": {k: str(v) for k, v in overrides.items()},
        "tau": metrics["tau"],
        "run": str(out),
    }


def thing_pixels(mat: torch.Tensor, kinds: Sequence[str | None]) -> dict:
    """Where the pixels of things went (the right thing, another thing, stuff, void), and stuff's pixels taken by things.

    `mat[truth, prediction]` is a meter's (C+1)×(C+1) confusion of eval ids, its last column void; `kinds`
    gives each class's kind ("stuff", "thing").
    """
    c = len(kinds)
    things = [i for i, k in enumerate(kinds) if k == "thing"]
    stuff = [i for i, k in enumerate(kinds) if k == "stuff"]
    m = mat.to(torch.int64)
    total = max(1, int(m[things].sum()))
    right = int(sum(m[t, t] for t in things))
    block = lambda rows, cols: int(m[rows][:, cols].sum())  # noqa: E731
    return {
        "right_thing": right / total,
        "other_thing": (block(things, things) - right) / total,
        "stuff": block(things, stuff) / total,
        "void": int(m[things, c].sum()) / total,
        "stuff_taken_by_things": block(stuff, things) / max(1, int(m[stuff].sum())),
    }


def heldout_loss(model: Path) -> float | None:
    """The held-out denoising loss recorded at export."""
    f = model / "world.json"
    return json.loads(f.read_text()).get("heldout_loss") if f.is_file() else None


def table_markdown(results: list[dict]) -> str:
    """The study's table: one row per model and method, then per-class IoU."""
    lines = [
        "Prompts name the classes present in each scene (oracle); no background class: every pixel takes its best "
        "prompted class (attnseg eval --dataset world).",
        "",
        "Held-out losses compare only between models with the same latent (each latent has its own VAE).",
        "",
        "| model | latent | method | held-out loss | special-token mass | mIoU | s/image |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        mass = f"{r['special_token_mass']:.3f}" if r["special_token_mass"] is not None else "–"
        hl = f"{r['heldout_loss']:.4f}" if r.get("heldout_loss") is not None else "–"
        lines.append(
            f"| {r['model']} | {r.get('latent', 16)}² | {r['method']} | {hl} | {mass} | {_pct(r['miou'])} "
            f"| {r['seconds_per_image']:.2f} |"
        )
    names = list(dict.fromkeys(n for r in results for n in r["per_class_iou"]))
    lines += [
        "",
        "Per-class IoU:",
        "",
        "| model | method | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for r in results:
        cells = [_pct(r["per_class_iou"].get(n)) for n in names]
        lines.append(f"| {r['model']} | {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pct(v: float | None) -> str:
    """A score in % with one decimal, or a dash where it is undefined."""
    return "–" if v is None else f"{v:.1f}"


def plot(results: list[dict], path: Path) -> None:
    """mIoU of each method against the models' held-out loss (PIL line chart, no plotting library)."""
    w, h, m = 480, 320, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    models = list(dict.fromkeys(r["model"] for r in results))
    d.line([(m, h - m), (w - 20, h - m)], fill="black")
    d.line([(m, 20), (m, h - m)], fill="black")
    for v in range(0, 101, 20):
        y = h - m - (h - m - 20) * v / 100
        d.text((8, y - 5), f"{v}", fill="black", font=font)
        d.line([(m - 3, y), (m, y)], fill="black")
    xs = {name: m + 30 + i * (w - m - 80) / max(1, len(models) - 1) for i, name in enumerate(models)}
    for name, x in xs.items():
        hl = next((r.get("heldout_loss") for r in results if r["model"] == name), None)
        d.text((x - 20, h - m + 6), name, fill="black", font=font)
        if hl is not None:
            d.text((x - 24, h - m + 18), f"loss {hl:.3f}", fill="gray", font=font)
        side = next((r.get("latent") for r in results if r["model"] == name), None)
        if side is not None:
            d.text((x - 24, h - m + 30), f"latent {side}x{side}", fill="gray", font=font)
    colours = {"vanilla": (200, 60, 60), "goca": (40, 90, 200)}
    for k, method in enumerate(dict.fromkeys(r["method"] for r in results)):
        col = colours.get(method, (60, 160, 60))
        for side in dict.fromkeys(r.get("latent") for r in results):  # one line per latent: one family
            pts = [
                (xs[r["model"]], h - m - (h - m - 20) * r["miou"] / 100)
                for r in results
                if r["method"] == method and r.get("latent") == side
            ]
            if len(pts) > 1:
                d.line(pts, fill=col, width=2)
            for x, y in pts:
                d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=col)
        d.text((w - 110, 24 + 12 * k), f"- {method}", fill=col, font=font)
    d.text((m, 4), "mIoU (val) per world model", fill="black", font=font)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def generation_grid(
    model: Path, captions: list[str], path: Path, steps: int = 30, guidance: float = 4.0, seed: int = 0
) -> None:
    """Images the model generates from captions (DDIM, classifier-free guidance), with the captions under them."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(model),
        torch_dtype=torch.float32,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed)
    images = pipe(
        captions, num_inference_steps=steps, guidance_scale=guidance, generator=g, height=64, width=64
    ).images
    scale, cols = 3, 4
    rows = -(-len(images) // cols)
    cw, ch = 64 * scale, 64 * scale + 40
    canvas = Image.new("RGB", (cols * cw, rows * ch), "white")
    d = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, (im, cap) in enumerate(zip(images, captions)):
        x, y = (i % cols) * cw, (i // cols) * ch
        canvas.paste(im.resize((64 * scale, 64 * scale), Image.NEAREST), (x, y))
        words, line, lines = cap.split(), "", []
        for wd in words:
            if len(line) + len(wd) > 30:
                lines.append(line)
                line = ""
            line = (line + " " + wd).strip()
        lines.append(line)
        for j, ln in enumerate(lines[:3]):
            d.text((x + 2, y + 64 * scale + 2 + 12 * j), ln, fill="black", font=font)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def add_scaling_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options of `world scaling` to a parser."""
    p.add_argument("--val", default="world-data/val", help="val split folder (rendered if missing)")
    p.add_argument("--n", type=int, default=500, help="number of val scenes")
    p.add_argument("--seed", type=int, default=0, help="the val split's seed")
    p.add_argument("--models", nargs="*", default=None, help="model folders (default: every shipped world-*)")
    p.add_argument("--methods", nargs="*", default=["vanilla", "goca"])
    p.add_argument(
        "--timestep",
        type=int,
        default=None,
        help="read every model at this timestep (default: each model's tuned t)",
    )
    p.add_argument("--no-grid", action="store_true", help="skip the generation grid")
    p.add_argument(
        "--out",
        default="attnseg-out/world-scaling",
        help="folder for the table, plots and one eval run folder per model and method (runs/; run again to resume)",
    )


def run_scaling(args: argparse.Namespace) -> int:
    """Run `world scaling` from parsed arguments: table.md, results.json, scaling.png, generated.png."""
    out = claim_folder(args.out, lambda f: (f / "results.json").is_file() or (f / MANIFEST).is_file())
    val = ensure_val(Path(args.val), args.n, args.seed)
    models = [Path(m) for m in args.models] if args.models else shipped_models()
    results = []
    for model in models:
        for method in args.methods:
            # One run folder per model version and setting: rerunning the study resumes or re-reads it.
            tag = f"{model.name}-{method}-{model_fingerprint(model)}"
            run = out / "runs" / (tag + (f"-t{args.timestep}" if args.timestep is not None else ""))
            r = evaluate(model, method, val, args.n, run, args.timestep, progress=True)
            r["heldout_loss"] = heldout_loss(model)
            r["latent"] = latent_side(model)
            results.append(r)
            print(
                f"{model.name} {method}: mIoU {_pct(r['miou'])} ({r['seconds_per_image']:.2f} s/image)",
                flush=True,
            )
            atomic_write_text(out / "results.json", json.dumps(results, indent=1))
    atomic_write_text(out / "results.json", json.dumps(results, indent=1))
    atomic_write_text(out / "table.md", table_markdown(results))
    plot(results, out / "scaling.png")
    if not args.no_grid and models:
        from attnseg.backbones.loading import default_model_name

        target = next((m for m in models if m.name == default_model_name()), models[-1])
        caps = [r["caption"] for r in read_rows(val, 12)]
        generation_grid(target, caps, out / "generated.png")
    print(f"wrote {out}/table.md, results.json, scaling.png" + ("" if args.no_grid else ", generated.png"))
    return 0
