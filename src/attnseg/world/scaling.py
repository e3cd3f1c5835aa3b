"""The scaling study: every shipped world model, vanilla and goca, on the val split; plus a generation grid."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from attnseg.errors import BadDatasetError
from attnseg.eval.records import atomic_write_text
from attnseg.io import atomic_path
from attnseg.world import model as wm
from attnseg.world.render import CLASSES, render_split

N_IDS = len(CLASSES) + 1  # background 0 + classes
# The world has no background pixel (stuff covers every pixel), so the study labels every pixel with its best
# class, as the paper does on its data sets without a background class (COCO-Stuff, Cityscapes, ADE20K):
# τ = 0. `--tau 0.5` gives the segmentor's default threshold, which can only turn right pixels wrong here.
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


def evaluate(
    model: Path, method: str, val: Path, rows: list[dict], timestep: int | None = None, **overrides
) -> dict:
    """mIoU and per-class IoU of one model and method on the val rows (oracle prompt: the classes present)."""
    from attnseg import Segmentor

    # Oracle prompts name only the classes present, so the presence step has nothing to decide.
    seg = Segmentor.from_pretrained(
        str(model), method=method, device="cpu", dtype="float32", presence="off", **overrides
    )
    if timestep is not None:
        seg.backbone.preset = dataclasses.replace(seg.backbone.preset, timestep=timestep)
    names = {c.id: c.name for c in CLASSES}
    conf = np.zeros((N_IDS, N_IDS), np.int64)
    mass = []
    t0 = time.perf_counter()
    from tqdm import tqdm

    for r in tqdm(rows, desc=f"{model.name} {method}", leave=False):
        image = Image.open(val / r["image"]).convert("RGB")
        gt = np.asarray(Image.open(val / r["mask"]))
        ids = list(r["present"])
        out = seg.segment(image, [names[i] for i in ids])
        pred_local = out.labels.numpy()
        lut = np.array([0] + ids, np.int64)
        pred = lut[pred_local]
        add_confusion(conf, gt, pred)
        diag = out.meta.get("diagnostics") or []
        if diag and "special_token_mass" in diag[0]:
            mass.append(float(np.mean([d["special_token_mass"] for d in diag])))
    seconds = (time.perf_counter() - t0) / max(1, len(rows))
    per = per_class_iou(conf)
    return {
        "model": model.name,
        "method": method,
        "timestep": seg.backbone.preset.timestep,
        "miou": float(np.mean(list(per.values()))),
        "per_class_iou": per,
        "special_token_mass": float(np.mean(mass)) if mass else None,
        "thing_pixels": thing_pixels(conf),
        "seconds_per_image": seconds,
        "n_scenes": len(rows),
        "overrides": {k: str(v) for k, v in overrides.items()},
        "tau": seg.config.tau,
    }


def add_confusion(conf: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> None:
    """Add one scene's (truth, prediction) pairs of world ids to `conf[truth, prediction]`; void (255) left out."""
    keep = gt != 255
    pairs = gt[keep].astype(np.int64) * N_IDS + pred[keep].astype(np.int64)
    conf += np.bincount(pairs, minlength=N_IDS * N_IDS).reshape(N_IDS, N_IDS)


def per_class_iou(conf: np.ndarray) -> dict[str, float]:
    """IoU % of every class that occurs in the truth of `conf[truth, prediction]`, by class name."""
    per = {}
    for c in CLASSES:
        tp = conf[c.id, c.id]
        den = conf[c.id, :].sum() + conf[:, c.id].sum() - tp
        if conf[c.id, :].sum() > 0:
            per[c.name] = 100 * float(tp / den) if den else 0.0
    return per


def kind_means(per_class: dict[str, float]) -> dict[str, float]:
    """Mean IoU of the stuff classes and of the thing classes among `per_class` (name → IoU)."""
    kinds = {c.name: c.kind for c in CLASSES}
    mean = lambda kind: float(np.mean([v for k, v in per_class.items() if kinds[k] == kind]))  # noqa: E731
    return {"stuff_iou": mean("stuff"), "things_iou": mean("thing")}


def thing_pixels(conf: np.ndarray) -> dict:
    """Where the pixels of things went (the right thing, another thing, stuff), and stuff's pixels taken by things.

    `conf[truth, prediction]` over world ids; prediction 0 is background (no class cleared τ).
    """
    things = [c.id for c in CLASSES if c.kind == "thing"]
    stuff = [c.id for c in CLASSES if c.kind == "stuff"]
    total = max(1, int(conf[things].sum()))
    right = int(sum(conf[t, t] for t in things))
    return {
        "right_thing": right / total,
        "other_thing": (int(conf[np.ix_(things, things)].sum()) - right) / total,
        "stuff": int(conf[np.ix_(things, stuff)].sum()) / total,
        "background": int(conf[things, 0].sum()) / total,
        "stuff_taken_by_things": int(conf[np.ix_(stuff, things)].sum()) / max(1, int(conf[stuff].sum())),
    }


def _mtime(model: Path) -> float:
    """When the model's UNet weights were written, to tell a re-exported model from the one measured."""
    return (model / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime


def heldout_loss(model: Path) -> float | None:
    """The held-out denoising loss recorded at export."""
    f = model / "world.json"
    return json.loads(f.read_text()).get("heldout_loss") if f.is_file() else None


def table_markdown(results: list[dict]) -> str:
    """The study's table: one row per model and method, then per-class IoU."""
    taus = sorted({r.get("tau") for r in results}, key=str)
    lines = [
        f"Prompts name the classes present in each scene (oracle); background threshold τ {', '.join(map(str, taus))}.",
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
            f"| {r['model']} | {r.get('latent', 16)}² | {r['method']} | {hl} | {mass} | {r['miou']:.1f} "
            f"| {r['seconds_per_image']:.2f} |"
        )
    names = [c.name for c in CLASSES]
    lines += [
        "",
        "Per-class IoU:",
        "",
        "| model | method | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for r in results:
        cells = [f"{r['per_class_iou'].get(n, float('nan')):.1f}" for n in names]
        lines.append(f"| {r['model']} | {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
    p.add_argument("--timestep", type=int, default=None, help="override the backbone's timestep")
    p.add_argument(
        "--tau",
        type=float,
        default=WORLD_TAU,
        help="background threshold (default 0: every pixel takes its best class; the world has no background)",
    )
    p.add_argument("--no-grid", action="store_true", help="skip the generation grid")
    p.add_argument("--resume", action="store_true", help="keep results already in --out for unchanged models")
    p.add_argument("--out", default="attnseg-out/world-scaling")


def run_scaling(args: argparse.Namespace) -> int:
    """Run `world scaling` from parsed arguments: table.md, results.json, scaling.png, generated.png."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    val = ensure_val(Path(args.val), args.n, args.seed)
    rows = read_rows(val, args.n)
    models = [Path(m) for m in args.models] if args.models else shipped_models()
    old = (
        json.loads((out / "results.json").read_text())
        if args.resume and (out / "results.json").is_file()
        else []
    )
    results = []
    for model in models:
        for method in args.methods:
            done = [
                r
                for r in old
                if (r["model"], r["method"], r["n_scenes"]) == (model.name, method, len(rows))
                and (args.timestep is None or r["timestep"] == args.timestep)
                and r.get("model_mtime") == _mtime(model)
                and r.get("tau") == args.tau
            ]
            if done:
                results.append(done[0])
                continue
            r = evaluate(model, method, val, rows, args.timestep, tau=args.tau)
            r["model_mtime"] = _mtime(model)
            r["heldout_loss"] = heldout_loss(model)
            r["latent"] = latent_side(model)
            results.append(r)
            print(
                f"{model.name} {method}: mIoU {r['miou']:.1f} ({r['seconds_per_image']:.2f} s/image)",
                flush=True,
            )
            atomic_write_text(out / "results.json", json.dumps(results, indent=1))
    atomic_write_text(out / "results.json", json.dumps(results, indent=1))  # resumed rows too
    atomic_write_text(out / "table.md", table_markdown(results))
    plot(results, out / "scaling.png")
    if not args.no_grid and models:
        from attnseg.backbones.loading import default_model_name

        target = next((m for m in models if m.name == default_model_name()), models[-1])
        caps = [r["caption"] for r in rows[:12]]
        generation_grid(target, caps, out / "generated.png")
    print(f"wrote {out}/table.md, results.json, scaling.png" + ("" if args.no_grid else ", generated.png"))
    return 0
