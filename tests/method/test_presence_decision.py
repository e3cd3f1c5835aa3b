"""The presence step on plain tensors: scores, decision, cross-prompt scale, the forward budget."""

from __future__ import annotations

import pytest
import torch

from attnseg.errors import BadConfigError
from attnseg.method.pipeline import TokenLayout
from attnseg.method.presence import (
    PresenceConfig,
    decide,
    label_present,
    leave_one_out_rises,
    leave_one_out_scores,
    naming_gain,
    outexplained,
    presence_config,
    presence_weights,
    restrict_layout,
    weighted_labels,
)


def _hand_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 4×4 error grid, 2 levels, 3 classes: 0 is present (leaving it out raises the error under its map),
    1 is absent (leaving it out changes nothing), 2 is absent but its left-out error rises elsewhere."""
    full = torch.ones(2, 4, 4)
    left = full.repeat(3, 1, 1, 1).clone()  # K×T×h×w
    left[0, :, :2, :2] = 1.8  # class 0's own quarter: +80% where its map is
    left[2, :, 2:, 2:] = 1.8  # a rise, but far from class 2's map
    maps = torch.zeros(3, 8, 8)  # any size: resized to the error grid by area
    maps[0, :4, :4] = 1.0
    maps[1, :, :] = 0.5
    maps[2, :4, :4] = 1.0
    return full, left, maps


def test_scores_are_the_error_rise_under_each_class_map():
    full, left, maps = _hand_case()
    scores = leave_one_out_scores(full, left, maps)
    # Mean error of the full prompt is 1, so the rise is relative to 1: 0.8 under class 0's map, 0 elsewhere.
    assert scores.tolist() == pytest.approx([0.8, 0.0, 0.0], abs=1e-6)
    assert decide(scores, 0.02).tolist() == [True, False, False]


def test_sharpness_weighs_where_the_map_is_surest():
    """A thin thing: its map is 1 on one cell and 0.5 on the rest of its quarter, and only that cell's error
    rises. Sharpness 1 averages the rise over the whole faint quarter; a higher power looks at the peak."""
    full = torch.ones(1, 4, 4)
    left = full.clone()[None]
    left[0, 0, 0, 0] = 1.8  # leaving the name out hurts on the thing's one cell
    maps = torch.zeros(1, 4, 4)
    maps[0, :2, :2] = 0.5
    maps[0, 0, 0] = 1.0
    rise = [float(leave_one_out_scores(full, left, maps, sharpness=p)) for p in (1.0, 2.0, 4.0)]
    # Weights ∝ map^p over the quarter: the one cell's share is 1/(1 + 3·0.5^p) of the 0.8 / mean-error rise.
    mean_error = float(full.mean())
    expected = [0.8 / (1 + 3 * 0.5**p) / mean_error for p in (1.0, 2.0, 4.0)]
    assert rise == pytest.approx(expected, rel=1e-5)
    assert rise[0] < rise[1] < rise[2]
    with pytest.raises(BadConfigError, match="sharpness"):
        PresenceConfig(sharpness=0)


def test_the_best_class_is_kept_even_below_the_threshold():
    assert decide(torch.tensor([-0.3, -0.1, -0.2]), 0.02).tolist() == [False, True, False]


def test_scores_compare_across_prompts_of_different_error_levels():
    """Two prompts of one image (a long vocabulary): one's errors are 3× the other's, the rises alike in
    proportion; each class must score the same in either prompt, or one prompt's classes would always win."""
    full, left, maps = _hand_case()
    in_a = leave_one_out_scores(full, left, maps)
    in_b = leave_one_out_scores(3 * full, 3 * left, maps)
    assert torch.allclose(in_a, in_b, atol=1e-6)
    # A prompt that is harder to denoise everywhere does not make its classes look present.
    shifted = leave_one_out_scores(full + 0.5, left + 0.5, maps)
    assert decide(shifted, 0.02).tolist() == [True, False, False]


def test_weighted_labels_let_a_faint_class_win_only_where_its_map_clearly_leads():
    """Three classes on a 1×4 strip. Scores 0.04 (best), 0.01, -0.02: weights 1, 0.25^p, 0 (p the power)."""
    scores = torch.tensor([0.04, 0.01, -0.02])
    weights = presence_weights(scores, 0.5)
    assert weights.tolist() == pytest.approx([1.0, 0.5, 0.0])
    maps = torch.tensor(
        [
            [[1.0, 0.6, 0.1, 0.2]],  # the best class
            [[0.0, 1.0, 1.0, 0.1]],  # faint: wins pixel 2 (0.5 > 0.1), loses pixel 1 (0.5 < 0.6)
            [[0.0, 0.0, 0.0, 1.0]],  # score below 0: never wins, even at its own peak
        ]
    )
    background = torch.tensor([[False, False, False, True]])
    labels, took = weighted_labels(maps, weights, background)
    assert labels.tolist() == [[1, 1, 2, 0]] and took.tolist() == [True, True, False]
    # A higher power is a harder cut: the faint class's weight 0.25 no longer wins pixel 2.
    labels, took = weighted_labels(maps, presence_weights(scores, 2.0), background)
    assert labels.tolist() == [[1, 1, 1, 0]] and took.tolist() == [True, False, False]
    # Scale-free: the same rises on a 10x scale give the same weights; every score <= 0 keeps only the best.
    assert torch.allclose(presence_weights(10 * scores, 0.5), weights)
    assert presence_weights(torch.tensor([-0.3, -0.1, -0.2]), 0.5).tolist() == [0.0, 1.0, 0.0]
    # label_present applies either rule: weighted as above (maps weighted, absent zeroed) ...
    weighted = label_present(maps, background, scores, PresenceConfig(weight_power=0.5), tau=0.0)
    assert weighted.labels.tolist() == [[1, 1, 2, 0]] and weighted.present.tolist() == [True, True, False]
    assert torch.allclose(weighted.maps, maps * torch.tensor([1.0, 0.5, 0.0]).view(3, 1, 1))
    # ... or the threshold: 0.02 keeps the best class only, which then takes every non-background pixel.
    cut = label_present(maps, background, scores, PresenceConfig(labels="threshold", threshold=0.02), tau=0.0)
    assert cut.labels.tolist() == [[1, 1, 1, 0]] and cut.present.tolist() == [True, False, False]
    assert cut.weights is None and cut.maps[1:].abs().sum() == 0


def test_a_found_class_under_the_smallest_share_gives_its_pixels_to_the_next_best():
    """Three classes on a 1×10 strip: class 2 takes one pixel (10%) under the weighted labels, class 1 two."""
    maps = torch.tensor(
        [
            [[1.0] * 7 + [0.5, 0.5, 0.5]],
            [[0.0] * 7 + [0.9, 0.9, 0.0]],
            [[0.0] * 9 + [0.9]],
        ]
    )
    scores = torch.tensor([0.04, 0.04, 0.04])  # all weight 1: the maps alone decide
    background = torch.zeros(1, 10, dtype=torch.bool)
    config = PresenceConfig(weight_power=1.0)
    assert label_present(maps, background, scores, config, 0.0).labels.tolist() == [[1] * 7 + [2, 2, 3]]
    # 15%: class 2 (10%) is dropped and its pixel goes to class 0 (0.5 there); class 1 (20%) stays.
    kept = label_present(maps, background, scores, PresenceConfig(weight_power=1.0, min_share=0.15), 0.0)
    assert kept.labels.tolist() == [[1] * 7 + [2, 2, 1]] and kept.present.tolist() == [True, True, False]
    assert kept.maps[2].abs().sum() == 0 and kept.weights.tolist() == [1.0, 1.0, 1.0]  # the test's weights
    # 25%: smallest first: class 2, then class 1 (now 20%); class 0 takes everything.
    alone = label_present(maps, background, scores, PresenceConfig(weight_power=1.0, min_share=0.25), 0.0)
    assert alone.labels.tolist() == [[1] * 10] and alone.present.tolist() == [True, False, False]
    # The same under the threshold rule; and the last class left is never dropped, however small.
    cut = PresenceConfig(labels="threshold", threshold=0.0, min_share=0.25)
    assert label_present(maps, background, scores, cut, 0.0).present.tolist() == [True, False, False]
    lone = PresenceConfig(weight_power=1.0, min_share=0.5)
    small = label_present(maps, torch.arange(10).view(1, 10) < 8, scores, lone, 0.0)  # 2 labelled pixels
    assert small.present.sum() == 1 and (small.labels > 0).sum() == 2
    with pytest.raises(BadConfigError, match="min_share"):
        PresenceConfig(min_share=1.0)


def test_levels_are_capped_by_the_row_budget():
    config = PresenceConfig(timesteps=(100, 300, 500, 700, 900), max_rows=80)
    assert config.levels_for(14) == (100, 300, 500, 700, 900)  # 13 classes, one prompt: 70 rows
    assert config.levels_for(26) == (100, 500, 900)  # spread over the range, not the first ones
    assert config.levels_for(500) == (100,)  # at least one level, whatever the vocabulary


def test_presence_settings_parse_and_refuse_bad_values():
    assert presence_config("off").enabled is False
    assert presence_config(True).enabled and presence_config("on").mode == "denoise"
    assert presence_config("on", threshold=0.5).threshold == 0.5
    with pytest.raises(BadConfigError, match="presence"):
        presence_config("maybe")
    with pytest.raises(BadConfigError, match="unknown presence setting"):
        presence_config("on", thresold=0.5)
    # Settings from a model's attnseg.json arrive as JSON values: checked by type, lists made tuples.
    assert presence_config("on", timesteps=[100, 300]).timesteps == (100, 300)
    for bad in ({"threshold": "0.01"}, {"max_rows": 1.5}, {"second_pass": "yes"}, {"timesteps": [1.5]}):
        with pytest.raises(BadConfigError, match=f"presence {next(iter(bad))}"):
            presence_config("on", **bad)


def test_restricted_layout_rescales_over_the_kept_classes_only():
    layout = TokenLayout([[[1]], [[2, 3]], [[4]]], [[[6]]], [1, 2, 3, 4, 6], [0, 7])
    kept = restrict_layout(layout, [0, 2])
    assert kept.class_tokens == [[[1]], [[4]]] and kept.content_tokens == [1, 4, 6]
    assert kept.special_tokens == [0, 7]


def test_naming_gain_measures_both_directions_on_one_scale():
    """Second round: a class in the kept set is scored by leaving it out, one outside by adding it; both are
    'error without the name minus error with it', relative to the kept set's own error."""
    base = torch.full((1, 2, 2), 2.0)  # the kept set's prompt: error 2 everywhere
    without = torch.stack([torch.full((1, 2, 2), 2.2), base])  # class 0 in S: left out, the error rises
    with_k = torch.stack([base, torch.full((1, 2, 2), 1.8)])  # class 1 outside S: added, the error falls
    scores = naming_gain(without, with_k, torch.ones(2, 2, 2), base)
    assert scores.tolist() == pytest.approx([0.1, 0.1], abs=1e-6)


def test_a_found_class_its_runner_up_explains_better_is_dropped():
    """1×10 strip: class 2 wins pixel 9 by its map, but leaving class 1 out raises the error there more."""
    maps = torch.tensor(
        [
            [[1.0] * 7 + [0.5, 0.5, 0.5]],
            [[0.1] * 7 + [0.9, 0.9, 0.9]],
            [[0.0] * 9 + [1.0]],
        ]
    )
    # The test's rise maps on a coarser 1×5 grid: pixel x reads cell x // 2.
    rises = torch.tensor(
        [
            [[0.04, 0.04, 0.04, 0.02, 0.0]],
            [[0.0, 0.0, 0.0, 0.03, 0.05]],
            [[0.0, 0.0, 0.0, 0.0, 0.01]],
        ]
    )
    scores = torch.tensor([0.04, 0.04, 0.04])  # all weight 1: the maps alone decide the labels
    background = torch.zeros(1, 10, dtype=torch.bool)
    without = PresenceConfig(weight_power=1.0, min_share=0.0, region_test=False)
    assert label_present(maps, background, scores, without, 0.0, rises).labels.tolist() == [
        [1] * 7 + [2, 2, 3]
    ]
    labels = torch.tensor([[1] * 7 + [2, 2, 3]])
    # Class 2 at pixel 9: 0.01 - 0.05 (class 1 is its runner-up there) < 0. Class 0 fails at pixel 6
    # (0.02 - 0.03) but passes on the mean of its pixels; class 1 passes everywhere.
    assert outexplained(maps, torch.ones(3), labels, rises) == 2
    assert outexplained(maps, torch.ones(3), torch.tensor([[1] * 7 + [2, 2, 2]]), rises) is None
    config = PresenceConfig(weight_power=1.0, min_share=0.0)
    assert config.region_test  # on by default
    found = label_present(maps, background, scores, config, 0.0, rises)
    assert found.labels.tolist() == [[1] * 7 + [2, 2, 2]] and found.present.tolist() == [True, True, False]
    assert label_present(maps, background, scores, config, 0.0).present.all()  # no rise maps: no test
    cut = PresenceConfig(labels="threshold", threshold=0.0, min_share=0.0)
    assert label_present(maps, background, scores, cut, 0.0, rises).present.tolist() == [True, True, False]
    # A lone class is never dropped, and the worst of two failing classes goes first.
    assert outexplained(maps, torch.ones(3), torch.ones(1, 10, dtype=torch.long), rises) is None
    worse = rises.clone()
    worse[1, 0, 3:] = 0.0  # class 1 now explains nothing: -0.02 at pixel 7, 0.0 at 8
    worse[2, 0, 4] = 0.0  # class 2 at pixel 9: 0.0 - 0.0 = 0, passes
    assert outexplained(maps, torch.ones(3), labels, worse) == 1
    assert leave_one_out_rises(torch.ones(2, 1, 2), torch.full((1, 2, 1, 2), 1.5)).tolist() == [[[0.5, 0.5]]]
