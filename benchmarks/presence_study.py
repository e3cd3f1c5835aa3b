"""Research for the presence step: which named classes are in a world scene, scored from one open pass.

    attnseg world render --split test --n 200 --seed 0 --out world-data/tune
    python benchmarks/presence_study.py --root world-data/tune --n 200 [--model world-m32] [--method goca]
        [--max-tokens 20] [--denoise] [--out runs/presence-study.json]

Every world class is named (the open protocol). For each candidate presence score it sweeps a threshold and
prints, at the threshold with the best mIoU of the "mask" segmentation (absent classes get no pixels, one
forward), presence precision / recall / F1 over (scene, class) pairs and that mIoU; then the chosen
candidate's "rescore" (the method rerun on the same capture with the kept classes only, one forward) and
"two-pass" (a second forward whose prompt names the kept classes only) segmentations, and the same with the
ground truth's classes as the decision (the ceiling of each scheme). With `--candidate C --threshold T
--weighted P,Q` it also scores the weighted labels (`PresenceConfig.labels`, the shipped rule) of candidate C
at weight powers P, Q. τ 0 (the world has no background).
Tune split only: thresholds chosen here are never chosen on the split that is reported.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from attnseg import Segmentor
from attnseg.cli import parse_settings, setting_pair
from attnseg.eval.metrics import ConfusionMeter
from attnseg.method.labels import assign_labels, upsample
from attnseg.method.layers import combine_layers
from attnseg.method.pipeline import _layer_weights, run_method
from attnseg.method.presence import naming_gain, presence_weights, restrict_layout, weighted_labels
from attnseg.method.rescale import class_maps, content_sum
from attnseg.prompts import parse_classes, with_rest_column
from attnseg.world.render import CLASSES
from attnseg.world.scaling import read_rows

NAMES = [c.name for c in CLASSES]
IDS = [c.id for c in CLASSES]
N_IDS = 1 + max(IDS)  # world ids; 0 is background, which τ 0 never gives


def capture(seg: Segmentor, image: Image.Image, names: list[str], seed: int = 0, per_prompt: int = 0):
    """The open pass: plans, capture (one row per prompt); per_prompt > 0 names that many classes per prompt."""
    specs = parse_classes(names)
    if per_prompt:
        chunks = [list(range(i, min(i + per_prompt, len(specs)))) for i in range(0, len(specs), per_prompt)]
        raw = [seg.builder._plan(specs, c, [])[0] for c in chunks]
        keep = max(p.n_tokens for p in raw)
        plans = [with_rest_column(p, keep) for p in raw]
    else:
        plans = seg.builder.build(specs, [])
    keep = max(p.n_tokens for p in plans)
    pixels = seg._pixels([image]).repeat_interleave(len(plans), 0)
    cap, _ = seg.backbone.capture(
        pixels, [p.text for p in plans], keep, seg.config, torch.Generator().manual_seed(seed)
    )
    return plans, cap


def features(seg: Segmentor, plans, cap) -> dict[str, np.ndarray]:
    """Candidate presence scores, one per named class (K), from the open pass."""
    cfg = seg.config
    k_all = sum(len(p.class_indices) for p in plans)
    shares, raws, specials, starts = [None] * k_all, [None] * k_all, [], []
    share_maps = []  # per prompt: K_j×P, relative shares
    owner = []
    for j, plan in enumerate(plans):
        c = cap.rows([j])
        maps = c.cross
        w = _layer_weights(c, cfg, 1)
        attn = combine_layers(maps, c.grids, w, c.map_size)[0:1]  # 1×T×h×w
        x = class_maps(attn, plan.layout.class_tokens)[0]  # K_j×h×w
        z = content_sum(attn, plan.layout.content_tokens)[0]
        k_j = len(plan.layout.class_tokens) + len(plan.layout.background_tokens)
        y = x / z.clamp_min(1e-12) * k_j  # share relative to a uniform split over the prompt's entities
        sp = attn[0, plan.layout.special_tokens].sum(0)  # h×w
        st = attn[0, 0]
        for local, kk in enumerate(plan.class_indices):
            shares[kk] = y[local]
            raws[kk] = x[local]
        specials.append(sp)
        starts.append(st)
        share_maps.append((y, plan.class_indices, c.affinity))
        owner.extend(plan.class_indices)
    y_all = torch.stack(shares)  # K×h×w
    x_all = torch.stack(raws)
    sp = torch.stack(specials).mean(0)
    st = torch.stack(starts).mean(0)
    k, h, w = y_all.shape
    win = torch.nn.functional.one_hot(y_all.argmax(0), k).permute(2, 0, 1).float()  # K×h×w
    # refined shares: propagate each prompt's shares with its own affinity (a weighted average keeps the scale)
    refined = [None] * k_all
    for y, idx, aff in share_maps:
        if aff is not None and cfg.refine_steps:
            xx = y.reshape(y.shape[0], -1).T
            for _ in range(cfg.refine_steps):
                xx = aff[0].to(xx) @ xx
            yr = xx.T.reshape(y.shape)
        else:
            yr = y
        for local, kk in enumerate(idx):
            refined[kk] = yr[local]
    yr_all = torch.stack(refined)
    win_r = torch.nn.functional.one_hot(yr_all.argmax(0), k).permute(2, 0, 1).float()
    flat = y_all.reshape(k, -1)
    ratio = x_all / (x_all + sp[None]).clamp_min(1e-12)
    sot = x_all / (x_all + st[None]).clamp_min(1e-12)
    won = win.reshape(k, -1)
    f = {
        "share_mean": flat.mean(1),
        "share_p95": flat.quantile(0.95, dim=1),
        "share_max": flat.amax(1),
        "raw_mean": x_all.reshape(k, -1).mean(1) * k_all,
        "raw_p95": x_all.reshape(k, -1).quantile(0.95, dim=1) * k_all,
        "win": win.reshape(k, -1).mean(1),
        "win_refined": win_r.reshape(k, -1).mean(1),
        "special_ratio_p95": ratio.reshape(k, -1).quantile(0.95, dim=1),
        "start_ratio_p95": sot.reshape(k, -1).quantile(0.95, dim=1),
        "special_ratio_won": (ratio.reshape(k, -1) * won).sum(1) / won.sum(1).clamp_min(1),
        "share_won": (flat * won).sum(1) / won.sum(1).clamp_min(1) * (won.sum(1) > 0),
    }
    return {n: v.float().numpy() for n, v in f.items()}


@torch.no_grad()
def denoise_gain(
    seg: Segmentor,
    image: Image.Image,
    timesteps: list[int],
    open_scores: torch.Tensor,
    seed: int = 0,
    draws: int = 1,
    with_add: bool = False,
) -> dict[str, np.ndarray]:
    """Denoising-error candidates per class (K): how much naming the class lowers the epsilon error.

    loo: error with every class but c named minus error with all named (relative); add: error with the empty
    prompt minus error with c alone; *_local: the same per pixel, averaged under the class's open-pass map.
    """
    bb = seg.backbone
    k = len(NAMES)
    full = seg.builder.build(parse_classes(NAMES), [])[0].text
    loo = [seg.builder.build(parse_classes(NAMES[:c] + NAMES[c + 1 :]), [])[0].text for c in range(k)]
    single = [seg.builder.build(parse_classes([n]), [])[0].text for n in NAMES] if with_add else []
    prompts = [full, *loo, *([""] + single if with_add else [])]
    cond = bb.encode_text(prompts)
    lat = bb.encode_images(seg._pixels([image]))
    h, w = lat.shape[-2:]
    weight = torch.nn.functional.interpolate(open_scores[None], size=(h, w), mode="area")[0]  # K×h×w
    weight = weight / weight.sum(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    g = torch.Generator().manual_seed(seed)
    out: dict[str, np.ndarray] = {}
    rise_sum = torch.zeros(k, h, w)  # the relative rise per pixel, summed over levels and draws
    for t in timesteps:
        acc = {"loo": 0.0, "add": 0.0, "loo_local": 0.0, "add_local": 0.0}
        for _ in range(draws):
            noise = torch.randn(lat.shape, generator=g)
            tt = torch.full((len(prompts),), t, dtype=torch.long)
            noisy = bb.components["scheduler"].add_noise(lat, noise, tt[:1]).expand(len(prompts), -1, -1, -1)
            eps = bb.denoiser(noisy, tt, **cond).sample
            err = ((eps - noise) ** 2).mean(1)  # R×h×w
            e_full, e_loo = err[0], err[1 : k + 1]
            rise_sum += (e_loo - e_full) / e_full.mean()
            acc["loo"] += ((e_loo - e_full).mean(dim=(1, 2)) / e_full.mean()).numpy()
            acc["loo_local"] += (((e_loo - e_full) * weight).sum(dim=(1, 2)) / e_full.mean()).numpy()
            if not with_add:
                continue
            e_empty, e_single = err[k + 1], err[k + 2 :]
            acc["add"] += ((e_empty - e_single).mean(dim=(1, 2)) / e_empty.mean()).numpy()
            acc["add_local"] += (((e_empty - e_single) * weight).sum(dim=(1, 2)) / e_empty.mean()).numpy()
        for name, v in acc.items():
            if isinstance(v, float):
                continue
            out[f"denoise_{name}_t{t}"] = v / draws
    for name in ("loo", "loo_local") + (("add", "add_local") if with_add else ()):
        out[f"denoise_{name}_mean"] = np.mean([out[f"denoise_{name}_t{t}"] for t in timesteps], 0)
    rise = rise_sum / (len(timesteps) * draws)
    RISE_MAPS.append((rise.numpy(), weight.numpy()))
    out |= rise_map_scores(rise, weight)
    return out


RISE_MAPS: list[tuple[np.ndarray, np.ndarray]] = []  # per scene: K×h×w rise map and localising weights


def rise_map_scores(rise_khw: torch.Tensor, weight_khw: torch.Tensor) -> dict[str, np.ndarray]:
    """Spatial statistics of the level-averaged rise map (where leaving the name out hurts), per class."""
    flat = rise_khw.flatten(1)
    blur = torch.nn.functional.avg_pool2d(rise_khw[:, None], 3, 1, 1)[:, 0].flatten(1)
    # The shipped score (attnseg.method.presence.naming_gain) on the averaged rise, at sharpness 2 and 4.
    no_rise, unit = torch.zeros_like(rise_khw[:, None]), torch.ones(1, *rise_khw.shape[1:])
    sharp = {p: naming_gain(rise_khw[:, None], no_rise, weight_khw, unit, float(p)).numpy() for p in (2, 4)}
    top = weight_khw.flatten(1) >= weight_khw.flatten(1).quantile(0.9, dim=1, keepdim=True)
    won = weight_khw.argmax(0)
    won_mask = torch.stack([won == c for c in range(len(rise_khw))]).flatten(1)
    won_mask = torch.where(won_mask.any(1, keepdim=True), won_mask, top)
    return {
        "rise_p90": flat.quantile(0.9, dim=1).numpy(),
        "rise_p98": flat.quantile(0.98, dim=1).numpy(),
        "rise_blur_max": blur.max(1).values.numpy(),
        "rise_local_p2": sharp[2],
        "rise_local_p4": sharp[4],
        "rise_top_map": ((flat * top).sum(1) / top.sum(1)).numpy(),
        "rise_won": ((flat * won_mask).sum(1) / won_mask.sum(1)).numpy(),
        "rise_local_blur_max": (blur * weight_khw.flatten(1) / weight_khw.flatten(1).amax(1, keepdim=True))
        .max(1)
        .values.numpy(),
    }


def segment_from(seg: Segmentor, plans, cap, keep_k: np.ndarray, scheme: str, image, open_scores):
    """World-id prediction for one scene with the kept classes, by scheme: mask | rescore | twopass | blend."""
    kept = [i for i in range(len(NAMES)) if keep_k[i]]
    if scheme == "mask":
        sc = open_scores.clone()
        sc[~torch.as_tensor(keep_k)] = -1.0
        lab = assign_labels(sc, 0.0).numpy()
        return np.array([0] + IDS)[lab]
    if scheme == "rescore":
        lab = assign_labels(rescored_maps(seg, plans, cap, keep_k)[kept], 0.0).numpy()
        return np.array([0] + [IDS[i] for i in kept])[lab]
    out = seg.segment(image, [NAMES[i] for i in kept])
    if scheme == "blend":  # the second forward's maps averaged with the open pass's, kept classes only
        sc = 0.5 * (out.scores.float() + open_scores[torch.as_tensor(keep_k)])
        lab = assign_labels(sc, 0.0).numpy()
        return np.array([0] + [IDS[i] for i in kept])[lab]
    return np.array([0] + [IDS[i] for i in kept])[out.labels.numpy()]


def rescored_maps(seg: Segmentor, plans, cap, keep_k: np.ndarray, size=(64, 64)) -> torch.Tensor:
    """K×H×W: the method rerun on the capture with only the kept classes' tokens (0 for the others)."""
    maps = torch.zeros(len(NAMES), *size)
    for j, plan in enumerate(plans):
        local = [i for i, kk in enumerate(plan.class_indices) if keep_k[kk]]
        if local:
            out = run_method(cap.rows([j]), restrict_layout(plan.layout, local), seg.config)
            up = upsample(out.class_maps[0][None].float(), size)[0]
            for li, i in enumerate(local):
                maps[plan.class_indices[i]] = up[li]
    return maps


def add_confusion(meter: ConfusionMeter, gt: np.ndarray, pred: np.ndarray) -> None:
    """Count one scene's world-id truth and prediction (void pixels skipped)."""
    meter.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(gt.astype(np.int64)))


def miou_of(meter: ConfusionMeter) -> tuple[float, float]:
    """(mIoU % over the classes in the truth, pixel accuracy %)."""
    scores, seen = meter.compute(), meter.mat[:N_IDS].sum(1)
    miou = float(np.mean([scores.iou[i] for i in IDS if seen[i] > 0]))
    return 100 * miou, 100 * scores.pixel_accuracy


def auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Probability that a present (scene, class) pair scores above an absent one (ties count half)."""
    pos, neg = scores[truth], scores[~truth]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def prf(pred: np.ndarray, truth: np.ndarray) -> dict:
    tp = float((pred & truth).sum())
    p = tp / max(1, pred.sum())
    r = tp / max(1, truth.sum())
    return {"precision": p, "recall": r, "f1": 2 * p * r / max(1e-9, p + r), "dropped": 1 - r}


def _load_features(path: str, n: int) -> dict[str, np.ndarray] | None:
    """Scores saved by an earlier run on the same scenes, or None."""
    if not Path(path).is_file():
        return None
    data = np.load(path)
    return {k: data[k] for k in data.files} if len(data[data.files[0]]) == n else None


def end_to_end(args: argparse.Namespace) -> None:
    """The shipped path: Segmentor with the presence step on (settings from --presence-set), all classes named."""
    settings = {f"presence_{k}": v for k, v in parse_settings(args.presence_set).items()}
    if isinstance(settings.get("presence_timesteps"), list):
        settings["presence_timesteps"] = tuple(settings["presence_timesteps"])
    seg = Segmentor.from_pretrained(
        args.model, args.method, "cpu", "float32", tau=0.0, **parse_settings(args.overrides), **settings
    )
    root = Path(args.root)
    conf = ConfusionMeter(N_IDS)
    said, truth, rows_run = [], [], []
    t0 = time.perf_counter()
    for r in read_rows(root, args.n):
        out = seg.segment(Image.open(root / r["image"]).convert("RGB"), NAMES)
        add_confusion(conf, np.asarray(Image.open(root / r["mask"])), np.array([0] + IDS)[out.labels.numpy()])
        said.append([out.meta["presence"]["classes"][n]["present"] for n in NAMES])
        truth.append(np.isin(IDS, r["present"]))
        rows_run.append(sum(out.meta["forwards"].values()))
    miou, acc = miou_of(conf)
    line = {
        "presence": dict(args.presence_set),
        "n": args.n,
        "miou": round(miou, 1),
        "pixel_acc": round(acc, 1),
    }
    line |= {k: round(v, 3) for k, v in prf(np.array(said), np.array(truth)).items()}
    line |= {"forward_rows": float(np.mean(rows_run)), "seconds": (time.perf_counter() - t0) / args.n}
    print(json.dumps(line), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--method", default="goca")
    ap.add_argument("--root", default="world-data/tune")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=None, help="split the 13 classes over prompts")
    ap.add_argument("--per-prompt", type=int, default=0, help="classes per prompt of the open pass")
    ap.add_argument("--denoise", action="store_true", help="also the denoising-error candidate")
    ap.add_argument("--draws", type=int, default=1)
    ap.add_argument("--with-add", action="store_true", help="also error(empty) - error(class alone)")
    ap.add_argument("--only-auc", action="store_true")
    ap.add_argument("--timesteps", default="100,300,500")
    ap.add_argument("--set", dest="overrides", action="append", type=setting_pair, default=[])
    ap.add_argument("--out", default=None)
    ap.add_argument("--features", default=None, help="an .npz to save the scores to, or reuse them from")
    ap.add_argument("--threshold", default=None, help="score only these thresholds of one candidate: a,b,c")
    ap.add_argument("--candidate", default=None, help="with --threshold: the candidate to score")
    ap.add_argument("--weighted", default=None, help="also the weighted labels at these weight powers: a,b")
    ap.add_argument(
        "--floor", default="0", help="with --weighted: weight 0 below these fractions of the best"
    )
    ap.add_argument(
        "--second-weighted",
        action="store_true",
        help="with --weighted: a second forward naming the found classes",
    )
    ap.add_argument(
        "--rescore-weighted",
        action="store_true",
        help="with --weighted: rerun the method over weighted classes",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared machine)")
    ap.add_argument(
        "--presence-set",
        action="append",
        type=setting_pair,
        default=None,
        metavar="KEY=VALUE",
        help="score the shipped path (Segmentor, presence on) with these PresenceConfig fields instead",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.presence_set is not None:
        return end_to_end(args)
    root = Path(args.root)
    seg = Segmentor.from_pretrained(  # the study runs its own presence schemes on the plain segmentor
        args.model, args.method, "cpu", "float32", presence="off", **parse_settings(args.overrides)
    )
    if args.max_tokens:
        seg.builder.max_tokens = args.max_tokens
    rows = read_rows(root, args.n)
    truth, feats, cache = [], [], []
    t0 = time.perf_counter()
    saved = _load_features(args.features, len(rows)) if args.features else None
    for i, r in enumerate(rows):
        image = Image.open(root / r["image"]).convert("RGB")
        gt = np.asarray(Image.open(root / r["mask"]))
        plans, cap = capture(seg, image, NAMES, per_prompt=args.per_prompt)
        maps = [None] * len(NAMES)
        for j, plan in enumerate(plans):
            out = run_method(cap.rows([j]), plan.layout, seg.config)
            for li, kk in enumerate(plan.class_indices):
                maps[kk] = out.class_maps[0, li]
        open_scores = upsample(torch.stack(maps)[None].float(), (64, 64))[0]
        if saved is not None:
            f = {k: v[i] for k, v in saved.items()}
        else:
            f = features(seg, plans, cap)
        if args.denoise and saved is None:
            ts = [int(t) for t in args.timesteps.split(",")]
            # levels averaged in pairs as well, to see what fewer levels cost
            f |= denoise_gain(seg, image, ts, open_scores, draws=args.draws, with_add=args.with_add)
        feats.append(f)
        truth.append(np.isin(IDS, r["present"]))
        cache.append((image, gt, plans, cap, open_scores))
        if (i + 1) % 10 == 0 or i + 1 == len(rows):
            print(f"scene {i + 1}/{len(rows)}, {time.perf_counter() - t0:.0f} s", flush=True)
    sec = (time.perf_counter() - t0) / len(rows)
    if args.features and saved is None:
        Path(args.features).parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.features, **{k: np.stack([f[k] for f in feats]) for k in feats[0]})
        if RISE_MAPS:
            np.savez(
                Path(args.features).with_suffix(".maps.npz"),
                rise=np.stack([r for r, _ in RISE_MAPS]),
                weight=np.stack([w for _, w in RISE_MAPS]),
            )
    truth_a = np.stack(truth)
    n_prompts = len(cache[0][2])
    report = {"n": len(rows), "prompts": n_prompts, "seconds_per_image_features": sec, "candidates": {}}

    def seg_conf(decisions, scheme):
        conf = ConfusionMeter(N_IDS)
        for (image, gt, plans, cap, sc), keep in zip(cache, decisions):
            add_confusion(conf, gt, segment_from(seg, plans, cap, keep, scheme, image, sc))
        return miou_of(conf)

    def decide(scores, thr, relative):
        s = scores / scores.max(1, keepdims=True).clip(1e-12) if relative else scores
        keep = s >= thr
        keep[np.arange(len(s)), scores.argmax(1)] = True  # the best class is always kept
        return keep

    report["no_presence"] = seg_conf([np.ones(len(NAMES), bool)] * len(rows), "mask")
    report["gt_presence"] = {s: seg_conf(truth_a, s) for s in ("mask", "rescore", "twopass")}
    print(json.dumps({k: report[k] for k in ("n", "prompts", "no_presence", "gt_presence")}))
    best = None
    stuff = np.array([c.kind == "stuff" for c in CLASSES])
    for name in [] if args.threshold is not None else feats[0]:
        scores = np.stack([f[name] for f in feats])
        aucs = {
            "auc": auc(scores.ravel(), truth_a.ravel()),
            "auc_stuff": auc(scores[:, stuff].ravel(), truth_a[:, stuff].ravel()),
            "auc_things": auc(scores[:, ~stuff].ravel(), truth_a[:, ~stuff].ravel()),
        }
        print(name, json.dumps({k: round(v, 3) for k, v in aucs.items()}), flush=True)
        report.setdefault("auc", {})[name] = aucs
        if args.only_auc:
            continue
        for relative in (False, True):
            lo, hi = np.quantile(scores, 0.02), np.quantile(scores, 0.98)
            grid = np.linspace(0.02, 1.0, 50) if relative else np.linspace(lo, hi, 50)
            results = []
            for thr in grid:
                keep = decide(scores, thr, relative)
                q = prf(keep, truth_a)
                results.append((q["f1"], thr, q))
            f1, thr, q = max(results, key=lambda x: x[0])
            # mIoU of the mask scheme at the F1-best threshold and its neighbours (cheap: no forward)
            cands = sorted({float(t) for _, t, _ in sorted(results, key=lambda x: -x[0])[:5]})
            mious = [(seg_conf(decide(scores, t, relative), "mask")[0], t) for t in cands]
            m, t_best = max(mious)
            q = prf(decide(scores, t_best, relative), truth_a)
            key = f"{name}{' (relative to best)' if relative else ''}"
            row = {"threshold": round(t_best, 4), "mask_miou": round(m, 1)} | {
                k: round(v, 3) for k, v in q.items()
            }
            report["candidates"][key] = row
            print(key, json.dumps(row), flush=True)
            if best is None or m > best[0]:
                best = (m, name, relative, t_best)
    if args.threshold is not None:
        choices = [(args.candidate, False, float(t)) for t in args.threshold.split(",")]
    else:
        choices = [] if best is None else [best[1:]]  # --only-auc chooses nothing
    report["chosen"] = []
    for name, relative, thr in choices:
        scores = np.stack([f[name] for f in feats])
        keep = decide(scores, thr, relative)
        row = {"candidate": name, "relative": relative, "threshold": thr} | {
            k: round(v, 3) for k, v in prf(keep, truth_a).items()
        }
        row |= {s: seg_conf(keep, s) for s in ("mask", "rescore", "twopass", "blend")}
        row["mask_clean_scenes"] = sum(
            set(np.unique(segment_from(seg, plans, cap, k, "mask", image, sc))) <= set(np.unique(gt))
            for (image, gt, plans, cap, sc), k in zip(cache, keep)
        )
        for power in [] if args.weighted is None else [float(g) for g in args.weighted.split(",")]:
            for floor in [float(f) for f in args.floor.split(",")]:
                conf = ConfusionMeter(N_IDS)  # the weighted rule (PresenceConfig.labels) at this power
                clean = 0
                for (image, gt, plans, cap, sc), class_scores in zip(cache, scores):
                    class_scores = torch.as_tensor(class_scores)
                    weights = presence_weights(class_scores, power)
                    weights[class_scores < floor * class_scores.max()] = 0.0
                    weights[class_scores.argmax()] = 1.0
                    if args.rescore_weighted:  # the method again over the classes that keep a weight
                        sc = rescored_maps(seg, plans, cap, (weights > 0).numpy())
                    no_bg = torch.zeros(sc.shape[1:], dtype=torch.bool)  # τ 0: no pixel is background
                    if args.second_weighted:  # a second forward naming the found classes, weighted again
                        found = weighted_labels(sc, weights, no_bg)[1]
                        kept = found.nonzero().flatten().tolist()
                        second = seg.segment(image, [NAMES[i] for i in kept]).scores.float()
                        sc = torch.zeros_like(sc)
                        sc[kept] = second
                    labels, _ = weighted_labels(sc, weights, no_bg)
                    pred = np.array([0] + IDS)[labels.numpy()]
                    add_confusion(conf, gt, pred)
                    clean += set(np.unique(pred)) <= set(np.unique(gt))
                row[f"weighted_{power:g}_floor_{floor:g}"] = miou_of(conf) + (clean,)
        report["chosen"].append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
