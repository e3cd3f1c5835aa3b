"""Each family's capture plan on a denoiser of the released model's layout, against METHOD.md's per-family table.

The denoisers are random and tiny in width (`attnseg.testing.layout_backbone`) but have the released models'
module paths, so the plan names exactly the modules the reference code's configs name.
"""

from __future__ import annotations

import pytest

from attnseg.segmentor import config_for
from attnseg.testing import layout_backbone

SDXL_UP = "up_blocks.1.attentions"
# family → (latent h×w at the native size, native px, head mode, k, reference module, propagation layers,
#           map grid, reference grid, cross-attention layers read)
TABLE = {
    "sd": (
        (64, 64),
        512,
        "goca",
        2,
        "up_blocks.2.attentions.1.transformer_blocks.0.attn2",
        [
            "down_blocks.0.attentions.1.transformer_blocks.0",
            "up_blocks.3.attentions.0.transformer_blocks.0",
            "up_blocks.3.attentions.1.transformer_blocks.0",
        ],
        (64, 64),
        (32, 32),
        16,
    ),
    "sdxl": (
        (128, 128),
        1024,
        "goca",
        2,
        f"{SDXL_UP}.0.transformer_blocks.0.attn2",
        [
            "down_blocks.1.attentions.0.transformer_blocks.0",
            "down_blocks.1.attentions.0.transformer_blocks.1",
            f"{SDXL_UP}.0.transformer_blocks.0",
            f"{SDXL_UP}.0.transformer_blocks.1",
            f"{SDXL_UP}.1.transformer_blocks.0",
            f"{SDXL_UP}.1.transformer_blocks.1",
            f"{SDXL_UP}.2.transformer_blocks.0",
        ],
        (64, 64),
        (64, 64),
        70,  # 2·1 + 2·2 + 2·10 encoder, 10 middle, 3·10 + 3·2 decoder
    ),
    "pixart-alpha": (
        (64, 64),
        512,
        "goca",
        5,
        "transformer_blocks.13.attn2",
        [f"transformer_blocks.{i}" for i in range(10, 18)],
        (32, 32),
        (32, 32),
        28,
    ),
    "pixart-sigma": (
        (128, 128),
        1024,
        "goca",
        5,
        "transformer_blocks.13.attn2",
        [f"transformer_blocks.{i}" for i in range(10, 18)],
        (64, 64),
        (64, 64),
        28,
    ),
    "flux": (
        (128, 128),
        1024,
        "mean",
        2,
        "single_transformer_blocks.8",  # block 27 counting the 19 double-stream blocks first: its output
        ["transformer_blocks.12", "transformer_blocks.18"],
        (64, 64),
        (64, 64),
        57,
    ),
    "hunyuandit": (
        (128, 128),
        1024,
        "mean",
        4,
        "blocks.25.attn2",
        [f"blocks.{i}" for i in range(20, 30)],
        (64, 64),
        (64, 64),
        40,
    ),
}


@pytest.mark.parametrize("method", ["goca-reference", "goca"])
@pytest.mark.parametrize("family", sorted(TABLE))
def test_plan_names_the_reference_codes_modules(family: str, method: str) -> None:
    latent, native, heads, steps, reference, propagation, map_grid, ref_grid, n_cross = TABLE[family]
    backbone = layout_backbone(family)
    config = config_for(backbone, method)
    assert backbone.preset.native_size == native
    assert (config.head_aggregation, config.refine_steps) == (heads, steps)
    plan = backbone.capture_plan(latent, config)
    references = [name for name, call in plan.plans.items() if call.reference_query]
    assert (references or [plan.reference_output]) == [reference]
    assert sorted(plan.propagation_layers) == propagation
    cross = {call.layer for call in plan.plans.values() if call.read_cross}
    assert len(cross) == n_cross  # the reference reads every cross-attention layer
    assert plan.map_size == map_grid and plan.reference_grid == ref_grid
    # Propagation layers read their self-attention in full (the streaming path's propagation branch).
    for layer in propagation:
        assert any(call.layer == layer and call.read_self for call in plan.plans.values())


def test_vanilla_keeps_its_own_head_mode_on_families_whose_reference_averages_heads() -> None:
    backbone = layout_backbone("flux")
    assert config_for(backbone, "vanilla").head_aggregation == "mean"
    assert config_for(backbone, "goca", head_aggregation="goca").head_aggregation == "goca"


def test_named_layers_override_the_preset_and_unknown_paths_say_what_exists() -> None:
    from attnseg.errors import BadConfigError

    backbone = layout_backbone("sd")
    config = config_for(
        backbone,
        "goca-reference",
        propagation_layers="down_blocks.0.attentions.0,up_blocks.3.attentions.2",
        reference_layer="up_blocks.1.attentions.2",
    )
    plan = backbone.capture_plan((64, 64), config)
    assert sorted(plan.propagation_layers) == [
        "down_blocks.0.attentions.0.transformer_blocks.0",
        "up_blocks.3.attentions.2.transformer_blocks.0",
    ]
    assert [n for n, c in plan.plans.items() if c.reference_query] == [
        "up_blocks.1.attentions.2.transformer_blocks.0.attn2"
    ]
    assert plan.reference_grid == (16, 16)
    bad = config_for(backbone, "goca", propagation_layers="up_blocks.9.attentions.0")
    with pytest.raises(BadConfigError, match="no layer at 'up_blocks.9.attentions.0'; its layers are"):
        backbone.capture_plan((64, 64), bad)
