"""A self-contained attention probe of the world models: special-token mass and a quick segmentation.

This is a measuring tool for training the world models (choose the timestep, check that the text is used where
the things are), not the method: the method lives in attnseg.method and attnseg.Segmentor.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attnseg.errors import BadCheckpointError


@dataclass
class WorldModel:
    """The parts of an exported world model folder, loaded for inference on CPU in float32."""

    tokenizer: object
    text_encoder: object
    unet: object
    vae: object
    alphas: torch.Tensor


def load_world_model(folder: str | Path) -> WorldModel:
    """Load an exported world model folder."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise BadCheckpointError(f"{folder} is not a diffusers folder (no model_index.json)")
    tok = AutoTokenizer.from_pretrained(folder / "tokenizer")
    te = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval()
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae").eval()
    sched = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    return WorldModel(tok, te, unet, vae, sched.alphas_cumprod.float())


class _CaptureProcessor:
    """Plain attention that also keeps the head-mean cross-attention probabilities (B×P×N)."""

    def __init__(self, store: dict, name: str):
        self.store, self.name = store, name

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs
    ):
        cross = encoder_hidden_states is not None
        ctx = encoder_hidden_states if cross else hidden_states
        b = hidden_states.shape[0]
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(ctx))
        v = attn.head_to_batch_dim(attn.to_v(ctx))
        probs = attn.get_attention_scores(q, k, None)  # (B·H)×P×N
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        out = attn.to_out[1](attn.to_out[0](out))
        if cross:
            self.store[self.name] = probs.view(b, -1, *probs.shape[1:]).mean(1)
        return out


@contextlib.contextmanager
def capture_cross(unet):
    """Install capturing processors on every cross-attention; yield the store; always restore."""
    store: dict[str, torch.Tensor] = {}
    old = unet.attn_processors
    procs = {k: (_CaptureProcessor(store, k) if "attn2" in k else v) for k, v in old.items()}
    unet.set_attn_processor(procs)
    try:
        yield store
    finally:
        unet.set_attn_processor(old)


def class_prompt(names: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """A prompt naming the classes and each name's character span."""
    text = "a photo of"
    spans = []
    for i, n in enumerate(names):
        sep = " a " if i == 0 else (" and a " if i == len(names) - 1 else ", a ")
        text += sep
        spans.append((len(text), len(text) + len(n)))
        text += n
    return text, spans


@torch.no_grad()
def cross_maps(
    wm: WorldModel, images_u8: np.ndarray, prompts: list[str], t: int, seed: int = 0
) -> tuple[dict, dict]:
    """Head-mean cross-attention of every layer for a batch of images (B×P×N per layer) and the tokenization."""
    x = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    z = wm.vae.encode(x).latent_dist.mean * wm.vae.config.scaling_factor
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(z.shape, generator=g)
    a = wm.alphas[t]
    zt = a.sqrt() * z + (1 - a).sqrt() * noise
    enc = wm.tokenizer(
        prompts,
        padding="max_length",
        max_length=wm.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
        return_offsets_mapping=True,
    )
    cond = wm.text_encoder(enc.input_ids).last_hidden_state
    with capture_cross(wm.unet) as store:
        wm.unet(zt, torch.full((len(prompts),), t), cond)
    return dict(store), enc


def token_groups(wm: WorldModel, enc, i: int) -> dict[str, list[int]]:
    """Token indices of one prompt: start, end/pad, and the rest (words)."""
    ids = enc.input_ids[i].tolist()
    bos, eos = wm.tokenizer.bos_token_id, wm.tokenizer.eos_token_id
    return {
        "start": [j for j, v in enumerate(ids) if v == bos],
        "end_pad": [j for j, v in enumerate(ids) if v == eos],
        "words": [j for j, v in enumerate(ids) if v not in (bos, eos)],
    }


def special_mass(wm: WorldModel, images_u8: np.ndarray, prompts: list[str], t: int) -> dict:
    """Mean share of cross-attention mass on the start token, on end/pad tokens, and on words, per layer and overall."""
    maps, enc = cross_maps(wm, images_u8, prompts, t)
    out: dict[str, dict] = {}
    for name, m in maps.items():  # B×P×N
        acc = {"start": 0.0, "end_pad": 0.0, "words": 0.0}
        for i in range(m.shape[0]):
            for k, idx in token_groups(wm, enc, i).items():
                acc[k] += float(m[i][:, idx].sum(-1).mean()) / m.shape[0]
        out[name] = acc
    overall = {k: float(np.mean([v[k] for v in out.values()])) for k in ("start", "end_pad", "words")}
    return {"overall": overall, "layers": out}


def quick_scores(
    wm: WorldModel, images_u8: np.ndarray, class_lists: list[list[str]], t: int, rescale: bool, size: int = 64
) -> list[torch.Tensor]:
    """Per-image K×size×size class scores from layer-mean, head-mean cross-attention (min-max per class)."""
    prompts, spans_all = zip(*[class_prompt(c) for c in class_lists])
    maps, enc = cross_maps(wm, images_u8, list(prompts), t)
    res = []
    for i, spans in enumerate(spans_all):
        offs = enc.offset_mapping[i].tolist()
        tok_of = [[j for j, (a, b) in enumerate(offs) if b > a and a >= s and b <= e] for s, e in spans]
        words = sorted({j for tl in tok_of for j in tl})
        acc = 0
        for m in maps.values():
            p = m.shape[1]
            h = int(round(p**0.5))
            grid = m[i].T.reshape(-1, 1, h, h)  # N×1×h×h
            acc = acc + F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        acc = acc / len(maps)  # N×S×S
        x = torch.stack([acc[tl].mean(0) for tl in tok_of])  # K×S×S
        if rescale:
            x = x / acc[words].sum(0).clamp_min(1e-8)
        lo = x.flatten(1).min(1).values.view(-1, 1, 1)
        hi = x.flatten(1).max(1).values.view(-1, 1, 1)
        res.append((x - lo) / (hi - lo).clamp_min(1e-8))
    return res


def miou(confusion: np.ndarray, ids: list[int]) -> tuple[float, dict[int, float]]:
    """Mean IoU over class ids that occur in ground truth or prediction, from a confusion matrix (gt×pred)."""
    per = {}
    for c in ids:
        tp = confusion[c, c]
        den = confusion[c, :].sum() + confusion[:, c].sum() - tp
        if confusion[c, :].sum() > 0:
            per[c] = float(tp / den) if den > 0 else 0.0
    return (float(np.mean(list(per.values()))) if per else 0.0), per
