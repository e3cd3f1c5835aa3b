"""Tiny random models built from config, saved as diffusers folders: for tests, examples and benchmarks."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

WORDS = (
    "a an the and of on in with photo cat dog grass wall sky tree car road person man woman red ball "
    "green blue water floor house bird"
).split()


def joint_read_plan(n_text: int, n_image: int, name: str = "J"):
    """The read plan of a joint attention call over [text (n_text), image (n_image)] tokens, cross and self."""
    from attnseg.method.streaming import AttentionPlan

    return AttentionPlan(
        name,
        read_cross=True,
        read_self=True,
        image_queries=slice(n_text, n_text + n_image),
        text_keys=slice(0, n_text),
        image_keys=slice(n_text, n_text + n_image),
    )


def tiny_clip_tokenizer(folder: Path, max_length: int = 77):
    """A CLIP BPE tokenizer over a small vocabulary (letters plus a few merges), with start/end tokens."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz.,|"
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": len(letters) + i for i, c in enumerate(letters)})
    merges = [("c", "a"), ("ca", "t</w>"), ("g", "r"), ("gr", "a"), ("s", "s</w>"), ("w", "a"), ("wa", "l")]
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text(
            "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n"
        )
        tokenizer = CLIPTokenizer(
            str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=max_length
        )
    return tokenizer


def _clip_text_encoder(
    vocab_size: int, hidden: int, layers: int = 2, projection: int | None = None, seed: int = 0
):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=projection or hidden,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _tiny_vae(seed: int = 0, latent_channels: int = 4, **extra):
    """A two-level VAE (downsampling ×2); `extra` sets scaling/shift factors."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=32,
        **extra,
    )


def _tiny_unet(cross_dim: int, seed: int = 0, **extra):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_dim,
        norm_num_groups=8,
        **({"attention_head_dim": 8} | extra),
    )


def build_tiny_sd(folder: str | Path, seed: int = 0, sd2: bool = False) -> Path:
    """A random SD1-style pipeline (UNet with cross-attention at 16² and 8², CLIP BPE) saved at `folder`.

    sd2=True gives the SD2.x traits instead: v-prediction, linear projections, per-level head counts.
    """
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    folder = Path(folder)
    tokenizer = tiny_clip_tokenizer(folder / "_tok")
    text_dim = 48 if sd2 else 32
    unet_extra = {"use_linear_projection": True, "attention_head_dim": (2, 4, 8)} if sd2 else {}
    pipe = StableDiffusionPipeline(
        vae=_tiny_vae(seed),
        text_encoder=_clip_text_encoder(len(tokenizer), text_dim, seed=seed),
        tokenizer=tokenizer,
        unet=_tiny_unet(text_dim, seed, **unet_extra),
        scheduler=DDPMScheduler(
            num_train_timesteps=1000, prediction_type="v_prediction" if sd2 else "epsilon"
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    _remove_tree(folder / "_tok")
    return folder


def build_tiny_sdxl(folder: str | Path, seed: int = 0) -> Path:
    """A random SDXL-style pipeline: two CLIP encoders (32 + 32 channels), pooled text and time ids."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    folder = Path(folder)
    tokenizer = tiny_clip_tokenizer(folder / "_tok")
    text_dim, pooled_dim, time_dim = 32, 32, 8
    unet = _tiny_unet(
        text_dim * 2,
        seed,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=pooled_dim + 6 * time_dim,
    )
    pipe = StableDiffusionXLPipeline(
        vae=_tiny_vae(seed),
        text_encoder=_clip_text_encoder(len(tokenizer), text_dim, seed=seed),
        text_encoder_2=_clip_text_encoder(len(tokenizer), text_dim, projection=pooled_dim, seed=seed + 1),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(num_train_timesteps=1000),
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    _remove_tree(folder / "_tok")
    return folder


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def tiny_t5_tokenizer(max_length: int = 64):
    """A sentencepiece-style Unigram tokenizer ('▁cat', lone '▁' for unknown words), as a T5 fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz.,|"]
    pieces += [("▁" + w, -3.0) for w in WORDS]  # known words are one piece; others split into '▁' + letters
    backend = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=backend,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=max_length,
    )


def _tiny_t5_encoder(vocab_size: int, width: int = 32, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size,
        d_model=width,
        d_kv=8,
        d_ff=width * 2,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval()


def _tiny_vae16(seed: int = 0):
    """A 16-channel latent VAE with a shift factor, like SD3's and FLUX's (downsampling ×2)."""
    return _tiny_vae(seed, latent_channels=16, scaling_factor=1.5, shift_factor=0.06)


def build_tiny_pixart(folder: str | Path, sigma: bool = True, seed: int = 0) -> Path:
    """A random PixArt-Σ (or -α, with size conditioning) pipeline: 2 blocks, 16² latents, tiny T5."""
    from diffusers import (
        DPMSolverMultistepScheduler,
        PixArtAlphaPipeline,
        PixArtSigmaPipeline,
        PixArtTransformer2DModel,
    )

    folder = Path(folder)
    tokenizer = tiny_t5_tokenizer()
    text_encoder = _tiny_t5_encoder(len(tokenizer), 32, seed)
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        cross_attention_dim=24,
        caption_channels=32,
        sample_size=16,
        patch_size=2,
        norm_num_groups=8,
        use_additional_conditions=not sigma,  # α at 1024 px conditions on resolution and aspect ratio
    )
    cls = PixArtSigmaPipeline if sigma else PixArtAlphaPipeline
    pipe = cls(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=_tiny_vae(seed),
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(num_train_timesteps=1000),
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_sd3(folder: str | Path, with_t5: bool = True, sd35: bool = False, seed: int = 0) -> Path:
    """A random SD3-style pipeline: two CLIP encoders + T5 (optional), 2 joint blocks (the last context-pre-only).

    sd35: SD3.5-style blocks, with q/k RMS norms and a second, image-only attention in the first block.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    folder = Path(folder)
    clip_tokenizer = tiny_clip_tokenizer(folder / "_tok")
    t5_tokenizer = tiny_t5_tokenizer()
    clip_l = _clip_text_encoder(len(clip_tokenizer), 16, projection=16, seed=seed)
    clip_g = _clip_text_encoder(len(clip_tokenizer), 32, projection=16, seed=seed + 1)
    t5 = _tiny_t5_encoder(len(t5_tokenizer), 64, seed) if with_t5 else None
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,
        caption_projection_dim=32,
        pooled_projection_dim=32,
        out_channels=16,
        pos_embed_max_size=16,
        dual_attention_layers=(0,) if sd35 else (),
        qk_norm="rms_norm" if sd35 else None,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_tiny_vae16(seed),
        text_encoder=clip_l,
        tokenizer=clip_tokenizer,
        text_encoder_2=clip_g,
        tokenizer_2=clip_tokenizer,
        text_encoder_3=t5,
        tokenizer_3=t5_tokenizer if with_t5 else None,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    _remove_tree(folder / "_tok")
    return folder


def build_tiny_flux(folder: str | Path, guidance: bool = True, seed: int = 0) -> Path:
    """A random FLUX.1-style pipeline: 2 double- and 2 single-stream blocks, CLIP pooled + T5, packed latents."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    folder = Path(folder)
    clip_tokenizer = tiny_clip_tokenizer(folder / "_tok")
    t5_tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=32,
        pooled_projection_dim=16,
        guidance_embeds=guidance,
        axes_dims_rope=(2, 2, 4),
    )
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_tiny_vae16(seed),
        text_encoder=_clip_text_encoder(len(clip_tokenizer), 16, seed=seed),
        tokenizer=clip_tokenizer,
        text_encoder_2=_tiny_t5_encoder(len(t5_tokenizer), 32, seed),
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    _remove_tree(folder / "_tok")
    return folder


def tiny_bert_tokenizer(folder: Path, max_length: int = 77):
    """A WordPiece tokenizer over the tiny vocabulary (unknown words split into letters), with [CLS]/[SEP]/[PAD]."""
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "|", *WORDS, *letters]
    vocab += ["##" + c for c in letters]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizer(str(folder / "vocab.txt"), model_max_length=max_length)


def build_tiny_hunyuandit(folder: str | Path, seed: int = 0) -> Path:
    """A random HunyuanDiT pipeline: 4 blocks (one long skip), BERT (77 tokens) + T5 (64 tokens), 16² latents."""
    from diffusers import DDPMScheduler, HunyuanDiT2DModel, HunyuanDiTPipeline
    from transformers import BertConfig, BertModel

    folder = Path(folder)
    bert_tokenizer = tiny_bert_tokenizer(folder / "_tok")
    t5_tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(seed)
    bert = BertModel(
        BertConfig(
            vocab_size=len(bert_tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=128,
        ),
        add_pooling_layer=False,
    ).eval()
    torch.manual_seed(seed)
    transformer = HunyuanDiT2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        patch_size=2,
        sample_size=16,
        hidden_size=16,
        num_layers=4,
        cross_attention_dim=32,
        cross_attention_dim_t5=32,
        pooled_projection_dim=16,
        text_len=77,
        text_len_t5=64,
    )
    pipe = HunyuanDiTPipeline(
        vae=_tiny_vae(seed),
        text_encoder=bert,
        tokenizer=bert_tokenizer,
        transformer=transformer,
        scheduler=DDPMScheduler(num_train_timesteps=1000),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        text_encoder_2=_tiny_t5_encoder(len(t5_tokenizer), 32, seed),
        tokenizer_2=t5_tokenizer,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    _remove_tree(folder / "_tok")
    return folder


# -- real block layouts at tiny widths: the module paths of the released models, for plan checks ----------------
def _layout_denoiser(family: str) -> tuple[str, torch.nn.Module]:
    """A random denoiser with the released model's block layout (names, counts, levels) and tiny widths."""
    from diffusers import (
        FluxTransformer2DModel,
        HunyuanDiT2DModel,
        PixArtTransformer2DModel,
        UNet2DConditionModel,
    )

    torch.manual_seed(0)
    if family == "sd":  # SD1.5: attention at the first three levels, 2 layers per down block, 3 per up block
        return "unet", UNet2DConditionModel(
            sample_size=64,
            block_out_channels=(8, 8, 8, 8),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=8,
            attention_head_dim=4,
            norm_num_groups=4,
        )
    if family == "sdxl":  # SDXL: no attention at the first level, 2 and 10 transformer blocks further down
        return "unet", UNet2DConditionModel(
            sample_size=128,
            block_out_channels=(8, 8, 8),
            layers_per_block=2,
            transformer_layers_per_block=(1, 2, 10),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=8,
            attention_head_dim=4,
            norm_num_groups=4,
        )
    if family in ("pixart-alpha", "pixart-sigma"):  # 28 blocks; α at 512 px (64² latent), Σ at 1024 px
        return "transformer", PixArtTransformer2DModel(
            num_attention_heads=2,
            attention_head_dim=4,
            in_channels=4,
            out_channels=8,
            num_layers=28,
            cross_attention_dim=8,
            caption_channels=8,
            sample_size=64 if family == "pixart-alpha" else 128,
            patch_size=2,
            norm_num_groups=4,
        )
    if family == "flux":  # FLUX.1: 19 double-stream blocks, then 38 single-stream blocks
        return "transformer", FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=19,
            num_single_layers=38,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=8,
            pooled_projection_dim=8,
            axes_dims_rope=(2, 2, 4),
        )
    if family == "hunyuandit":  # HunyuanDiT 1.x: 40 blocks
        return "transformer", HunyuanDiT2DModel(
            num_attention_heads=2,
            attention_head_dim=4,
            in_channels=4,
            patch_size=2,
            sample_size=128,
            hidden_size=8,
            num_layers=40,
            cross_attention_dim=8,
            cross_attention_dim_t5=8,
            pooled_projection_dim=8,
            text_len=77,
            text_len_t5=16,
        )
    raise ValueError(f"no released layout for family {family!r}")


def layout_backbone(family: str):
    """A family's adapter around a denoiser of the released model's layout (no text encoder or VAE): for plans."""
    from attnseg.backbones import FAMILIES

    key, denoiser = _layout_denoiser(family)
    cls = next(c for c in FAMILIES if c.family == family)
    return cls({key: denoiser.eval()}, f"layout:{family}", torch.device("cpu"), torch.float32)
