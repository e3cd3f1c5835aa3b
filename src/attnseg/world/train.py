"""Training of the world's models: a small VAE first, then the UNet and text encoder jointly; resumable."""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from attnseg.errors import BadCheckpointError, BadConfigError, BadDatasetError
from attnseg.io import claim_folder, output_folder
from attnseg.labelmaps import IGNORE_INDEX
from attnseg.world import model as wm

N_STUFF = 5  # class ids 1..5 are stuff, above are things (see render.CLASSES)


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one training run; the defaults are those of the shipped models."""

    size: str = "s"
    steps: int | None = None  # None: the size's default
    batch: int | None = None
    lr: float | None = None
    seed: int = 0
    data: str = "world-data/train"
    val: str = "world-data/val"
    out: str = "world-train"
    device: str = "cpu"
    threads: int = 1  # one thread per run: on 2 shared cores, two threads thrash when others run too
    ckpt_every: int = 250
    eval_every: int = 500
    cfg_drop: float = 0.1  # classifier-free guidance dropout: the caption is replaced by ""
    thing_weight: float = 2.0  # extra loss weight where things are: the text must matter there
    t_high: float = 0.5  # share of timesteps drawn from [t_min_high, 1000) rather than [0, 1000)
    t_min_high: int = 250
    # The epsilon loss of a large-t sample is tiny whatever the model does with the text (x0 errors are scaled
    # by the SNR), so each sample is weighted by 1/alpha_bar(t), clipped: the v-prediction weighting, capped.
    t_weight_max: float = 8.0
    ema: float = 0.999
    warmup: int = 100
    vae_steps: int = 4000
    vae_batch: int = 16
    vae_crop: int = 32
    vae_lr: float = 2e-3
    heldout_n: int = 256
    list_captions: float = (
        0.3  # share of steps whose caption is a plain class list: "a photo of star, sky and grass."
    )
    progress: bool = True
    # Share of steps whose caption loses its colour words ("a red star" → "a star"). With the colour named, a
    # thing's pixels can find their word by colour alone; without it only the shape tells the word.
    colourless: float = 0.0
    # Shape of the text side (None / defaults: the size's). A text encoder with 0 layers gives every token its
    # own word and position only: no token summarises the caption, so a pixel that needs a word must attend to
    # that word (see docs/WORLD.md, "Local tokens").
    text_layers: int | None = None
    max_length: int = wm.MAX_LENGTH
    cross_attention_gain: float = 1.0
    # Hide the pad tokens (every end token after the first) from the UNet's cross-attention in training, so
    # that with a causal encoder no pad can stand for the whole caption. Segmentation does not mask them: the
    # per-pixel rescaling divides their mass out.
    mask_pads: bool = False


def caption_mask(ids: torch.Tensor, end_id: int) -> torch.Tensor:
    """1 for the start token, the words and the first end token of each row; 0 for the pads after it (N×L)."""
    first_end = (ids == end_id).int().argmax(1, keepdim=True)
    return (torch.arange(ids.shape[1])[None] <= first_end).long()


def model_shape(cfg: TrainConfig) -> wm.WorldSize:
    """The WorldSize a run trains: the size's, with the run's text-encoder depth if it sets one."""
    size = wm.get_size(cfg.size)
    return size if cfg.text_layers is None else replace(size, text_layers=cfg.text_layers)


# --------------------------------------------------------------------------- data


@dataclass
class WorldData:
    """A rendered split in memory: images N×H×W×3 uint8, masks N×H×W uint8, captions."""

    images: np.ndarray
    masks: np.ndarray
    captions: list[str]


def load_split(folder: str | Path, limit: int | None = None) -> WorldData:
    """Read a split written by `world render` (index.jsonl, images/, masks/)."""
    folder = Path(folder)
    index = folder / "index.jsonl"
    if not index.is_file():
        raise BadDatasetError(
            f"{folder} has no index.jsonl; render it first: attnseg world render --split train --n 12000 --out {folder}"
        )
    rows = [json.loads(line) for line in index.read_text().splitlines() if line.strip()]
    if limit is not None:
        rows = rows[:limit]
    images, masks, caps = [], [], []
    for r in rows:
        try:
            images.append(np.asarray(Image.open(folder / r["image"]).convert("RGB")))
            masks.append(np.asarray(Image.open(folder / r["mask"])))
        except (OSError, KeyError) as e:
            raise BadDatasetError(f"{folder}: cannot read scene {r.get('id')}: {e}") from e
        caps.append(r["caption"])
    return WorldData(np.stack(images), np.stack(masks), caps)


def render_in_memory(split: str, n: int, seed: int = 0) -> WorldData:
    """Render n scenes straight into memory (for tests and small runs)."""
    from attnseg.world.render import render_scenes

    scenes = [s for _, s in render_scenes(split, n, seed)]
    return WorldData(
        np.stack([s.image for s in scenes]), np.stack([s.mask for s in scenes]), [s.caption for s in scenes]
    )


def to_pixels(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 N×H×W×3 → float N×3×H×W in [-1, 1]."""
    return torch.from_numpy(images_u8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """The generator of one training step: every draw of step k depends only on (seed, k)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 7 + stream)


# --------------------------------------------------------------------------- checkpoints


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors save of contiguous CPU copies."""
    from safetensors.torch import save_file

    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path))


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """safetensors load to CPU."""
    from safetensors.torch import load_file

    return load_file(str(path))


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state as flat tensors plus a JSON-ready rest."""
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{idx}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return tensors, {"param_groups": sd["param_groups"]}


def _unflatten_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], rest: dict) -> None:
    """Load what _flatten_optimizer wrote."""
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": rest["param_groups"]})


def is_checkpoint_folder(folder: Path) -> bool:
    """A checkpoint an attnseg from before output manifests wrote."""
    return (folder / "state.json").is_file()


def is_vae_folder(folder: Path) -> bool:
    """A VAE an attnseg from before output manifests trained."""
    return (folder / "train.json").is_file() and (folder / "config.json").is_file()


def is_training_folder(folder: Path) -> bool:
    """A training folder `world train` wrote: VAE folders and per-size checkpoint folders."""
    return any(is_vae_folder(p) or is_checkpoint_folder(p / "ckpt") for p in folder.iterdir() if p.is_dir())


# --------------------------------------------------------------------------- VAE


def train_vae(cfg: TrainConfig, data: WorldData | None = None) -> Path:
    """Train the VAE of the size's latent (once per training folder) and save it as a diffusers folder."""
    latent = wm.get_size(cfg.size).latent
    final = wm.vae_folder(cfg.out, latent)
    if (final / "config.json").is_file():
        return final
    claim_folder(cfg.out, is_training_folder)
    torch.set_num_threads(cfg.threads)
    data = data if data is not None else load_split(cfg.data)
    vae = wm.build_vae(cfg.seed, latent).to(cfg.device)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    n = len(data.captions)
    it = range(cfg.vae_steps)
    if cfg.progress:
        from tqdm import tqdm

        it = tqdm(it, desc="vae", dynamic_ncols=True)
    for step in it:
        g = step_generator(cfg.seed, step, stream=1)
        idx = torch.randint(0, n, (cfg.vae_batch,), generator=g)
        x = to_pixels(data.images[idx.numpy()])
        # The VAE is fully convolutional: random crops (on the latent grid) cost a quarter of full images.
        c = cfg.vae_crop
        if c < x.shape[-1]:
            oy, ox = (torch.randint(0, (x.shape[-1] - c) // 4 + 1, (2,), generator=g) * 4).tolist()
            x = x[:, :, oy : oy + c, ox : ox + c]
        x = x.to(cfg.device)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(cfg.device)
        rec = vae.decode(z).sample
        kl = 0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).mean()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-4 * kl
        lr = cfg.vae_lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / cfg.vae_steps))
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cfg.progress and step % 10 == 0:
            it.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        x = to_pixels(data.images[: min(n, 512)]).to(cfg.device)
        z = vae.encode(x).latent_dist.mean
        rec = vae.decode(z).sample
        std = float(z.std())
        psnr = float(10 * torch.log10(4.0 / F.mse_loss(rec, x)))
    vae.register_to_config(scaling_factor=1.0 / std)
    with output_folder(final, recognise=is_vae_folder) as stage:
        vae.save_pretrained(stage, safe_serialization=True)
        (stage / "train.json").write_text(
            json.dumps({"config": asdict(cfg), "latent_std": std, "psnr_db": psnr}, indent=1)
        )
    return final


def encode_latents(
    vae, images_u8: np.ndarray, device: str, batch: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image, scaled by the VAE's scaling factor (float32, N×4×h×w)."""
    sf = vae.config.scaling_factor
    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(images_u8), batch):
            post = vae.encode(to_pixels(images_u8[i : i + batch]).to(device)).latent_dist
            means.append(post.mean.cpu() * sf)
            stds.append(post.std.cpu() * sf)
    return torch.cat(means), torch.cat(stds)


# --------------------------------------------------------------------------- denoiser


def thing_weights(masks_u8: np.ndarray, latent_hw: int) -> torch.Tensor:
    """Share of thing pixels in each latent cell, N×1×h×w."""
    things = torch.from_numpy(masks_u8 > N_STUFF).float()
    things = things.masked_fill(torch.from_numpy(masks_u8 == IGNORE_INDEX), 0.0)[:, None]
    return F.adaptive_avg_pool2d(things, latent_hw)


def list_caption(caption: str, rng: np.random.Generator) -> str:
    """The classes a caption names as a shuffled plain list in the Segmentor's prompt style."""
    from attnseg.prompts import compose_prompt
    from attnseg.world.render import CLASSES

    names = [c.name for c in CLASSES if re.search(rf"\b{c.name}\b", caption)]
    names = [names[i] for i in rng.permutation(len(names))]
    return compose_prompt(names) if names else ""  # the Segmentor's own composer and default template


def strip_colours(caption: str) -> str:
    """A caption without its colour words."""
    from attnseg.world.render import COLOURS

    return " ".join(w for w in caption.split(" ") if w not in COLOURS)


def tokenize(tokenizer, captions: Sequence[str]) -> torch.Tensor:
    """Token ids padded to the tokenizer's max length with the end token, as SD1.5 does (N×L)."""
    enc = tokenizer(
        list(captions),
        padding="max_length",
        truncation=True,
        max_length=tokenizer.model_max_length,
        return_tensors="pt",
    )
    return enc.input_ids


class Trainer:
    """Joint training of the UNet and text encoder of one size, with EMA, checkpoints and held-out loss."""

    def __init__(self, cfg: TrainConfig, data: WorldData | None = None, val: WorldData | None = None):
        """Build models, load data, encode latents with the trained VAE, and resume from the last checkpoint.

        The VAE is trained before, by train_vae (`train` does both): building a Trainer trains nothing.
        """
        size = model_shape(cfg)
        cfg = replace(
            cfg,
            steps=cfg.steps if cfg.steps is not None else size.steps,
            batch=cfg.batch if cfg.batch is not None else size.batch,
            lr=cfg.lr if cfg.lr is not None else size.lr,
        )
        if cfg.steps <= 0 or cfg.batch <= 0:
            raise BadConfigError("--steps and --batch must be positive")
        self.cfg = cfg
        torch.set_num_threads(cfg.threads)
        self.dir = Path(cfg.out) / cfg.size
        self.ckpt = self.dir / "ckpt"
        vae_dir = wm.vae_folder(cfg.out, size.latent)
        if not (vae_dir / "config.json").is_file():
            raise BadCheckpointError(
                f"no VAE in {vae_dir}: train it first (train_vae, or attnseg world train --vae-only --out {cfg.out})"
            )
        data = data if data is not None else load_split(cfg.data)
        val = val if val is not None else load_split(cfg.val, limit=cfg.heldout_n)
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(vae_dir).to(cfg.device).eval()
        self.vae_dir = vae_dir
        self.tokenizer = wm.build_tokenizer(cfg.max_length)
        self.ids = tokenize(self.tokenizer, data.captions)
        self.empty_ids = tokenize(self.tokenizer, [""])[0]
        rng = np.random.default_rng(cfg.seed)
        self.list_ids = tokenize(self.tokenizer, [list_caption(c, rng) for c in data.captions])
        self.plain_ids = (
            tokenize(self.tokenizer, [strip_colours(c) for c in data.captions]) if cfg.colourless else None
        )
        self.lat_mean, self.lat_std = encode_latents(vae, data.images, cfg.device)
        hw = self.lat_mean.shape[-1]
        self.weights = thing_weights(data.masks, hw)
        self.val_mean, _ = encode_latents(vae, val.images, cfg.device)
        self.val_ids = tokenize(self.tokenizer, val.captions)
        del vae
        self.unet = wm.build_unet(size, cfg.seed, cfg.cross_attention_gain).to(cfg.device)
        self.text = wm.build_text_encoder(size, len(self.tokenizer), cfg.seed + 1, cfg.max_length).to(
            cfg.device
        )
        self.sched = wm.build_scheduler()
        self.alphas = self.sched.alphas_cumprod.float()
        self.params = list(self.unet.parameters()) + list(self.text.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.99))
        self.ema = {k: v.detach().clone() for k, v in self._named().items()}
        self.step = 0
        self.history: list[dict] = []
        if (self.ckpt / "state.json").is_file():
            self._load()

    def _named(self) -> dict[str, torch.Tensor]:
        """All trained parameters by a stable name."""
        out = {f"unet.{k}": v for k, v in self.unet.named_parameters()}
        out.update({f"text.{k}": v for k, v in self.text.named_parameters()})
        return out

    def _save(self) -> None:
        """Write the checkpoint of the current step (models, EMA, optimizer, history) atomically."""
        with output_folder(self.ckpt, recognise=is_checkpoint_folder) as stage:
            _save_tensors(self._named(), stage / "model.safetensors")
            _save_tensors(self.ema, stage / "ema.safetensors")
            opt_t, opt_rest = _flatten_optimizer(self.opt)
            _save_tensors(opt_t, stage / "optimizer.safetensors")
            state = {
                "step": self.step,
                "config": asdict(self.cfg),
                "optimizer": opt_rest,
                "history": self.history,
            }
            (stage / "state.json").write_text(json.dumps(state, indent=1))

    def _load(self) -> None:
        """Resume from the checkpoint folder."""
        state = json.loads((self.ckpt / "state.json").read_text())
        named = self._named()
        with torch.no_grad():
            for k, v in _load_tensors(self.ckpt / "model.safetensors").items():
                named[k].copy_(v)
        self.ema = _load_tensors(self.ckpt / "ema.safetensors")
        _unflatten_optimizer(self.opt, _load_tensors(self.ckpt / "optimizer.safetensors"), state["optimizer"])
        self.step = int(state["step"])
        self.history = state["history"]

    def sample_t(self, g: torch.Generator, n: int) -> torch.Tensor:
        """Timesteps: a share from [t_min_high, 1000) where the text decides the picture, the rest uniform."""
        u = torch.randint(0, 1000, (n,), generator=g)
        hi = torch.randint(self.cfg.t_min_high, 1000, (n,), generator=g)
        pick = torch.rand(n, generator=g) < self.cfg.t_high
        return torch.where(pick, hi, u)

    def loss_on(
        self,
        x0: torch.Tensor,
        ids: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        w: torch.Tensor | None,
        wt: torch.Tensor | None = None,
    ):
        """Epsilon-prediction loss of a batch, weighted per pixel (w) and per sample (wt)."""
        a = self.alphas[t].view(-1, 1, 1, 1).to(x0.device)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        cond = self.text(ids.to(x0.device)).last_hidden_state
        mask = caption_mask(ids, self.tokenizer.eos_token_id).to(x0.device) if self.cfg.mask_pads else None
        eps = self.unet(xt, t.to(x0.device), cond, encoder_attention_mask=mask).sample
        err = (eps - noise).pow(2)
        if w is not None:
            scale = wt if wt is not None else 1.0
            return (err * w * scale).sum() / w.sum()
        return err.mean()

    def train_step(self) -> float:
        """One optimisation step; every random draw comes from the step's own generator."""
        cfg = self.cfg
        g = step_generator(cfg.seed, self.step)
        n = len(self.ids)
        idx = torch.randint(0, n, (cfg.batch,), generator=g)
        x0 = self.lat_mean[idx] + self.lat_std[idx] * torch.randn(self.lat_mean[idx].shape, generator=g)
        ids = self.ids[idx].clone()
        if self.plain_ids is not None:  # drawn only when used, so runs without it keep their random streams
            plain = torch.rand(cfg.batch, generator=g) < cfg.colourless
            ids[plain] = self.plain_ids[idx][plain]
        as_list = torch.rand(cfg.batch, generator=g) < cfg.list_captions
        ids[as_list] = self.list_ids[idx][as_list]
        drop = torch.rand(cfg.batch, generator=g) < cfg.cfg_drop
        ids[drop] = self.empty_ids
        t = self.sample_t(g, cfg.batch)
        noise = torch.randn(x0.shape, generator=g)
        w = (1.0 + cfg.thing_weight * self.weights[idx]).expand_as(x0)
        wt = (1.0 / self.alphas[t]).clamp(max=cfg.t_weight_max).view(-1, 1, 1, 1)
        lr = (
            cfg.lr
            * min(1.0, (self.step + 1) / cfg.warmup)
            * (0.55 + 0.45 * math.cos(math.pi * self.step / cfg.steps))
        )
        for group in self.opt.param_groups:
            group["lr"] = lr
        loss = self.loss_on(
            x0.to(cfg.device), ids, t, noise.to(cfg.device), w.to(cfg.device), wt.to(cfg.device)
        )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        decay = min(cfg.ema, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for k, v in self._named().items():
                self.ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        self.step += 1
        return float(loss.detach())

    def swap_ema(self) -> None:
        """Exchange the live weights and the EMA weights (call twice to restore)."""
        with torch.no_grad():
            for k, v in self._named().items():
                tmp = v.detach().clone()
                v.copy_(self.ema[k])
                self.ema[k] = tmp

    @torch.no_grad()
    def heldout(self) -> dict:
        """Held-out denoising loss of the EMA weights on val scenes, fixed noise, t spread over [0, 1000)."""
        self.swap_ema()
        try:
            n = len(self.val_ids)
            g = torch.Generator().manual_seed(12345)
            noise = torch.randn(self.val_mean.shape, generator=g)
            t = torch.linspace(0, 999, n).long()
            losses = []
            for i in range(0, n, 64):
                sl = slice(i, i + 64)
                a = self.alphas[t[sl]].view(-1, 1, 1, 1)
                xt = a.sqrt() * self.val_mean[sl] + (1 - a).sqrt() * noise[sl]
                cond = self.text(self.val_ids[sl].to(self.cfg.device)).last_hidden_state
                eps = self.unet(xt.to(self.cfg.device), t[sl].to(self.cfg.device), cond).sample.cpu()
                losses.append((eps - noise[sl]).pow(2).mean(dim=(1, 2, 3)))
            per = torch.cat(losses)
            bins = {
                f"t{lo}-{lo + 249}": float(per[(t >= lo) & (t < lo + 250)].mean())
                for lo in (0, 250, 500, 750)
            }
            return {"heldout_loss": float(per.mean()), **bins}
        finally:
            self.swap_ema()

    def run(self, until: int | None = None) -> dict:
        """Train to cfg.steps, or stop early at step `until`, from where the checkpoint left off."""
        cfg = self.cfg
        start = self.step
        stop = cfg.steps if until is None else min(until, cfg.steps)
        it = range(start, stop)
        bar = None
        if cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.size}", dynamic_ncols=True)
        run_loss, t0 = 0.0, time.time()
        for _ in it:
            loss = self.train_step()
            run_loss = loss if run_loss == 0.0 else 0.98 * run_loss + 0.02 * loss
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{run_loss:.4f}")
            last = self.step == cfg.steps
            if self.step % cfg.eval_every == 0 or last:
                rec = {
                    "step": self.step,
                    "train_loss": run_loss,
                    "seconds": time.time() - t0,
                    **self.heldout(),
                }
                self.history.append(rec)
                if bar is not None:
                    bar.write(json.dumps(rec))
            if self.step % cfg.ckpt_every == 0 or last or self.step == stop:
                self._save()
        if bar is not None:
            bar.close()
        if not self.history or self.history[-1]["step"] != self.step:
            self.history.append({"step": self.step, **self.heldout()})
        return self.history[-1]


def train(cfg: TrainConfig) -> Trainer:
    """Train (or resume) one size, its VAE first if the training folder has none; return the trainer."""
    claim_folder(cfg.out, is_training_folder)
    data = load_split(cfg.data)
    train_vae(cfg, data)
    tr = Trainer(cfg, data=data)
    tr.run()
    return tr


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options of `world train` to a parser."""
    from attnseg.cli import seed_int

    d = TrainConfig()
    p.add_argument("--size", default="s", choices=[k for k in wm.SIZES if not k.startswith("xs")])
    p.add_argument("--steps", type=int, default=None, help="total steps (default: the size's)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=seed_int, default=d.seed)
    p.add_argument("--device", default=d.device)
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument("--data", default=d.data, help="a train split written by `world render`")
    p.add_argument("--val", default=d.val, help="a val split for the held-out loss")
    p.add_argument("--out", default=d.out, help="checkpoint folder (git-ignored)")
    p.add_argument("--vae-steps", type=int, default=d.vae_steps)
    p.add_argument(
        "--list-captions",
        type=float,
        default=d.list_captions,
        help="share of steps captioned as a plain class list",
    )
    p.add_argument(
        "--colourless",
        type=float,
        default=d.colourless,
        help="share of steps whose caption loses its colour words",
    )
    p.add_argument("--text-layers", type=int, default=None, help="text encoder depth (default: the size's)")
    p.add_argument("--max-length", type=int, default=d.max_length, help="tokens per caption, pads included")
    p.add_argument(
        "--cross-attention-gain",
        type=float,
        default=d.cross_attention_gain,
        help="scale of the cross-attention query/key weights at initialisation",
    )
    p.add_argument(
        "--mask-pads",
        action="store_true",
        help="hide the pad tokens from the UNet's cross-attention in training",
    )
    p.add_argument("--vae-only", action="store_true", help="train the shared VAE only (the first stage)")
    p.add_argument("--no-export", action="store_true", help="do not write the model into the package assets")
    p.add_argument("--export-to", default=None, help="models folder to export into (default: the package's)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed `world train` arguments."""
    return TrainConfig(
        size=args.size,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        data=args.data,
        val=args.val,
        out=args.out,
        vae_steps=args.vae_steps,
        list_captions=args.list_captions,
        colourless=args.colourless,
        text_layers=args.text_layers,
        max_length=args.max_length,
        cross_attention_gain=args.cross_attention_gain,
        mask_pads=args.mask_pads,
    )
