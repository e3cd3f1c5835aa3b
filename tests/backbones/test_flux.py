"""FLUX.1 end to end on tiny random models built from config (dev-style with guidance, schnell-style without)."""

from __future__ import annotations

import pytest
import torch
from backbone_checks import check_capture_is_transparent, check_token_spans, segment_and_check

from attnseg.backbones import FluxBackbone
from attnseg.method.config import method_config
from attnseg.testing import build_tiny_flux


@pytest.mark.parametrize("guidance", [True, False], ids=["dev", "schnell"])
def test_flux_segments_end_to_end(tmp_path, guidance):
    folder = build_tiny_flux(tmp_path / "flux", guidance=guidance)
    layers = [
        "transformer_blocks.0",
        "transformer_blocks.1",
        "single_transformer_blocks.0",
        "single_transformer_blocks.1",
    ]
    seg, result = segment_and_check(folder, layers)

    backbone = seg.backbone
    assert type(backbone) is FluxBackbone
    assert backbone.preset.native_size == 32 and backbone.preset.sigma == 0.15  # the tiny VAE's sample size
    assert backbone.denoiser.config.guidance_embeds is guidance
    assert (
        backbone._reference_block(method_config("goca")) == "single_transformer_blocks.0"
    )  # the middle of 4 blocks
    assert backbone.latent_grid(torch.zeros(1, 64, 64)) == (16, 16)  # a packed input (a pipeline's call)

    text = result.meta["prompts"][0]["text"]
    ids = backbone.tokenizer(text).input_ids
    check_token_spans(result, backbone.tokenizer, ids, offset=0)  # T5 tokens only, first in the sequence

    reducer = check_capture_is_transparent(seg, text)
    assert reducer.layer_order == layers
    assert reducer.grids == {name: (8, 8) for name in layers}  # 16² latent packed 2×2
    assert reducer.reference is not None and reducer.affinity_count == len(layers)
    # Self-attention of the layers before the reference waited for it, then all were scored.
    assert not reducer.pending and set(reducer.scores) == set(layers)
    for layer in layers:
        rows = reducer.cross[layer].sum(-1)
        assert float((rows - 1).abs().max()) < 1e-4
