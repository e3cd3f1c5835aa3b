"""The settings the reference presets switch: label rule, name pooling, background propagation, layer names."""

from __future__ import annotations

import pytest
import torch

from attnseg.errors import BadConfigError
from attnseg.method.config import METHOD_PRESETS, MethodConfig, method_config
from attnseg.method.labels import assign_labels
from attnseg.method.pipeline import CapturedAttention, TokenLayout, run_method
from attnseg.method.rescale import class_maps


def test_offset_rule_adds_tau_to_the_background_map() -> None:
    scores = torch.tensor([[[0.5, 0.5, 0.5]]])  # one class, three pixels
    background = torch.tensor([[[0.2, 0.45, 0.7]]])
    # max(τ, B) with τ = 0.3: 0.3, 0.45, 0.7 → only the last pixel is background.
    assert assign_labels(scores, 0.3, background).tolist() == [[1, 1, 0]]
    # B + τ: 0.5 (a tie: background wins, as the reference's argmax), 0.75, 1.0.
    assert assign_labels(scores, 0.3, background, rule="offset").tolist() == [[0, 0, 0]]
    # A negative τ lowers the background below the class maps.
    assert assign_labels(scores, -0.1, background, rule="offset").tolist() == [[1, 1, 0]]
    # No background words: both rules are the constant τ.
    assert assign_labels(scores, 0.4, None, rule="offset").tolist() == [[1, 1, 1]]


def test_tau_range_depends_on_the_rule() -> None:
    assert method_config("goca-reference", tau=-0.4).tau == -0.4
    with pytest.raises(BadConfigError, match=r"\[0, 1\] under label_rule='max'"):
        method_config("goca", tau=-0.1)
    with pytest.raises(BadConfigError, match="label_rule"):
        method_config("goca", label_rule="sum")


def test_name_pooling_max_over_names_or_mean_over_all_tokens() -> None:
    attn = torch.tensor([0.1, 0.5, 0.3, 0.2]).view(1, 4, 1, 1)  # columns 1: "man"; 2, 3: "young boy"
    names = [[[1], [2, 3]]]
    assert class_maps(attn, names, "max").item() == pytest.approx(0.5)  # max(0.5, mean(0.3, 0.2))
    assert class_maps(attn, names, "mean").item() == pytest.approx((0.5 + 0.3 + 0.2) / 3)


def test_layer_paths_parse_from_a_comma_separated_string() -> None:
    config = MethodConfig(propagation_layers="up_blocks.3.attentions.0, down_blocks.0.attentions.1")
    assert config.propagation_layers == ("up_blocks.3.attentions.0", "down_blocks.0.attentions.1")
    assert config.names_propagation_layers
    assert MethodConfig(propagation_layers=1).propagation_layers == 1
    assert MethodConfig(propagation_layers="2").propagation_layers == 2  # a count given as text
    assert not MethodConfig(propagation_layers=0).names_propagation_layers
    assert config.to_dict()["propagation_layers"] == list(config.propagation_layers)
    assert MethodConfig(reference_layer=" blocks.25 ").reference_layer == "blocks.25"
    with pytest.raises(BadConfigError, match="names no module path"):
        MethodConfig(propagation_layers=" , ")


def _capture(background: bool) -> tuple[CapturedAttention, TokenLayout]:
    """Two layers' maps on a 2×2 grid: tokens start, cat, dog, (sky), end; a propagation that mixes all pixels."""
    gen = torch.Generator().manual_seed(0)
    n = 5 if background else 4
    cross = [torch.rand(1, 4, n, generator=gen) for _ in range(2)]
    affinity = torch.tensor([[0.7, 0.3, 0, 0], [0.3, 0.4, 0.3, 0], [0, 0.2, 0.2, 0.6], [0.5, 0, 0, 0.5]])[
        None
    ]
    captured = CapturedAttention(
        cross, "mean", [(2, 2), (2, 2)], None, affinity, (2, 2), ["layer0", "layer1"]
    )
    layout = TokenLayout([[[1]], [[2]]], [[[3]]] if background else [], [1, 2, 3][: n - 2], [0, n - 1])
    return captured, layout


def test_background_map_is_propagated_with_the_classes_under_the_reference_presets() -> None:
    captured, layout = _capture(background=True)
    vanilla = method_config("vanilla", blur=False)
    reference = method_config("vanilla-reference", blur=False)
    plain, faithful = run_method(captured, layout, vanilla), run_method(captured, layout, reference)
    assert torch.allclose(plain.class_maps, faithful.class_maps, atol=1e-6)
    # vanilla: the background word's rescaled map as it is; reference: propagated, then min-maxed.
    steps = run_method(captured, layout, reference, keep_steps=True).steps
    assert torch.allclose(plain.background_maps, steps["merged"][:, 2:], atol=1e-6)
    assert not torch.allclose(faithful.background_maps, plain.background_maps, atol=1e-3)
    assert faithful.background_maps.amin().item() == pytest.approx(0.0, abs=1e-6)
    assert faithful.background_maps.amax().item() == pytest.approx(1.0, abs=1e-6)
    captured, layout = _capture(background=False)
    assert run_method(captured, layout, reference).background_maps.shape[1] == 0  # no word, no channel


def test_reference_presets_differ_from_the_defaults_only_where_the_reference_does() -> None:
    goca, reference = METHOD_PRESETS["goca"].to_dict(), METHOD_PRESETS["goca-reference"].to_dict()
    changed = {key for key in goca if goca[key] != reference[key]}
    assert changed == {
        "reference_channel0",
        "renormalize_resized_rows",
        "propagate_background",
        "name_pooling",
        "stop_words",
        "label_rule",
    }
