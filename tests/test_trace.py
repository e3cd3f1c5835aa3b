import pytest
import torch

import attnseg
from attnseg.errors import BadClassesError


def test_trace_captures_a_user_pipeline_run(tiny_sd):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    before = dict(pipe.unet.attn_processors)
    prompt = "a photo of a cat on grass"
    with attnseg.trace(pipe) as tr:
        image = pipe(
            prompt,
            num_inference_steps=2,
            guidance_scale=3.0,
            height=32,
            width=32,
            generator=torch.Generator().manual_seed(0),
        ).images[0]
    assert tr.steps == 2
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {type(p) for p in before.values()}
    seg = tr.segment(prompt, ["cat", "grass"], image=image)
    assert seg.scores.shape == (2, 32, 32) and seg.labels.shape == (32, 32)
    assert seg.meta["token_spans"]["cat"] and seg.meta["steps"] == 2
    with pytest.raises(BadClassesError, match="does not occur"):
        tr.segment(prompt, ["dog"])


def test_trace_twice_and_with_more_kept_columns_than_tokens(tiny_sd):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    prompt = "a cat on grass"
    for _ in range(2):  # the public name stays the function after first use
        with attnseg.trace(pipe, keep_tokens=100) as tr:
            pipe(
                prompt, num_inference_steps=1, height=32, width=32, generator=torch.Generator().manual_seed(0)
            )
        assert tr.segment(prompt, ["cat"]).scores.shape[0] == 1
