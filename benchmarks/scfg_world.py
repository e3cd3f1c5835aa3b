"""S-CFG on the embedded world: prompt faithfulness, fidelity, time per image, and masks (docs/GENERATE.md).

    python benchmarks/scfg_world.py classifier --out runs/scfg            # the evaluator (weights not committed)
    python benchmarks/scfg_world.py generate --out runs/scfg --captions 32 --seeds 3 --cfg 7.5 3
    python benchmarks/scfg_world.py windows --out runs/scfg --captions 24  # which steps the masks read
    python benchmarks/scfg_world.py time --out runs/scfg --captions 8      # s per image, interleaved
    python benchmarks/scfg_world.py score --out runs/scfg                  # tables.md, results.json, scfg.png

The evaluator is a linear head on fixed random texture filters and colour shares, trained on rendered train
scenes to say which classes and which colour–thing pairs an image shows; it scores generated images of
held-out (val) captions, and its pooled features give a Fréchet distance between generated images and the
rendered scenes of the same captions.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

import attnseg
from attnseg.eval.metrics import ConfusionMeter
from attnseg.guidance import GenerateOptions, ImageGenerator
from attnseg.io import atomic_path, write_json
from attnseg.method.labels import assign_labels
from attnseg.world.render import CLASS_BY_NAME, CLASSES, COLOURS, THINGS, render_scenes

N_CLASSES = len(CLASSES)
COLOUR_NAMES = list(COLOURS)
PAIRS = [(colour, thing) for thing in THINGS for colour in COLOUR_NAMES]  # colour–thing presence labels
N_LABELS = N_CLASSES + len(PAIRS)
MODES = {  # name → (guidance, mask method)
    "cfg": ("cfg", "goca"),
    "s-cfg vanilla": ("s-cfg", "vanilla"),
    "s-cfg goca": ("s-cfg", "goca"),
}


# -- the evaluator --------------------------------------------------------------------------------------
class Evaluator(torch.nn.Module):
    """64×64 RGB → fixed random texture filters and palette histograms → a trained linear presence head.

    Only the head is trained (a convex fit, seconds on a CPU): a small CNN trained end to end stayed at the
    label prior for 750 steps on the shared 2-core machine. The random 5×5 filters, pooled by mean and max,
    see colours and the things' patterns; the palette histogram sees which named colours are there.
    """

    def __init__(self, filters: int = 96, fd_dims: int = 16) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("bank", torch.randn(filters, 3, 5, 5, generator=gen) / 7.5)
        self.register_buffer("palette", torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 127.5 - 1)
        width = 2 * filters + len(COLOURS)
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))
        self.register_buffer("pca", torch.zeros(width, fd_dims))  # FD is computed on these components
        self.head = torch.nn.Linear(width, N_LABELS)

    def raw(self, x_b3hw: torch.Tensor) -> torch.Tensor:
        """Pooled filter responses and palette shares, B×(2F+10)."""
        resp = F.relu(F.conv2d(x_b3hw, self.bank, padding=2))
        dist = ((x_b3hw[:, None] - self.palette[None, :, :, None, None]) ** 2).sum(2)  # B×10×H×W
        share = (dist.argmin(1, keepdim=True) == torch.arange(len(COLOURS))[None, :, None, None]).float()
        close = share * (dist.amin(1, keepdim=True) < 0.15)  # a pixel near one named colour
        return torch.cat([resp.mean((2, 3)), resp.amax((2, 3)), close.mean((2, 3))], 1)

    def features(self, x_b3hw: torch.Tensor) -> torch.Tensor:
        """Standardised features, B×(2F+10)."""
        return (self.raw(x_b3hw) - self.mean) / self.std

    def fd_features(self, x_b3hw: torch.Tensor) -> torch.Tensor:
        """The features' top principal components (of rendered train scenes), B×16: FID's role for Inception."""
        return self.features(x_b3hw) @ self.pca

    def forward(self, x_b3hw: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x_b3hw))


def to_tensor(images: list) -> torch.Tensor:
    """PIL images or H×W×3 uint8 arrays → B×3×64×64 in [-1, 1]."""
    arrays = [np.asarray(im.convert("RGB") if isinstance(im, Image.Image) else im) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1


def scene_targets(scene) -> np.ndarray:
    """What a rendered scene shows: its classes and the colour–thing pairs of its visible things."""
    y = np.zeros(N_LABELS, np.float32)
    for cid in scene.present:
        y[cid - 1] = 1
    for thing in scene.things:
        y[N_CLASSES + PAIRS.index((thing["colour"], thing["name"]))] = 1
    return y


def named_labels(caption: str, named: list[int]) -> tuple[list[int], list[int]]:
    """The label indices a caption asks for: its named classes, and the colour–thing pairs it spells out."""
    pairs = [
        N_CLASSES + i
        for i, (colour, thing) in enumerate(PAIRS)
        if re.search(rf"\b{colour} {thing}\b", caption)
    ]
    return [cid - 1 for cid in named], pairs


def predict(model: Evaluator, images: list, batch: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Presence probabilities N×93 and FD features N×16."""
    probs, feats = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = to_tensor(images[start : start + batch])
            f = model.features(x)
            feats.append((f @ model.pca).numpy())
            probs.append(torch.sigmoid(model.head(f)).numpy())
    return np.concatenate(probs), np.concatenate(feats)


def cmd_classifier(args: argparse.Namespace) -> None:
    """Train the evaluator on rendered train scenes; report its accuracy on other scenes."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    scenes = [s for _, s in render_scenes("train", args.n, seed=args.seed)]
    y = torch.from_numpy(np.stack([scene_targets(s) for s in scenes]))
    model = Evaluator()
    t0 = time.perf_counter()
    with torch.no_grad():
        raw = torch.cat(
            [model.raw(to_tensor([s.image for s in scenes[i : i + 200]])) for i in range(0, len(scenes), 200)]
        )
        model.mean.copy_(raw.mean(0))
        model.std.copy_(raw.std(0).clamp_min(1e-6))
        feats = (raw - model.mean) / model.std
        model.pca.copy_(
            torch.linalg.svd(feats - feats.mean(0), full_matrices=False)[2][: model.pca.shape[1]].T
        )
    opt = torch.optim.Adam(model.head.parameters(), lr=1e-2)
    for step in range(args.epochs):  # full-batch steps of the linear head (a convex problem)
        loss = (
            F.binary_cross_entropy_with_logits(model.head(feats), y) + 1e-4 * model.head.weight.square().sum()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 200 == 0:
            print(f"step {step}/{args.epochs} loss {loss.item():.4f}", flush=True)
    model.eval()
    held = [s for _, s in render_scenes("test", args.check, seed=args.seed + 1)]
    probs, _ = predict(model, [s.image for s in held])
    truth = np.stack([scene_targets(s) for s in held])
    pred = probs > 0.5
    report = {
        "train_scenes": args.n,
        "head_steps": args.epochs,
        "seconds": time.perf_counter() - t0,
        "check_scenes": len(held),
        "class_accuracy": float((pred[:, :N_CLASSES] == truth[:, :N_CLASSES]).mean()),
        "class_recall": float(pred[:, :N_CLASSES][truth[:, :N_CLASSES] == 1].mean()),
        "pair_recall": float(pred[:, N_CLASSES:][truth[:, N_CLASSES:] == 1].mean()),
        "pair_false_positive_rate": float(pred[:, N_CLASSES:][truth[:, N_CLASSES:] == 0].mean()),
        "named_class_recall": _named_recall(held, probs)[0],
        "named_pair_recall": _named_recall(held, probs)[1],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    with atomic_path(out / "classifier.safetensors") as tmp:
        save_file(model.state_dict(), str(tmp))
    write_json(out / "classifier.json", report)
    print(json.dumps(report, indent=1))


def _named_recall(scenes, probs: np.ndarray) -> tuple[float, float]:
    """Faithfulness: the evaluator's mean probability of the caption's classes (and pairs), over images.

    Soft rather than thresholded: the evaluator is conservative on the sparse pair labels, and a probability
    moves with every image where a count at 0.5 would move with few.
    """
    classes, pairs = [], []
    for scene, p in zip(scenes, probs):
        named_c, named_p = named_labels(scene.caption, scene.named)
        classes.append(float(np.mean(p[named_c])))
        if named_p:
            pairs.append(float(np.mean(p[named_p])))
    return float(np.mean(classes)), float(np.mean(pairs))


def load_evaluator(out: Path) -> Evaluator:
    from safetensors.torch import load_file

    model = Evaluator()
    model.load_state_dict(load_file(str(out / "classifier.safetensors")))
    return model.eval()


# -- generation -----------------------------------------------------------------------------------------
def captions(n: int) -> list:
    """The first n held-out (val, seed 0) scenes: their captions are the prompts, their images the reference."""
    return [s for _, s in render_scenes("val", n, seed=0)]


def cmd_generate(args: argparse.Namespace) -> None:
    """Every caption × seed × mode × cfg, as PNGs and one JSON line each (resumable)."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    gen = ImageGenerator.from_pretrained(args.model)
    scenes = captions(args.captions)
    records_path = out / "records.jsonl"
    done = set()
    if records_path.exists():
        done = {tuple(json.loads(line)["key"]) for line in records_path.read_text().splitlines()}
    (out / "images").mkdir(parents=True, exist_ok=True)
    with records_path.open("a") as records:
        for cfg in args.cfg:
            for mode, (guidance, method) in MODES.items():
                for i, scene in enumerate(scenes):
                    key = [cfg, mode, i]
                    if tuple(key) in done:
                        continue
                    masks = mode == "s-cfg goca"  # the masks come free with S-CFG's own capture
                    options = GenerateOptions(
                        guidance=guidance, cfg=cfg, steps=args.steps, mask_method=method, masks=masks
                    )
                    results = gen.generate(scene.caption, None, options, seed=i * args.seeds, n=args.seeds)
                    for result in results:
                        name = f"{mode.replace(' ', '-')}_cfg{cfg}_{i:04d}_s{result.seed}"
                        result.image.save(out / "images" / f"{name}.png")
                        if result.segmentation is not None:
                            np.savez_compressed(
                                out / "images" / f"{name}_masks.npz",
                                scores=result.segmentation.scores.numpy().astype(np.float16),
                            )
                    meta = results[0].meta
                    row = {
                        "key": key,
                        "caption": scene.caption,
                        "classes": meta["classes"],
                        "seeds": [r.seed for r in results],
                        "names": [f"{mode.replace(' ', '-')}_cfg{cfg}_{i:04d}_s{r.seed}" for r in results],
                        "seconds_per_image": meta["generation"]["seconds_per_image"],
                        "rate_mean": float(np.mean(meta.get("rate_mean_per_step") or [1.0])),
                    }
                    records.write(json.dumps(row) + "\n")
                    records.flush()
                print(f"cfg {cfg} {mode}: {len(scenes)} captions", flush=True)


def cmd_windows(args: argparse.Namespace) -> None:
    """Masks read from the last fraction of the steps, against `attnseg segment` on the finished image."""
    torch.set_num_threads(args.threads)
    gen = ImageGenerator.from_pretrained(args.model)
    seg = attnseg.Segmentor.from_pretrained(args.model, tau=0.0)
    rows = []
    for read_last in args.read_last:
        meter = ConfusionMeter(N_CLASSES + 1)  # world ids; 0 is background, which τ 0 never gives
        for i, scene in enumerate(captions(args.captions)):
            options = GenerateOptions(guidance="cfg", cfg=args.cfg, masks=True, read_last=read_last)
            result = gen.generate(scene.caption, None, options, seed=i)[0]
            masks = result.segmentation
            ref, mine = _mask_pair(masks.classes, masks.scores, seg, result.image)
            meter.update(torch.from_numpy(mine), torch.from_numpy(ref))
        rows.append({"read_last": read_last, "miou": _miou_over_truth(meter)})
        print(rows[-1], flush=True)
    write_json(Path(args.out) / "windows.json", {"captions": args.captions, "cfg": args.cfg, "rows": rows})


def _miou_over_truth(meter: ConfusionMeter) -> float:
    """Mean IoU % over the world classes that `attnseg segment` (the truth side) shows."""
    iou, seen = meter.compute().iou, meter.mat[: N_CLASSES + 1].sum(1)
    return 100 * float(np.mean([iou[c.id] for c in CLASSES if seen[c.id] > 0]))


def _mask_pair(classes: list[str], scores_khw: torch.Tensor, seg, image) -> tuple[np.ndarray, np.ndarray]:
    """(`attnseg segment` labels, generation-mask labels) in world ids, both at τ 0 (the world has no background)."""
    ids = np.array([0] + [CLASS_BY_NAME[c].id for c in classes])
    ref = seg.segment(image, classes, seed=0)
    ref_labels = ids[assign_labels(ref.scores, 0.0).numpy()]
    return ref_labels, ids[assign_labels(scores_khw.float(), 0.0).numpy()]


def cmd_time(args: argparse.Namespace) -> None:
    """Seconds per image of each mode, interleaved caption by caption so that load drifts hit all alike."""
    torch.set_num_threads(args.threads)
    gen = ImageGenerator.from_pretrained(args.model)
    scenes = captions(args.captions)
    seconds = {mode: [] for mode in MODES}
    for guidance, method in MODES.values():  # untimed: the first call of a mode pays one-off setup costs
        gen.generate(scenes[0].caption, None, GenerateOptions(guidance=guidance, mask_method=method, steps=2))
    for i, scene in enumerate(scenes):
        for mode, (guidance, method) in MODES.items():
            options = GenerateOptions(guidance=guidance, cfg=7.5, mask_method=method, batch_size=args.n)
            t0 = time.perf_counter()
            gen.generate(scene.caption, None, options, seed=i, n=args.n)
            seconds[mode].append((time.perf_counter() - t0) / args.n)
    summary = {
        mode: {
            "median_s": float(np.median(s)),
            "ratio_to_cfg": float(np.median(s) / np.median(seconds["cfg"])),
        }
        for mode, s in seconds.items()
    }
    write_json(Path(args.out) / "timing.json", {"captions": len(scenes), "n": args.n, "modes": summary})
    print(json.dumps(summary, indent=1))


# -- scoring --------------------------------------------------------------------------------------------
FD_DIMS = 8  # FD on the top 8 principal components: a few dozen images per cell cannot fit a 16-d covariance


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID's formula), on the top FD_DIMS."""
    a, b = a[:, :FD_DIMS], b[:, :FD_DIMS]
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr sqrt(A B) = Σ sqrt(eig(√A B √A)), symmetric and PSD, so numpy's eigh does (no scipy here).
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(w.clip(0))) @ v.T
    cross = np.sqrt(np.linalg.eigvalsh(root_a @ cov_b @ root_a).clip(0)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def cmd_score(args: argparse.Namespace) -> None:
    """Faithfulness, FD, masks against segment and the evaluator; tables.md, results.json and scfg.png."""
    out = Path(args.out)
    model = load_evaluator(out)
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    n_captions = 1 + max(r["key"][2] for r in rows)
    scenes = captions(n_captions)
    _, real_feats = predict(model, [s.image for s in scenes])
    seg = attnseg.Segmentor.from_pretrained(None, tau=0.0)
    cells: dict[tuple[float, str], dict] = {}
    for r in rows:
        cfg, mode, i = r["key"]
        cell = cells.setdefault(
            (cfg, mode), {"imgs": [], "seed_idx": [], "captions": [], "secs": [], "rates": []}
        )
        cell["secs"].append(r["seconds_per_image"])
        cell["rates"].append(r["rate_mean"])
        for k, name in enumerate(r["names"]):
            cell["imgs"].append((name, i))
            cell["seed_idx"].append(k)
    results = []
    for (cfg, mode), cell in sorted(cells.items()):
        images = [Image.open(out / "images" / f"{name}.png").convert("RGB") for name, _ in cell["imgs"]]
        probs, feats = predict(model, images)
        per_seed: dict[int, list] = {}
        for (_, i), k, p in zip(cell["imgs"], cell["seed_idx"], probs):
            named_c, named_p = named_labels(scenes[i].caption, scenes[i].named)
            per_seed.setdefault(k, []).append(
                (float(np.mean(p[named_c])), float(np.mean(p[named_p])) if named_p else None)
            )
        faith = [np.mean([c for c, _ in v]) for v in per_seed.values()]
        pairs = [np.mean([q for _, q in v if q is not None]) for v in per_seed.values()]
        seeds = sorted(per_seed)
        seed_idx = np.array(cell["seed_idx"])
        caption_idx = np.array([i for _, i in cell["imgs"]])
        fd_per_seed = [frechet(feats[seed_idx == k], real_feats[caption_idx[seed_idx == k]]) for k in seeds]
        row = {
            "cfg": cfg,
            "mode": mode,
            "images": len(images),
            "captions": len({i for _, i in cell["imgs"]}),
            "seeds": len(seeds),
            "class_faithfulness": float(np.mean(faith)),
            "class_faithfulness_seed_sd": float(np.std(faith)),
            "pair_faithfulness": float(np.mean(pairs)),
            "pair_faithfulness_seed_sd": float(np.std(pairs)),
            "fd": float(np.mean(fd_per_seed)),
            "fd_seed_sd": float(np.std(fd_per_seed)),
            "s_per_image": float(np.median(cell["secs"])),
            "rate_mean": float(np.mean(cell["rates"])),
        }
        if mode == "s-cfg goca":
            row |= _mask_scores(out, cell, probs, seg)
        results.append(row)
        print(row, flush=True)
    # The floor: rendered scenes of other captions (test split, seed 1) against the same references.
    others = [s.image for _, s in render_scenes("test", n_captions, seed=1)]
    floor = frechet(predict(model, others)[1], real_feats)
    real_probs, _ = predict(model, [s.image for s in scenes])
    real_faith = _named_recall(scenes, real_probs)
    summary = {"rows": results, "fd_real_vs_other_real": floor, "rendered_faithfulness": real_faith}
    for name in ("windows.json", "timing.json", "classifier.json"):
        if (out / name).exists():
            summary[name.removesuffix(".json")] = json.loads((out / name).read_text())
    write_json(out / "results.json", summary)
    (out / "tables.md").write_text(tables(summary))
    plot(results, out / "scfg.png")
    print(tables(summary))


def _mask_scores(out: Path, cell: dict, probs: np.ndarray, seg) -> dict:
    """Generation masks against `attnseg segment` on the same image (mIoU), and against the evaluator."""
    meter = ConfusionMeter(N_CLASSES + 1)
    shown = agreed = 0
    for (name, _), p in zip(cell["imgs"], probs):
        data = np.load(out / "images" / f"{name}_masks.npz")
        scores = torch.from_numpy(data["scores"].astype(np.float32))
        image = Image.open(out / "images" / f"{name}.png").convert("RGB")
        ref, mine = _mask_pair(_classes_of(out, name), scores, seg, image)
        meter.update(torch.from_numpy(mine), torch.from_numpy(ref))
        for cid in np.unique(mine):
            if cid and (mine == cid).mean() >= 0.02:  # a class the masks show on 2% of the image or more
                shown += 1
                agreed += bool(p[cid - 1] > 0.5)
    return {
        "masks_vs_segment_miou": _miou_over_truth(meter),
        "masks_shown_present": agreed / max(1, shown),
    }


_CLASSES_CACHE: dict[str, list[str]] = {}


def _classes_of(out: Path, name: str) -> list[str]:
    if not _CLASSES_CACHE:
        for line in (out / "records.jsonl").read_text().splitlines():
            r = json.loads(line)
            for n in r["names"]:
                _CLASSES_CACHE[n] = r["classes"]
    return _CLASSES_CACHE[name]


def tables(summary: dict) -> str:
    """The Markdown tables of docs/GENERATE.md."""
    lines = [
        "| cfg | guidance | images (captions × seeds) | class faithfulness | colour–thing faithfulness | FD | s/image | mean rate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['cfg']:g} | {r['mode']} | {r['images']} ({r['captions']} × {r['seeds']}) | "
            f"{100 * r['class_faithfulness']:.1f} ± {100 * r['class_faithfulness_seed_sd']:.1f} | "
            f"{100 * r['pair_faithfulness']:.1f} ± {100 * r['pair_faithfulness_seed_sd']:.1f} | "
            f"{r['fd']:.2f} ± {r['fd_seed_sd']:.2f} | {r['s_per_image']:.2f} | {r['rate_mean']:.3f} |"
        )
    faith = summary["rendered_faithfulness"]
    lines += [
        "",
        f"Rendered scenes of the same captions: class faithfulness {100 * faith[0]:.1f}, colour–thing "
        f"{100 * faith[1]:.1f}; FD of rendered scenes of other captions: {summary['fd_real_vs_other_real']:.2f}.",
    ]
    masks = [r for r in summary["rows"] if "masks_vs_segment_miou" in r]
    if masks:
        lines += [
            "",
            "| cfg | masks vs `attnseg segment` (mIoU) | classes the masks show that the evaluator finds |",
            "|---|---|---|",
        ]
        lines += [
            f"| {r['cfg']:g} | {r['masks_vs_segment_miou']:.1f} | {100 * r['masks_shown_present']:.1f}% |"
            for r in masks
        ]
    if "windows" in summary:
        w = summary["windows"]
        lines += [
            "",
            f"| steps the masks read (cfg {w['cfg']:g}, {w['captions']} captions) | mIoU vs segment |",
            "|---|---|",
        ]
        lines += [f"| last {100 * r['read_last']:.0f}% | {r['miou']:.1f} |" for r in w["rows"]]
    if "timing" in summary:
        t = summary["timing"]
        lines += [
            "",
            f"| guidance | s/image (median, {t['captions']} captions × {t['n']}) | ratio to cfg |",
            "|---|---|---|",
        ]
        lines += [f"| {m} | {v['median_s']:.2f} | {v['ratio_to_cfg']:.2f} |" for m, v in t["modes"].items()]
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    """Class faithfulness and FD against cfg, one line per guidance (PIL, no plotting library)."""
    font = ImageFont.load_default()
    img = Image.new("RGB", (760, 320), "white")
    d = ImageDraw.Draw(img)
    colours = {"cfg": (90, 90, 90), "s-cfg vanilla": (200, 60, 60), "s-cfg goca": (40, 90, 200)}
    cfgs = sorted({r["cfg"] for r in results})
    for panel, (key, title) in enumerate((("class_faithfulness", "class faithfulness"), ("fd", "FD"))):
        x0, y0, w, h = 50 + panel * 380, 30, 300, 240
        vals = [r[key] for r in results]
        lo, hi = min(vals), max(vals)
        lo, hi = lo - 0.05 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9)
        d.rectangle([x0, y0, x0 + w, y0 + h], outline="black")
        d.text((x0, 8), f"{title} vs cfg", fill="black", font=font)
        d.text((x0 - 45, y0), f"{hi:.3g}", fill="black", font=font)
        d.text((x0 - 45, y0 + h - 10), f"{lo:.3g}", fill="black", font=font)
        xs = {c: x0 + 20 + (w - 40) * (i / max(1, len(cfgs) - 1)) for i, c in enumerate(cfgs)}
        for c, x in xs.items():
            d.text((x - 8, y0 + h + 6), f"{c:g}", fill="black", font=font)
        for k, (mode, col) in enumerate(colours.items()):
            pts = [
                (xs[r["cfg"]], y0 + h - h * (r[key] - lo) / (hi - lo)) for r in results if r["mode"] == mode
            ]
            if len(pts) > 1:
                d.line(pts, fill=col, width=2)
            for x, y in pts:
                d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=col)
            d.text((x0 + 8, y0 + 8 + 12 * k), mode, fill=col, font=font)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("classifier")
    p.add_argument("--n", type=int, default=2000, help="rendered train scenes")
    p.add_argument("--epochs", type=int, default=1000, help="full-batch steps of the linear head")
    p.add_argument("--check", type=int, default=500, help="rendered test scenes (seed + 1) it is checked on")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_classifier)
    p = sub.add_parser("generate")
    p.add_argument("--captions", type=int, default=32)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--cfg", type=float, nargs="+", default=[7.5, 3.0])
    p.add_argument("--steps", type=int, default=25)
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("windows")
    p.add_argument("--captions", type=int, default=24)
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--read-last", type=float, nargs="+", default=[1.0, 0.5, 0.2, 0.08])
    p.set_defaults(func=cmd_windows)
    p = sub.add_parser("time")
    p.add_argument("--captions", type=int, default=8)
    p.add_argument("--n", type=int, default=4, help="images per caption (one batch)")
    p.set_defaults(func=cmd_time)
    p = sub.add_parser("score")
    p.set_defaults(func=cmd_score)
    for p in sub.choices.values():
        p.add_argument("--out", default="runs/scfg")
        p.add_argument("--model", default=None)
        p.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
