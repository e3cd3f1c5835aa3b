"""Time and peak memory of a plain denoiser forward vs. attnseg's capture forward and full `segment`.

    python benchmarks/overhead.py --family sd15 [--device cpu|cuda] [--method goca] [--repeats 2]

Random weights at the real architecture size (SD1.5: 512², UNet 860M). Each measurement runs in a fresh
process so that peak memory (CUDA: max allocated; CPU: peak RSS) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
)
TINY_UNET = dict(
    SD15_UNET, block_out_channels=(32, 64, 64, 64), sample_size=16, cross_attention_dim=32, norm_num_groups=16
)


def build(folder: Path, family: str, tokenizer=None) -> None:
    """Write a random-weight model of the family's real size (sd15) or a tiny one (tiny) to `folder`.

    tokenizer: a fast tokenizer to ship instead of the letter-level one (the text encoder follows its size).
    """
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from attnseg.testing import tiny_clip_tokenizer

    torch.manual_seed(0)
    big = family == "sd15"
    tokenizer = tokenizer or tiny_clip_tokenizer(folder / "_tok")
    hidden = 768 if big else 32
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=hidden * 4,
            num_hidden_layers=12 if big else 2,
            num_attention_heads=12 if big else 4,
            max_position_embeddings=77,
        )
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512) if big else (16, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32 if big else 16,
    )
    unet = UNet2DConditionModel(**(SD15_UNET if big else TINY_UNET))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDPMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(folder: str, mode: str, device: str, method: str, repeats: int, settings: list[str]) -> dict:
    """Run one mode in this process: 'plain' (denoiser forward), 'encode+plain' (VAE + text + forward),
    'capture' (encode + forward with capture), 'segment' (all of attnseg)."""
    import numpy as np
    import torch
    from PIL import Image

    from attnseg.segmentor import Segmentor

    torch.set_grad_enabled(False)
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in settings)}
    seg = Segmentor.from_pretrained(folder, method=method, device=device, **overrides)
    backbone = seg.backbone
    size = backbone.preset.native_size
    image = Image.fromarray((np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8))
    plans = seg.builder.build(
        __import__("attnseg.prompts", fromlist=["x"]).parse_classes(["cat", "grass", "wall"])
    )
    pixels = seg._pixels([image])
    latents = backbone.encode_images(pixels)
    noisy, t = backbone.add_noise(latents, torch.Generator().manual_seed(0))
    cond = backbone.encode_text([plans[0].text])
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run() -> None:
        if mode == "plain":
            backbone.run_denoiser(noisy, t, cond)
        elif mode == "encode+plain":  # what any latent-space method must run at least: VAE, text, one forward
            noisy_now, t_now = backbone.add_noise(
                backbone.encode_images(pixels), torch.Generator().manual_seed(0)
            )
            backbone.run_denoiser(noisy_now, t_now, backbone.encode_text([plans[0].text]))
        elif mode == "capture":
            backbone.capture(
                pixels, [plans[0].text], plans[0].n_tokens, seg.config, torch.Generator().manual_seed(0)
            )
        else:
            seg.segment(image, ["cat", "grass", "wall"])

    run()  # warm-up
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if device == "cuda" else _rss()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _rss()
    return {"mode": mode, "seconds": min(times), "peak_bytes": peak, "baseline_bytes": base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="sd15", choices=["sd15", "tiny"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--method", default="goca")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default=None, help="an existing diffusers folder instead of building one")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="method setting (repeatable)"
    )
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(
            json.dumps(
                measure(args._child[0], args._child[1], args.device, args.method, args.repeats, args.set)
            )
        )
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model or str(Path(tmp) / "model")
        if args.model is None:
            print(f"building a random-weight {args.family} model ...", file=sys.stderr)
            build(Path(folder), args.family)
        rows = {}
        for mode in ("plain", "encode+plain", "capture", "segment"):
            cmd = [
                sys.executable,
                __file__,
                "--device",
                args.device,
                "--method",
                args.method,
                "--repeats",
                str(args.repeats),
                *[f"--set={s}" for s in args.set],
                "--_child",
                folder,
                mode,
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows[mode] = json.loads(out.strip().splitlines()[-1])
    plain = rows["plain"]
    print(
        f"family={args.family} device={args.device} method={args.method} settings={args.set} repeats={args.repeats}"
    )
    encoded = rows["encode+plain"]
    print(
        f"{'mode':13s} {'seconds':>9s} {'peak MiB':>10s} {'time ratio':>11s} {'peak ratio':>11s} {'time vs encode+plain':>21s}"
    )
    for mode, row in rows.items():
        print(
            f"{mode:13s} {row['seconds']:9.3f} {row['peak_bytes'] / 2**20:10.1f} "
            f"{row['seconds'] / plain['seconds']:11.3f} {row['peak_bytes'] / plain['peak_bytes']:11.3f} "
            f"{row['seconds'] / encoded['seconds']:21.3f}"
        )


if __name__ == "__main__":
    main()
