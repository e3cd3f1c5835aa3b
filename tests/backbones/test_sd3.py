"""SD3 / SD3.5 end to end on tiny random models built from config (with and without the T5 encoder)."""

from __future__ import annotations

import pytest
from backbone_checks import check_capture_is_transparent, check_token_spans, segment_and_check

from attnseg.backbones import SD3Backbone
from attnseg.testing import build_tiny_sd3


@pytest.mark.parametrize(
    ("with_t5", "sd35"), [(True, True), (False, False)], ids=["sd35-t5", "sd3-clip-only"]
)
def test_sd3_segments_end_to_end(tmp_path, with_t5, sd35):
    folder = build_tiny_sd3(tmp_path / "sd3", with_t5=with_t5, sd35=sd35)
    layers = ["transformer_blocks.0", "transformer_blocks.1"]
    seg, result = segment_and_check(folder, layers)

    backbone = seg.backbone
    assert type(backbone) is SD3Backbone and backbone.has_t5 is with_t5
    assert backbone.preset.native_size == 32 and backbone.preset.sigma == 0.15
    assert backbone.denoiser.transformer_blocks[-1].context_pre_only  # the last block is handled too
    first = backbone.denoiser.transformer_blocks[0]
    assert (first.attn2 is not None) is sd35 and (first.attn.norm_q is not None) is sd35

    text = result.meta["prompts"][0]["text"]
    ids = backbone.tokenizer(text).input_ids
    offset = 77 if with_t5 else 0  # T5 tokens sit after the 77 CLIP positions in the joint text sequence
    check_token_spans(result, backbone.tokenizer, ids, offset=offset)

    reducer = check_capture_is_transparent(seg, text)
    assert reducer.layer_order == layers
    assert reducer.grids == {name: (8, 8) for name in layers}  # 16² latent, patch 2
    assert reducer.reference is not None and reducer.affinity_count == 2
    # Cross-attention is the softmax over the text keys alone: each pixel's row sums to 1 over all columns.
    for layer in layers:
        rows = reducer.cross[layer].sum(-1)
        assert float((rows - 1).abs().max()) < 1e-4
