"""attnseg's capture side by side with the plain pipeline and the store-everything ways: time and exact peaks.

    python benchmarks/compare_capture.py --family sd15 [--repeats 3] [--device cpu|cuda]
    python benchmarks/compare_capture.py --model world-m32
    python benchmarks/compare_capture.py --arch flux [--blocks 2]     # also sdxl, pixart-sigma

Configurations, each run in its own process (interleaved, `--repeats` rounds, medians):
  plain             VAE encode + text encode + one denoiser forward, no capture
  attnseg           `Segmentor.segment` (the streaming reducer; labels)
  store-every-head  every head's cross- and self-attention map stored in fp16 during the forward, the
                    method run on them afterwards (the reference code's way; labels, compared with attnseg's)
  store-cross       every head's cross-attention map stored in fp16, self-attention fused (DAAM's way)
Peaks are exact: on a CPU the kernel's peak RSS is reset through /proc/self/clear_refs ("5") and VmHWM read
back; on CUDA torch.cuda.max_memory_allocated. "forward" is the peak during the denoiser forward over the
memory in use when it starts; "run" the peak of the whole call over its start. The children run with glibc's
mmap threshold fixed, so freed tensors leave the RSS at once and a peak is not hidden by memory kept from
an earlier run.

`--arch` builds the denoiser of SDXL, PixArt-Σ or FLUX.1 at its real widths, head counts and text length
(1024², random weights from config) with the depth cut to a few blocks, and times the denoiser forward alone
(text conditioning is random); the full-depth figures are extrapolated per block and labelled as such.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("plain", "attnseg", "store-every-head", "store-cross")
CLASSES = ["cat", "grass", "wall"]
ARCHS = ("sdxl", "pixart-sigma", "flux")


# -- peaks --------------------------------------------------------------------------------------------------
class Peak:
    """Peak memory over a starting point: RSS on a CPU (VmHWM after a reset), allocated bytes on CUDA."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    @staticmethod
    def _status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"{key} not in /proc/self/status")

    def start(self) -> int:
        """Reset the peak to what is in use now; returns that."""
        gc.collect()
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()
        Path("/proc/self/clear_refs").write_text("5")
        return self._status("VmRSS")

    def for_timing(self) -> None:
        """After the measured run: let glibc keep freed memory again, so timed runs pay no fresh page faults.

        The children start with a fixed 64 KiB mmap threshold (every tensor mmapped and returned on free: RSS
        follows live memory), which costs a page fault per fresh page: right for peaks, wrong for times.
        """
        if self.cuda:
            return
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD: glibc's largest
        libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD

    def peak(self) -> int:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return self._status("VmHWM")


# -- the store-everything processors (installed in the child by patching `attend`) ---------------------------
class Store:
    """Keeps every head's maps of the read calls, fp16, as the reference code and DAAM do."""

    def __init__(self, self_too: bool) -> None:
        self.self_too = self_too
        self.events: list[tuple] = []
        self.bytes = 0

    def attend(self, q, k, v, *, scale, mask, plan, reducer, out_proj_weight=None):
        """The attention output, with the probabilities of every head computed explicitly and stored."""
        import torch.nn.functional as F

        from attnseg.method.streaming import _restrict

        if plan is None or not plan.reads:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        rows = range(q.shape[2])[plan.image_queries]
        img = slice(rows.start, rows.stop)
        grid = reducer.grid_for(len(rows))
        if plan.reference_query and self.self_too:
            feature = q[:, :, img].transpose(1, 2).reshape(q.shape[0], len(rows), -1)
            self.events.append(("reference", feature.clone(), grid))
        wants_self = plan.read_self and self.self_too
        if not (plan.read_cross or wants_self):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        logits = (q * scale) @ k.transpose(-1, -2)  # B×H×L×L_k, every head at once (baddbmm in the reference)
        if mask is not None:
            logits = logits + mask
        probs = logits.softmax(-1)
        del logits
        out = probs.to(v.dtype) @ v
        image_probs = probs[:, :, img]
        if plan.read_cross:
            cross = _restrict(image_probs, plan.text_cols, plan.joint).half()
            self._keep(("cross", plan.layer, cross, grid, out[:, :, img].half(), out_proj_weight))
        if wants_self:
            self._keep(("self", plan.layer, _restrict(image_probs, plan.image_cols, plan.joint).half(), grid))
        return out

    def _keep(self, event: tuple) -> None:
        self.events.append(event)
        self.bytes += sum(t.numel() * t.element_size() for t in event if hasattr(t, "numel"))

    def replay(self, reducer) -> None:
        """Run the method's reductions on the stored maps, in forward order (one layer in float32 at a time)."""
        for event in self.events:
            if event[0] == "reference":
                reducer.set_reference(event[1], event[2])
            elif event[0] == "cross":
                _, layer, probs, grid, out, weight = event
                reducer.add_cross(layer, probs.float(), grid, out.float(), weight)
            else:
                _, layer, probs, grid = event
                mean = probs[:, 0].float()
                for h in range(1, probs.shape[1]):  # head by head: one P×P float map at a time
                    mean += probs[:, h].float()
                reducer.add_self(layer, mean / probs.shape[1], grid)
        self.events.clear()


def install_store(backbone, store: Store, replay: bool) -> None:
    """Route every capture processor through `store` (and replay into the reducer after the forward)."""
    import attnseg.backbones.flux as flux
    import attnseg.backbones.processors as processors
    import attnseg.backbones.sd3 as sd3

    for module in (processors, flux, sd3):
        module.attend = store.attend
    capturing = backbone.capturing

    @contextlib.contextmanager
    def storing(plan, reducer):
        with capturing(plan, reducer):
            yield
        if replay:
            store.replay(reducer)

    backbone.capturing = storing


def watch_forward(backbone, peak: Peak, record: dict):
    """Measure the denoiser forward's own peak (over its start) every time it runs."""
    run = backbone.run_denoiser

    def measured(*args, **kwargs):
        base = peak.start()
        out = run(*args, **kwargs)
        record["forward_bytes"] = max(record.get("forward_bytes", 0), peak.peak() - base)
        return out

    backbone.run_denoiser = measured
    return lambda: setattr(backbone, "run_denoiser", run)  # undo: timed runs pay no gc.collect


# -- whole-pipeline child ------------------------------------------------------------------------------------
def _image(size: int, world: bool):
    import numpy as np
    from PIL import Image

    if world:
        from attnseg.world.render import CLASSES as WORLD
        from attnseg.world.render import render_scenes

        scene = next(iter(render_scenes("test", 1, seed=0)))[1]
        names = {c.id: c.name for c in WORLD}
        return Image.fromarray(scene.image), [names[i] for i in scene.present]
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)), list(CLASSES)


def pipeline_child(model: str, mode: str, device: str, dtype: str | None, warmup: int, out: str) -> dict:
    import numpy as np
    import torch

    from attnseg.segmentor import Segmentor

    torch.set_grad_enabled(False)
    seg = Segmentor.from_pretrained(model, device=device, dtype=dtype)
    backbone = seg.backbone
    image, classes = _image(backbone.preset.native_size, world=model.startswith("world"))
    plans = seg.builder.build(__import__("attnseg.prompts", fromlist=["x"]).parse_classes(classes))
    prompts = [p.text for p in plans]
    peak, record = Peak(device), {"mode": mode, "classes": len(classes), "prompts": len(prompts)}
    store = Store(self_too=mode == "store-every-head")
    if mode.startswith("store"):
        install_store(backbone, store, replay=mode == "store-every-head")

    def run():
        if mode in ("attnseg", "store-every-head"):
            return seg.segment(image, classes)
        generator = torch.Generator().manual_seed(0)
        latents = backbone.encode_images(seg._pixels([image]))[[0] * len(prompts)]
        noisy, t = backbone.add_noise(latents, generator)
        cond = backbone.encode_text(prompts)
        if mode == "plain":
            return backbone.run_denoiser(noisy, t, cond)
        plan = backbone.capture_plan(backbone.latent_grid(noisy), seg.config)
        reducer = __import__("attnseg.method.streaming", fromlist=["x"]).StreamingReducer(
            plan, backbone.latent_grid(noisy), max(p.n_tokens for p in plans), seg.config
        )
        with backbone.capturing(plan, reducer):
            return backbone.run_denoiser(noisy, t, cond)

    # Peaks on the first run, in a fresh heap (a warm heap would reuse freed memory and hide growth); the
    # time on the runs after it.
    unwatch = watch_forward(backbone, peak, record)
    base = peak.start()
    start = time.perf_counter()
    result = run()
    first = time.perf_counter() - start
    record["run_bytes"] = peak.peak() - base
    record["stored_bytes"] = store.bytes
    unwatch()
    store.events.clear()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = [] if warmup else [first]  # --warmup 0: the measured run is the timed one (cold)
    if warmup:
        peak.for_timing()
        run()  # fills glibc's heap once under the new thresholds
        store.events.clear()
    for _ in range(warmup):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
        store.events.clear()
    record["seconds"] = min(times)
    if mode in ("attnseg", "store-every-head"):
        np.save(Path(out) / f"{mode}.npy", result.labels.numpy())
        record["capture_store_bytes"] = result.meta["memory"]["capture_store_bytes"]
    return record


# -- cut-depth architectures ---------------------------------------------------------------------------------
# Real widths, heads and text lengths; `depth` is the cut (blocks per transformer stack).
FULL_DEPTH = {"sdxl": 70, "pixart-sigma": 28, "flux": 57}


def build_arch(arch: str, depth: int):
    """(backbone, noisy latents, timestep, conditioning) at 1024², random weights, depth cut to `depth`."""
    import torch

    torch.manual_seed(0)
    if arch == "sdxl":
        from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

        from attnseg.backbones.unet import SDXLBackbone

        unet = UNet2DConditionModel(
            sample_size=128,
            block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, min(2, depth), min(10, depth)),
            attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        ).eval()
        backbone = SDXLBackbone(
            {"unet": unet, "scheduler": EulerDiscreteScheduler()}, "sdxl-cut", "cpu", torch.float32
        )
        cond = {
            "encoder_hidden_states": torch.randn(1, 77, 2048),
            "added_cond_kwargs": {
                "text_embeds": torch.randn(1, 1280),
                "time_ids": torch.tensor([[1024.0] * 2 + [0.0] * 2 + [1024.0] * 2]),
            },
        }
        return backbone, torch.randn(1, 4, 128, 128), torch.tensor([100]), cond, 77
    if arch == "pixart-sigma":
        from diffusers import DDPMScheduler, PixArtTransformer2DModel

        from attnseg.backbones.pixart import PixArtSigmaBackbone

        model = PixArtTransformer2DModel(
            num_attention_heads=16,
            attention_head_dim=72,
            in_channels=4,
            out_channels=8,
            num_layers=depth,
            cross_attention_dim=1152,
            caption_channels=4096,
            sample_size=128,
            patch_size=2,
            norm_type="ada_norm_single",
            use_additional_conditions=False,
        ).eval()
        backbone = PixArtSigmaBackbone(
            {"transformer": model, "scheduler": DDPMScheduler()}, "pixart-cut", "cpu", torch.float32
        )
        cond = {
            "encoder_hidden_states": torch.randn(1, 300, 4096),
            "encoder_attention_mask": torch.ones(1, 300, dtype=torch.long),
            "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
        }
        return backbone, torch.randn(1, 4, 128, 128), torch.tensor([100]), cond, 300
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    from attnseg.backbones.flux import FluxBackbone

    model = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=max(1, depth // 2),
        num_single_layers=max(1, depth - depth // 2),
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    ).eval()
    backbone = FluxBackbone(
        {"transformer": model, "scheduler": FlowMatchEulerDiscreteScheduler()},
        "flux-cut",
        "cpu",
        torch.float32,
    )
    cond = {
        "encoder_hidden_states": torch.randn(1, 512, 4096),
        "pooled_projections": torch.randn(1, 768),
        "txt_ids": torch.zeros(512, 3),
    }
    return backbone, torch.randn(1, 16, 128, 128), torch.tensor([0.15]), cond, 512


def arch_child(arch: str, depth: int, mode: str, device: str) -> dict:
    import torch

    from attnseg.method.streaming import StreamingReducer
    from attnseg.segmentor import config_for

    torch.set_grad_enabled(False)
    backbone, noisy, t, cond, n_text = build_arch(arch, depth)
    # FLUX's published setting reads heads by their mean (METHOD.md); the others GoCA.
    config = config_for(backbone, "goca", **({"head_aggregation": "mean"} if arch == "flux" else {}))
    peak, record = Peak(device), {"mode": mode, "arch": arch, "depth": depth, "text_tokens": n_text}
    store = Store(self_too=mode == "store-every-head")
    if mode.startswith("store"):
        install_store(backbone, store, replay=False)
    latent = backbone.latent_grid(noisy)
    plan = backbone.capture_plan(latent, config)
    reducer = StreamingReducer(plan, latent, 41, config)  # a prompt of about 40 tokens
    waiting: list[str] = []
    set_reference = reducer.set_reference

    def noting(*args, **kwargs):
        waiting.extend(n for n in reducer.pending if n not in waiting)
        return set_reference(*args, **kwargs)

    reducer.set_reference = noting
    base = peak.start()
    start = time.perf_counter()
    if mode == "plain":
        backbone.run_denoiser(noisy, t, cond)
    else:
        with backbone.capturing(plan, reducer):
            backbone.run_denoiser(noisy, t, cond)
    record["seconds"] = time.perf_counter() - start
    record["forward_bytes"] = peak.peak() - base
    record["stored_bytes"] = store.bytes
    record["capture_store_bytes"] = reducer.peak_bytes
    record["transient_bytes"] = reducer.transient_bytes
    record["waiting_layers"] = len(waiting)
    record["blocks"] = len({p.layer for p in plan.plans.values()})
    record["grid"] = list(plan.map_size)
    return record


# -- parent --------------------------------------------------------------------------------------------------
def _child(args, mode: str, out: str, folder: str | None) -> dict:
    baseline = mode.endswith("@baseline")
    mode = mode.removesuffix("@baseline")
    cmd = [sys.executable, __file__, "--device", args.device, "--_child", mode, out]
    if args.arch:
        cmd += ["--arch", args.arch, "--blocks", str(args.blocks)]
    else:
        cmd += ["--model", folder, "--warmup", str(args.warmup)] + (
            ["--dtype", args.dtype] if args.dtype else []
        )
    # A fixed mmap threshold: freed tensors go back to the kernel at once, so RSS follows live memory.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    env |= {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    if baseline:  # another attnseg source tree (e.g. `git archive` of an older commit), same everything else
        env["PYTHONPATH"] = str(Path(args.baseline) / "src")
        cmd[cmd.index(out)] = str(Path(out) / "baseline")
        (Path(out) / "baseline").mkdir(exist_ok=True)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mib(n: float) -> str:
    return f"{n / 2**20:9.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--family", default="sd15", choices=["sd15", "tiny"], help="random-weight model to build"
    )
    parser.add_argument("--model", default=None, help="an embedded model name or a diffusers folder instead")
    parser.add_argument(
        "--arch", default=None, choices=ARCHS, help="cut-depth denoiser at real width instead"
    )
    parser.add_argument("--blocks", type=int, default=2, help="--arch: transformer blocks per stack")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="timed runs after the measured one")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument(
        "--baseline", default=None, help="an older attnseg tree: adds 'attnseg@baseline', run from DIR/src"
    )
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads per child (1: stable on a shared, loaded machine)"
    )
    args = parser.parse_args()
    if args._child:
        mode, out = args._child
        if args.arch:
            record = arch_child(args.arch, args.blocks, mode, args.device)
        else:
            record = pipeline_child(args.model, mode, args.device, args.dtype, args.warmup, out)
        print(json.dumps(record))
        return

    modes = args.modes.split(",") + (["attnseg@baseline"] if args.baseline else [])
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model
        if not args.arch and folder is None:
            sys.path.insert(0, str(Path(__file__).parent))
            from overhead import build

            folder = str(Path(tmp) / "model")
            print(f"building a random-weight {args.family} model ...", file=sys.stderr)
            build(Path(folder), args.family)
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        same, same_baseline = [], []
        load_before = os.getloadavg()
        for round_ in range(args.repeats):  # interleaved: every mode once per round
            for mode in modes:
                runs[mode].append(_child(args, mode, tmp, folder))
                print(f"round {round_ + 1} {mode}: {runs[mode][-1]['seconds']:.2f} s", file=sys.stderr)
            import numpy as np

            if not args.arch and {"attnseg", "store-every-head"} <= set(modes):
                a, b = np.load(Path(tmp) / "attnseg.npy"), np.load(Path(tmp) / "store-every-head.npy")
                same.append(float((a == b).mean()))
            if args.baseline and not args.arch:
                a, b = np.load(Path(tmp) / "attnseg.npy"), np.load(Path(tmp) / "baseline" / "attnseg.npy")
                same_baseline.append(float((a == b).mean()))
    load = os.getloadavg()
    med = {
        m: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "forward_bytes")}
        for m, rs in runs.items()
    }
    for m, rs in runs.items():
        med[m]["run_bytes"] = statistics.median(r.get("run_bytes", r["forward_bytes"]) for r in rs)
        med[m]["stored_bytes"] = rs[0]["stored_bytes"]
    what = (
        f"arch={args.arch} (depth cut to {args.blocks} per stack)"
        if args.arch
        else f"model={args.model or args.family}"
    )
    print(
        f"{what} device={args.device} repeats={args.repeats} (medians) "
        f"load at start {load_before[0]:.1f}, at end {load[0]:.1f},{load[1]:.1f},{load[2]:.1f}"
    )
    plain = med.get("plain")
    print(
        f"{'mode':17s} {'seconds':>8s} {'×plain':>7s} {'fwd MiB':>9s} {'fwd extra':>9s} {'run MiB':>9s} {'stored MiB':>10s}"
    )
    for m in modes:
        row = med[m]
        ratio = row["seconds"] / plain["seconds"] if plain else float("nan")
        extra = row["forward_bytes"] - plain["forward_bytes"] if plain else float("nan")
        print(
            f"{m:17s} {row['seconds']:8.2f} {ratio:7.3f} {_mib(row['forward_bytes'])} {_mib(extra)} "
            f"{_mib(row['run_bytes'])} {_mib(row['stored_bytes']):>10s}"
        )
    if plain and "attnseg" in med and "store-every-head" in med:
        ours = med["attnseg"]["forward_bytes"] - plain["forward_bytes"]
        theirs = med["store-every-head"]["forward_bytes"] - plain["forward_bytes"]
        print(f"extra in the forward: store-every-head / attnseg = {theirs / max(ours, 1):.1f}×")
    if same:
        print(f"labels: attnseg vs store-every-head, pixels equal: {min(same):.4%} (worst round)")
    if same_baseline:
        print(f"labels: attnseg vs attnseg@baseline, pixels equal: {min(same_baseline):.4%} (worst round)")
    if args.arch:
        extrapolate(args.arch, runs, modes)


# Full-depth composition per architecture: (blocks, heads, image positions, waiting for R at this size).
# SDXL: 64² level (10 heads) down 4 + up 6 blocks, 32² level (20 heads) down 20 + mid 10 + up 30; its
# reference is the first 64² up block, so every 32² block and the 4 down 64² blocks wait for it.
FULL_KINDS = {
    "sdxl": [(4, 10, 4096, 4096**2), (6, 10, 4096, 0), (60, 20, 1024, 1024**2)],
    "pixart-sigma": [(13, 16, 4096, 4096**2), (15, 16, 4096, 0)],
    "flux": [(27, 24, 4096, 4096**2), (30, 24, 4096, 0)],
}


def extrapolate(arch: str, runs: dict[str, list[dict]], modes: list[str]) -> None:
    """Full-depth extra memory: measured extra × (full per-block resident / measured per-block resident)."""
    first = next(iter(runs.values()))[0]
    n_text = first["text_tokens"]
    kinds = FULL_KINDS[arch]
    full_every = sum(n * h * p * (n_text + p) * 2 for n, h, p, _ in kinds)
    full_cross = sum(n * h * p * n_text * 2 for n, h, p, _ in kinds)
    # attnseg keeps, until R comes, each waiting layer's map (the largest store), plus small cross maps.
    full_ours = sum(n * (w + p * 42) * 4 for n, _, p, w in kinds) + 2 * 4096**2 * 4  # + propagation sum, R
    plain = statistics.median(r["forward_bytes"] for r in runs["plain"]) if "plain" in runs else 0
    full_blocks = sum(n for n, *_ in kinds)
    print(
        f"extrapolated to full depth ({full_blocks} blocks; measured {first['blocks']}): store sizes by formula,"
    )
    print("the measured extra scaled by full / measured store (labelled: extrapolated, not measured)")
    rows = {}
    for m in modes:
        if m == "plain":
            continue
        rs = runs[m]
        extra = statistics.median(r["forward_bytes"] for r in rs) - plain
        stored = rs[0]["stored_bytes"] if m.startswith("store") else rs[0]["capture_store_bytes"]
        full_store = {"store-every-head": full_every, "store-cross": full_cross, "attnseg": full_ours}[m]
        rows[m] = extra - stored + full_store  # what is not store (transients) does not grow with depth
        print(
            f"  {m:17s} full-depth extra ≈ {_mib(rows[m])} MiB (store {_mib(full_store)} MiB; measured extra {_mib(extra)})"
        )
    if "attnseg" in rows and "store-every-head" in rows:
        print(
            f"  store-every-head / attnseg at full depth ≈ {rows['store-every-head'] / rows['attnseg']:.1f}×"
        )


if __name__ == "__main__":
    main()
