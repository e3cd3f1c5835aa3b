"""HunyuanDiT end to end on a tiny random model built from config."""

from __future__ import annotations

from backbone_checks import check_capture_is_transparent, check_token_spans, segment_and_check

from attnseg.backbones import HunyuanDiTBackbone
from attnseg.testing import build_tiny_hunyuandit


def test_hunyuandit_segments_end_to_end(tmp_path):
    folder = build_tiny_hunyuandit(tmp_path / "hunyuan")
    layers = [f"blocks.{i}" for i in range(4)]
    seg, result = segment_and_check(folder, layers)

    backbone = seg.backbone
    assert type(backbone) is HunyuanDiTBackbone
    assert backbone.preset.native_size == 32 and backbone.max_tokens == 77
    assert backbone.denoiser.blocks[3].skip_linear is not None  # the long-skip half runs too

    text = result.meta["prompts"][0]["text"]
    ids = backbone.tokenizer(text).input_ids
    check_token_spans(result, backbone.tokenizer, ids, offset=0)  # BERT tokens come first in the keys

    reducer = check_capture_is_transparent(seg, text)
    assert reducer.layer_order == layers
    assert reducer.grids == {name: (8, 8) for name in layers}  # 16² latent, patch 2
    assert reducer.reference is not None and reducer.affinity_count == len(layers)
