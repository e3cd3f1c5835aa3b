"""The published GoCA reference code's numbers, step by step, through attnseg's streaming path.

The fixture (tests/fixtures/goca-reference/, README there) holds q/k/v of a small SD1.5-shaped forward and what
the reference code computes from them. Here those inputs run through `attend` and the `StreamingReducer` (as a
backbone's processors call them), then `run_method` and the label step, under the `-reference` presets.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import attnseg.method.streaming as streaming
from attnseg.backbones import UNetBackbone
from attnseg.backbones.base import select_layers
from attnseg.method.config import method_config
from attnseg.method.labels import assign_labels, upsample
from attnseg.method.pipeline import TokenLayout, run_method
from attnseg.method.streaming import AttentionPlan, CapturePlan, StreamingReducer, attend

FIXTURE = Path(__file__).parents[1] / "fixtures" / "goca-reference" / "golden.safetensors"
TOL = 1e-4
# The fixture's 16 layers under the SD1.5 module paths they stand for (its README's table), UNet order.
LAYERS = [
    f"{prefix}.attentions.{i}.transformer_blocks.0"
    for prefix, n in (
        ("down_blocks.0", 2),
        ("down_blocks.1", 2),
        ("down_blocks.2", 2),
        ("mid_block", 1),
        ("up_blocks.1", 3),
        ("up_blocks.2", 3),
        ("up_blocks.3", 3),
    )
    for i in range(n)
]
CASES = [(s, p, m) for s in range(3) for p in ("nobg", "bg") for m in ("goca", "vanilla")]


@cache
def _fixture() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(FIXTURE), "pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}, f.metadata()


def _layout(data: dict[str, torch.Tensor], prefix: str, keep: int) -> TokenLayout:
    """The fixture's token lists as attnseg's columns: kept prompt tokens, then the rest column `keep`."""
    tokens = lambda name: data[f"{prefix}/tokens/{name}"].tolist()  # noqa: E731
    background = [[tokens("background0")]] if f"{prefix}/tokens/background0" in data else []
    special = tokens("start") + tokens("end") + [keep]
    return TokenLayout([[tokens("class0")], [tokens("class1")]], background, tokens("content"), special)


def _run_case(seed: int, prompt: str, method: str, monkeypatch) -> dict[str, torch.Tensor]:
    """Feed one case through attend → reducer → run_method; every step attnseg computes, by the fixture's names."""
    data, _ = _fixture()
    config = method_config(f"{method}-reference")
    preset = UNetBackbone.default_preset  # SD1.5's reference layer and propagation layers, as data
    propagation = select_layers(preset.propagation_layers, LAYERS, "propagation_layers")
    reference = select_layers((preset.reference_layer,), LAYERS, "reference_layer")
    assert [LAYERS.index(n) for n in sorted(propagation, key=LAYERS.index)] == data[
        "meta/propagation_layers"
    ].tolist()
    assert [LAYERS.index(n) for n in reference] == data["meta/reference_layer"].tolist()
    keep = int(data[f"seed{seed}/{prompt}/tokens/num_prompt_tokens"])
    plan = CapturePlan({}, (16, 16), (8, 8) if config.scores_layers else None, set(propagation))
    reducer = StreamingReducer(plan, (16, 16), keep, config)

    head_weights_seen: list[torch.Tensor] = []
    real_head_weights = streaming.head_weights

    def recording(*args, **kwargs):
        out = real_head_weights(*args, **kwargs)
        head_weights_seen.append(out)
        return out

    monkeypatch.setattr(streaming, "head_weights", recording)
    f32 = lambda key: data[key].float()  # noqa: E731  (inputs are float16; the cast is exact)
    for index, layer in enumerate(LAYERS):
        base, text = f"seed{seed}/layer{index:02d}", f"seed{seed}/{prompt}/layer{index:02d}"
        q, k, v = f32(f"{base}/self_q"), f32(f"{base}/self_k"), f32(f"{base}/self_v")
        self_plan = AttentionPlan(layer, read_self=True, image_keys=slice(None))
        if layer in propagation or config.scores_layers:
            attend(q, k, v, scale=0.5, mask=None, plan=self_plan, reducer=reducer)
        cross_plan = AttentionPlan(
            layer, read_cross=True, text_keys=slice(None), reference_query=layer in reference
        )
        q, k, v = f32(f"{base}/cross_q"), f32(f"{text}/cross_k"), f32(f"{text}/cross_v")
        attend(
            q,
            k,
            v,
            scale=0.5,
            mask=None,
            plan=cross_plan,
            reducer=reducer,
            out_proj_weight=f32(f"{base}/out_proj_weight"),
        )
    captured = reducer.finish()
    out = run_method(captured, _layout(data, f"seed{seed}/{prompt}", keep), config, keep_steps=True)
    steps = {name: value[0] for name, value in out.steps.items()}
    steps["layer_weights"] = out.layer_weights[0]
    steps["propagation_affinity"] = captured.affinity[0]
    if config.scores_layers:
        steps["layer_scores"] = captured.layer_scores[0]
        steps["reference_affinity"] = reducer.reference[0]
        for index, weights in enumerate(head_weights_seen):
            steps[f"layer{index:02d}/head_weights"] = weights[0]
    for index, maps in enumerate(captured.cross):
        steps[f"layer{index:02d}/head_maps"] = maps[0]
    steps["labels"] = (out.class_maps, out.background_maps, config)
    return steps


def _with_rest(full: torch.Tensor, keep: int) -> torch.Tensor:
    """A reference tensor over all 12 tokens (last axis or first), as attnseg keeps it: `keep` columns + rest."""
    return torch.cat([full[..., :keep], full[..., keep:].sum(-1, keepdim=True)], -1)


@pytest.mark.parametrize(("seed", "prompt", "method"), CASES, ids=lambda x: str(x))
def test_every_step_matches_the_reference(seed: int, prompt: str, method: str, monkeypatch) -> None:
    data, _ = _fixture()
    case = f"seed{seed}/{prompt}/{method}"
    keep = int(data[f"seed{seed}/{prompt}/tokens/num_prompt_tokens"])
    ours = _run_case(seed, prompt, method, monkeypatch)

    expected = {name: data[f"{case}/{name}"] for name in ("layer_weights", "entity_maps", "content_sum")}
    expected["token_maps"] = _with_rest(data[f"{case}/token_maps"].permute(1, 2, 0), keep).permute(2, 0, 1)
    for name in ("rescaled", "merged", "final_maps", "blurred") + (("divided",) if method == "goca" else ()):
        expected[name] = data[f"{case}/{name}"]
    expected["propagation_affinity"] = data[f"seed{seed}/propagation_affinity"]
    if method == "goca":
        expected["layer_scores"] = data[f"seed{seed}/layer_scores"]
        expected["reference_affinity"] = data[f"seed{seed}/reference_affinity"]
    for index in range(16):
        expected[f"layer{index:02d}/head_maps"] = _with_rest(
            data[f"{case}/layer{index:02d}/head_maps"][0], keep
        )
        if method == "goca":
            expected[f"layer{index:02d}/head_weights"] = data[f"{case}/layer{index:02d}/head_weights"][0]
    if prompt == "nobg":  # the fixture carries an all-zero background channel; attnseg carries none
        expected["merged"] = expected["merged"][:2]
        expected["final_maps"] = expected["final_maps"][:2]
        assert not data[f"{case}/merged"][2].any() and not data[f"{case}/final_maps"][2].any()
    if ours["content_sum"].dim() == 3:
        ours["content_sum"] = ours["content_sum"][0]

    worst = {}
    for name, reference in expected.items():
        mine = ours[name].float()
        assert mine.shape == reference.shape, (
            f"{case} {name}: shape {tuple(mine.shape)} vs {tuple(reference.shape)}"
        )
        worst[name] = (mine - reference.float()).abs().max().item()
    bad = {name: gap for name, gap in worst.items() if gap > TOL}
    assert not bad, f"{case}: steps off by more than {TOL}: {bad}"

    # Labels: upsample to 64×64, background = τ + B ('offset') or max(τ, B) ('max'), argmax, background first.
    class_maps, background_maps, config = ours["labels"]
    size = tuple(data["meta/label_size"].tolist())
    classes_khw = upsample(class_maps, size)[0]
    background_khw = upsample(background_maps, size)[0] if background_maps.shape[1] else None
    for rule in ("offset", "max"):
        taus = data[f"meta/taus_{rule}"].tolist()
        stored = data[f"{case}/labels_{rule}"].long()
        ties = {tuple(row) for row in data[f"{case}/near_ties_{rule}"].tolist()}
        for i, tau in enumerate(taus):
            labels = assign_labels(classes_khw, tau, background_khw, rule=rule)
            differ = {(i, int(y), int(x)) for y, x in (labels != stored[i]).nonzero().tolist()}
            assert differ <= ties, (
                f"{case} {rule} τ={tau}: labels differ off the near-ties at {sorted(differ - ties)}"
            )


def test_fixture_is_the_documented_one() -> None:
    _, meta = _fixture()
    assert json.loads(meta["tokens_bg"])[6] == "background"
    assert len(json.loads(meta["layer_names"])) == len(LAYERS) == 16
