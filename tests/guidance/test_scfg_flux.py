"""S-CFG on FLUX's true CFG (two forwards per step, cond then uncond) on a tiny FLUX pipeline."""

from __future__ import annotations

import pytest
import torch

import attnseg
from attnseg.errors import BadConfigError
from attnseg.guidance import RateConfig, scfg
from attnseg.testing import build_tiny_flux
from attnseg.tracing import backbone_for_pipeline

PROMPT = "a photo of a cat on grass"
CLASSES = ["cat", "grass"]
CFG = 4.0


@pytest.fixture(scope="module")
def flux_pipe(tmp_path_factory):
    from diffusers import FluxPipeline

    folder = build_tiny_flux(tmp_path_factory.mktemp("tiny_flux") / "model")
    pipe = FluxPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, **kwargs):
    """Three steps of true CFG, seed 0, before the VAE so that nothing is rounded away."""
    call = dict(
        num_inference_steps=3,
        height=32,
        width=32,
        output_type="latent",
        negative_prompt="",
        true_cfg_scale=CFG,
        max_sequence_length=32,
    )
    return pipe(PROMPT, generator=torch.Generator().manual_seed(0), **call | kwargs).images


def test_packing_is_the_pipelines(flux_pipe):
    from diffusers import FluxPipeline

    backbone = backbone_for_pipeline(flux_pipe)
    latents = torch.randn(2, 16, 8, 12)
    packed = FluxPipeline._pack_latents(latents, 2, 16, 8, 12)
    assert torch.equal(backbone.pack_latents(latents), packed)
    assert torch.equal(backbone.unpack_latents(packed, (8, 12)), latents)


def test_rate_one_is_plain_true_cfg_bit_for_bit(flux_pipe):
    plain = generate(flux_pipe)
    # Propagation off: every capture processor returns the fused kernel's output, so the whole difference
    # from the bare pipeline would be the guidance arithmetic and the in-place rewrite.
    one = RateConfig(fixed_rate=1.0)
    with scfg(flux_pipe, PROMPT, CLASSES, guidance_scale=CFG, rate=one, refine="none") as guide:
        same = generate(flux_pipe)
    assert torch.equal(same, plain) and guide.rate_means == [1.0, 1.0, 1.0]
    assert guide.calls == 6 and guide.steps == 3  # two forwards a step; the masks read the cond ones
    # GoCA's propagation layers compute their output from explicit probabilities (within 1e-4 of the kernel),
    # on the cond forward only: the uncond forward reads no propagation layer, so it is the plain one and the
    # run equals plain true CFG under the same cond capture (a trace reads the cond forwards alone).
    with attnseg.trace(flux_pipe, keep_tokens=32, presence="off"):
        traced = generate(flux_pipe)
    with scfg(flux_pipe, PROMPT, CLASSES, guidance_scale=CFG, rate=one):
        same = generate(flux_pipe)
    assert torch.equal(same, traced) and torch.allclose(same, plain, atol=1e-4)


def test_a_fixed_rate_scales_the_true_cfg(flux_pipe):
    # ε_u + cfg·2·Δε is plain true CFG at twice the scale: the held cond was rewritten, packed back in place.
    doubled = generate(flux_pipe, true_cfg_scale=2 * CFG)
    two = RateConfig(fixed_rate=2.0)
    with scfg(flux_pipe, PROMPT, CLASSES, guidance_scale=CFG, rate=two, refine="none"):
        guided = generate(flux_pipe)
    assert torch.allclose(guided, doubled, atol=1e-5) and not torch.allclose(guided, generate(flux_pipe))


def test_scfg_guides_true_cfg_and_masks_the_run(flux_pipe):
    plain = generate(flux_pipe)
    before = dict(flux_pipe.transformer.attn_processors)
    with scfg(flux_pipe, PROMPT, CLASSES, guidance_scale=CFG) as guide:
        guided = generate(flux_pipe)
    assert not torch.allclose(guided, plain, atol=1e-3)
    assert len(guide.rate_means) == 3 and all(0.8 <= r <= 3.0 for r in guide.rate_means)
    assert guide.rate_means != [1.0] * 3
    after = dict(flux_pipe.transformer.attn_processors)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert not flux_pipe.transformer._forward_hooks and not flux_pipe.transformer._forward_pre_hooks

    with scfg(flux_pipe, PROMPT, CLASSES, guidance_scale=CFG, method="vanilla") as guide:
        images = generate(flux_pipe, output_type="pil", num_images_per_prompt=2)
    segs = guide.segment_all(images=images)
    assert len(segs) == 2 and guide.steps == 3 and guide.calls == 6
    for seg, image in zip(segs, images):
        assert seg.classes == CLASSES and seg.labels.shape == (image.height, image.width) == (32, 32)
        assert torch.isfinite(seg.scores).all() and seg.meta["method"] == "vanilla"


def test_flux_needs_the_true_cfg_scale_and_a_negative_prompt(flux_pipe):
    with pytest.raises(BadConfigError, match="guidance_scale=<your true_cfg_scale>"):
        scfg(flux_pipe, PROMPT, CLASSES)
    with pytest.raises(BadConfigError, match="negative_prompt="):
        with scfg(flux_pipe, PROMPT, CLASSES, guidance_scale=CFG):
            generate(flux_pipe, negative_prompt=None)
    with pytest.raises(BadConfigError, match="negative_prompt="):  # one step: found when the block ends
        with scfg(flux_pipe, PROMPT, CLASSES, guidance_scale=CFG):
            generate(flux_pipe, negative_prompt=None, num_inference_steps=1)
    assert not flux_pipe.transformer._forward_hooks and not flux_pipe.transformer._forward_pre_hooks


def test_trace_of_true_cfg_reads_the_cond_forwards_of_its_window(flux_pipe):
    # FluxPipeline passes t / 1000: the window is found on the scheduler's own timesteps all the same.
    with attnseg.trace(flux_pipe, keep_tokens=32, read_last=0.5, presence="off") as tr:
        images = generate(flux_pipe, num_inference_steps=4, output_type="pil", num_images_per_prompt=2)
    assert tr.calls == 8 and tr.steps == 2
    segs = tr.segment_all(PROMPT, CLASSES, images)  # both images: FLUX batches no uncond rows
    assert [seg.classes for seg in segs] == [CLASSES, CLASSES]


def test_the_generator_guides_flux_through_true_cfg(tmp_path):
    from attnseg.guidance.generate import GenerateOptions, ImageGenerator

    generator = ImageGenerator.from_pretrained(str(build_tiny_flux(tmp_path / "m")), device="cpu")
    options = GenerateOptions(guidance="s-cfg", cfg=CFG, steps=2, masks=True, read_last=0.5)
    plain = generator.generate(PROMPT, CLASSES, GenerateOptions(guidance="cfg", cfg=CFG, steps=2), n=1)
    result = generator.generate(PROMPT, CLASSES, options, n=1)[0]
    rates = result.meta["rate_mean_per_step"]
    assert len(rates) == 2 and rates != [1.0, 1.0] and result.segmentation.meta["steps"] == 1
    assert result.segmentation.classes == CLASSES and result.segmentation.labels.shape == (32, 32)
    assert plain[0].image.size == result.image.size == (32, 32)
    assert plain[0].image.tobytes() != result.image.tobytes()
