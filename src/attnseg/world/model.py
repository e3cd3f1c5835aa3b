"""Configurations of the world's small text-to-image models (sizes s, m, l) and their tokenizer."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from attnseg.errors import BadConfigError
from attnseg.world.render import caption_vocabulary

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
UNK = "<|unk|>"
LATENT_CHANNELS = 8  # 16×16×8 for 64×64×3: 6× compression, which a small VAE learns in minutes
# The VAE of each latent side for a 64×64 image: latent channels and encoder widths (one downsampling per
# width after the first). 32×32×4 is 3× compression with one downsampling.
VAES = {16: (LATENT_CHANNELS, (16, 32, 64)), 32: (4, (32, 64))}
MAX_LENGTH = 48  # tokens, start and end included; every caption of the world fits


@dataclass(frozen=True)
class WorldSize:
    """The shape of one model size: UNet widths and depth, text encoder width and depth, training defaults."""

    name: str
    unet_channels: tuple[int, ...]
    layers_per_block: int
    heads: int
    text_width: int
    text_layers: int
    text_heads: int
    steps: int
    batch: int
    lr: float
    latent: int = 16  # side of the latent of a 64×64 image: 16 (SD1.5's layout) or 32 (SDXL's)


SIZES: dict[str, WorldSize] = {
    # SD1.5's layout scaled down: cross-attention at every level but the lowest, a cross-attention mid
    # block; the latent is 16×16×8 for a 64×64 image, so cross-attention runs at 16², 8² and 4².
    "xs": WorldSize("xs", (16, 16, 16), 1, 2, 16, 1, 2, 4, 4, 1e-3),  # tests only
    "s": WorldSize("s", (32, 64, 64), 1, 4, 64, 2, 4, 1500, 32, 1e-3),
    "m": WorldSize("m", (48, 96, 96), 1, 4, 96, 3, 4, 1200, 32, 8e-4),
    "l": WorldSize("l", (64, 128, 128), 1, 8, 128, 3, 4, 900, 32, 6e-4),
    # SDXL's layout on a 32×32×4 latent: no attention at the finest level (32², where it would cost most), so
    # cross-attention runs at 16² and 8². On the 16² latent the best class maps came from the middle level (8²,
    # an upper bound of 73 mIoU for maps on that grid); here the middle level is 16² (bound 89).
    "xs32": WorldSize("xs32", (16, 16, 16), 1, 2, 16, 0, 2, 4, 4, 1e-3, latent=32),  # tests only
    "s32": WorldSize("s32", (32, 64, 64), 1, 4, 64, 0, 4, 4500, 32, 1e-3, latent=32),
    "m32": WorldSize("m32", (48, 96, 96), 1, 4, 96, 0, 4, 4500, 32, 8e-4, latent=32),
}


def get_size(name: str) -> WorldSize:
    """The WorldSize of a name, or a BadConfigError listing the known ones."""
    if name not in SIZES:
        raise BadConfigError(f"unknown world model size {name!r}; use one of {', '.join(SIZES)}")
    return SIZES[name]


def build_tokenizer(max_length: int = MAX_LENGTH):
    """A word-level fast tokenizer over the world's vocabulary, with CLIP-like start and end/pad tokens."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = caption_vocabulary()
    vocab = {UNK: 0, BOS: 1, EOS: 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {EOS} $B {EOS}",
        special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=UNK,
        model_max_length=max_length,
        padding_side="right",
    )


def build_text_encoder(size: WorldSize, vocab_size: int, seed: int = 0, max_length: int = MAX_LENGTH):
    """A small CLIPTextModel (causal self-attention) for a size; 0 layers: embeddings and a layer norm."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=size.text_width,
        intermediate_size=4 * size.text_width,
        projection_dim=size.text_width,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.text_heads,
        max_position_embeddings=max_length,
        hidden_act="quick_gelu",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    model = CLIPTextModel(cfg)
    # CLIP's init (std 0.02) makes the token and position embeddings tiny next to the sublayer outputs, so
    # every output token starts (and, in a short training, stays) almost the same vector: cosine 0.999
    # between "star" and "circle" after 750 steps, and a UNet that ignores the text. Unit-scale embeddings
    # keep each token's identity in the residual stream (cosine 0.25 at init).
    position = next(m for n, m in model.named_modules() if n.endswith("position_embedding"))
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, 1.0)
        position.weight.normal_(0.0, 0.3)
    return model


def get_latent(side: int) -> tuple[int, tuple[int, ...]]:
    """Latent channels and VAE widths of a latent side, or a BadConfigError listing the known ones."""
    if side not in VAES:
        raise BadConfigError(f"no VAE for a {side}×{side} latent; use one of {', '.join(map(str, VAES))}")
    return VAES[side]


def build_unet(size: WorldSize, seed: int = 0, cross_attention_gain: float = 1.0):
    """A UNet2DConditionModel laid out like SD1.5's for a 16×16×8 latent, or like SDXL's for 32×32×4."""
    import torch
    from diffusers import UNet2DConditionModel

    n = len(size.unet_channels)
    channels, _ = get_latent(size.latent)
    if size.latent == 16:  # SD1.5: cross-attention at every level but the lowest
        down = ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",)
        up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1)
    else:  # SDXL: cross-attention at every level but the finest
        down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1)
        up = ("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=size.latent,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=size.layers_per_block,
        block_out_channels=size.unet_channels,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=size.text_width,
        attention_head_dim=size.heads,  # diffusers reads this as the number of heads (as in SD1.5's config)
        norm_num_groups=min(16, size.unet_channels[0]),
    )
    # At the default init, cross-attention logits are so small that every pixel attends almost uniformly
    # (max probability 0.03-0.07 over 48 tokens after 500 steps): the text reaches every pixel as the same
    # summary. A gain > 1 on the query/key weights starts it sharper (3.0: mean max probability ≈ 0.2).
    # An experiment, not used by the shipped models (gain 1.0); see docs/WORLD.md.
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith("attn2"):
                module.to_q.weight.mul_(cross_attention_gain)
                module.to_k.weight.mul_(cross_attention_gain)
    return unet


def build_vae(seed: int = 0, latent: int = 16):
    """A small AutoencoderKL: 64×64×3 image ↔ 16×16×8 latent (two downsamplings) or 32×32×4 (one)."""
    import torch
    from diffusers import AutoencoderKL

    channels, widths = get_latent(latent)
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths),
        block_out_channels=widths,
        layers_per_block=1,
        latent_channels=channels,
        norm_num_groups=8,
        sample_size=64,
        mid_block_add_attention=False,
    )


def scheduler_config() -> dict:
    """SD1.5's DDPM noise schedule (1000 steps, scaled linear betas, epsilon prediction)."""
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
        timestep_spacing="leading",
    )


def build_scheduler():
    """The DDPMScheduler the world models are trained and shipped with."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**scheduler_config())


def vae_folder(out: str | Path, latent: int) -> Path:
    """Where a training folder keeps the VAE of a latent side (shared by the sizes with that latent)."""
    return Path(out) / ("vae" if latent == 16 else f"vae{latent}")


def size_dict(size: WorldSize) -> dict:
    """A JSON-ready description of a size."""
    return asdict(size)


def models_dir() -> Path:
    """The folder the embedded models ship in."""
    return Path(__file__).resolve().parent.parent / "assets" / "models"
