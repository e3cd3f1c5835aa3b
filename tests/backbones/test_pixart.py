"""PixArt-α / PixArt-Σ end to end on tiny random models built from config."""

from __future__ import annotations

import pytest
from backbone_checks import check_capture_is_transparent, check_token_spans, segment_and_check

from attnseg.backbones import PixArtAlphaBackbone, PixArtSigmaBackbone
from attnseg.testing import build_tiny_pixart


@pytest.mark.parametrize("sigma", [True, False], ids=["sigma", "alpha"])
def test_pixart_segments_end_to_end(tmp_path, sigma):
    folder = build_tiny_pixart(tmp_path / "pixart", sigma=sigma)
    layers = ["transformer_blocks.0", "transformer_blocks.1"]
    seg, result = segment_and_check(folder, layers)

    backbone = seg.backbone
    assert type(backbone) is (PixArtSigmaBackbone if sigma else PixArtAlphaBackbone)
    assert backbone.preset.native_size == 32  # sample_size 16 × the tiny VAE's ×2
    assert (
        backbone.text_tokens == (300 if sigma else 120) and backbone.max_tokens == 64
    )  # the tiny tokenizer's cap
    assert seg.config.refine_steps == 5
    assert backbone.denoiser.use_additional_conditions is (not sigma)

    text = result.meta["prompts"][0]["text"]
    ids = backbone.tokenizer(text).input_ids
    assert "▁" in backbone.tokenizer.convert_ids_to_tokens(ids)  # 'zebra' brings a lone word-boundary piece
    check_token_spans(result, backbone.tokenizer, ids, offset=0)

    reducer = check_capture_is_transparent(seg, text)
    assert reducer.layer_order == layers
    assert reducer.grids == {name: (8, 8) for name in layers}  # 16² latent, patch 2
    assert reducer.reference is not None and reducer.affinity_count == 2
    # The T5 padding is masked out of cross-attention: the columns past the prompt hold no attention.
    assert len(ids) < 16
    for layer in layers:
        assert float(reducer.cross[layer][..., len(ids) :].sum(-1).max()) < 1e-3
