"""S-CFG in diffusers pipelines: on a tiny model of every family whose pipeline batches uncond and cond."""

from __future__ import annotations

import pytest
import torch

from attnseg.errors import BadClassesError, BadConfigError
from attnseg.guidance import RateConfig, scfg
from attnseg.guidance.generate import GenerateOptions, ImageGenerator
from attnseg.testing import build_tiny_pixart, build_tiny_sd, build_tiny_sd3

PROMPT = "a photo of a cat on grass"
CLASSES = ["cat", "grass"]


def sd_pipeline(folder):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latents(pipe, **kwargs) -> torch.Tensor:
    """Two steps at guidance 5, seed 0, returned before the VAE so that nothing is rounded away."""
    call = dict(num_inference_steps=2, guidance_scale=5.0, height=32, width=32, output_type="latent")
    return pipe(PROMPT, generator=torch.Generator().manual_seed(0), **call | kwargs).images


def test_rate_one_is_plain_cfg_bit_for_bit(tiny_sd):
    pipe = sd_pipeline(tiny_sd)
    plain = latents(pipe)
    # Propagation off: every capture processor then returns the fused kernel's output, so the whole
    # difference from the bare pipeline would be the guidance arithmetic.
    with scfg(pipe, PROMPT, CLASSES, rate=RateConfig(fixed_rate=1.0), refine="none") as guide:
        same = latents(pipe)
    assert torch.equal(same, plain) and guide.rate_means == [1.0, 1.0]
    # With GoCA's propagation on, against plain CFG under the same capture (its propagation layers compute
    # their output from explicit probabilities, within 1e-4 of the fused kernel).
    with attnseg_trace(pipe):
        traced = latents(pipe)
    with scfg(pipe, PROMPT, CLASSES, rate=RateConfig(fixed_rate=1.0)):
        same = latents(pipe)
    assert torch.equal(same, traced) and torch.allclose(traced, plain, atol=1e-4)
    with scfg(pipe, PROMPT, CLASSES) as guide:
        guided = latents(pipe)
    assert not torch.allclose(guided, plain, atol=1e-3)
    assert len(guide.rate_means) == 2 and all(0.8 <= r <= 3.0 for r in guide.rate_means)
    assert guide.rate_means != [1.0, 1.0]


def test_one_capture_plan_per_run_changes_nothing(tiny_sd):
    pipe = sd_pipeline(tiny_sd)

    class Unkept(dict):  # a plan cache that keeps nothing: a plan is built at every step, as before
        def __setitem__(self, key, value) -> None:
            pass

    with scfg(pipe, PROMPT, CLASSES) as cached:
        once = latents(pipe, num_inference_steps=3)
    with scfg(pipe, PROMPT, CLASSES) as rebuilt:
        rebuilt._plans = Unkept()
        every_step = latents(pipe, num_inference_steps=3)
    assert len(cached._plans) == 1 and not rebuilt._plans
    assert torch.equal(once, every_step) and cached.rate_means == rebuilt.rate_means


def attnseg_trace(pipe):
    import attnseg

    return attnseg.trace(pipe, keep_tokens=16)


def test_scfg_leaves_the_pipeline_as_it_found_it_and_masks_the_run(tiny_sd):
    pipe = sd_pipeline(tiny_sd)
    before = dict(pipe.unet.attn_processors)
    with scfg(pipe, PROMPT, CLASSES, method="vanilla") as guide:
        image = pipe(
            PROMPT,
            num_inference_steps=3,
            guidance_scale=4.0,
            height=32,
            width=32,
            generator=torch.Generator().manual_seed(0),
        ).images[0]
    after = dict(pipe.unet.attn_processors)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert not pipe.unet._forward_hooks and not pipe.unet._forward_pre_hooks
    seg = guide.segment_all(images=[image])[0]
    assert seg.classes == CLASSES and seg.labels.shape == (32, 32) and seg.meta["method"] == "vanilla"
    assert guide.steps == 3 and guide.calls == 3  # read_last 1.0: every step's maps are averaged
    with pytest.raises(BadClassesError, match="does not occur"):
        scfg(pipe, PROMPT, ["dog"])


# PixArt-α is left out: its tiny model takes size conditioning at sample size 16, and diffusers' own pipeline
# passes that only at 128, so the pipeline cannot run it with or without attnseg (α and Σ share the hook path).
@pytest.mark.parametrize("family", ["sd2", "sdxl", "pixart-sigma", "sd3"])
def test_scfg_runs_on_every_family(family, tiny_sdxl, tmp_path):
    folder = {
        "sd2": lambda: build_tiny_sd(tmp_path / "m", sd2=True),
        "sdxl": lambda: tiny_sdxl,
        "pixart-sigma": lambda: build_tiny_pixart(tmp_path / "m", sigma=True),
        "sd3": lambda: build_tiny_sd3(tmp_path / "m"),
    }[family]()
    generator = ImageGenerator.from_pretrained(str(folder), device="cpu")
    assert generator.backbone.family == family.replace("sd2", "sd")
    steps = 2
    options = GenerateOptions(guidance="s-cfg", cfg=4.0, steps=steps, masks=True, read_last=1.0)
    plain = generator.generate(PROMPT, CLASSES, GenerateOptions(guidance="cfg", cfg=4.0, steps=steps), n=1)
    results = generator.generate(PROMPT, CLASSES, options, seed=0, n=2)
    size = generator.backbone.preset.native_size
    assert [r.seed for r in results] == [0, 1]
    rates = results[0].meta["rate_mean_per_step"]
    assert len(rates) == steps and all(0.8 <= r <= 3.0 for r in rates) and rates != [1.0] * steps
    seg = results[0].segmentation
    assert (
        seg.classes == CLASSES and seg.labels.shape == (size, size) and results[0].image.size == (size, size)
    )
    assert torch.isfinite(seg.scores).all()
    assert plain[0].image.size == results[0].image.size


def test_a_pipeline_without_its_own_guidance_scale_needs_one(tmp_path):
    from diffusers import PixArtSigmaPipeline

    pipe = PixArtSigmaPipeline.from_pretrained(build_tiny_pixart(tmp_path / "m"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(BadConfigError, match="guidance_scale="):
        with scfg(pipe, PROMPT, CLASSES):
            latents(pipe, use_resolution_binning=False)
    with scfg(pipe, PROMPT, CLASSES, guidance_scale=5.0) as guide:
        latents(pipe, use_resolution_binning=False)
    assert len(guide.rate_means) == 2


def test_scfg_defaults_to_the_nouns_an_embedded_model_knows():
    from diffusers import StableDiffusionPipeline

    from attnseg.backbones.loading import resolve_model
    from attnseg.errors import BadPromptError

    pipe = StableDiffusionPipeline.from_pretrained(resolve_model(None)[0], local_files_only=True)
    guide = scfg(pipe, "a small red crescent moon over the grass")
    assert [spec.name for spec in guide.specs] == ["crescent moon", "grass"]
    with pytest.raises(BadPromptError, match="does not know 'dog'"):
        scfg(pipe, "a red dog")
