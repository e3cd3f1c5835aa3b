"""The presence step through Segmentor, the CLI and trace, on a tiny random model (paths and records)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import attnseg
from attnseg import Segmentor
from attnseg.cli import main
from attnseg.method.presence import PresenceConfig, outexplained

LEVELS = len(PresenceConfig().timesteps)  # the default test's noise levels


def test_presence_is_on_by_default_and_records_every_named_class(tiny_sd, random_image, tmp_path):
    seg = Segmentor.from_pretrained(tiny_sd, device="cpu")
    names = ["cat", "grass", "wall"]
    result = seg.segment(random_image, names)
    found = result.meta["presence"]
    assert found["mode"] == "denoise" and list(found["classes"]) == names
    present = [found["classes"][n]["present"] for n in names]
    assert any(present) and found["found"] == [n for n, p in zip(names, present) if p]
    # Absent classes get no score and no pixel; present ones keep their maps.
    for k, keep in enumerate(present):
        if not keep:
            assert result.scores[k].abs().sum() == 0 and not (result.labels == k + 1).any()
    # 3 classes in one prompt: 4 rows per level, every default level; then the second pass if a class was dropped.
    assert result.meta["forwards"]["presence_rows"] == 4 * LEVELS
    folder = result.save(tmp_path / "out")
    npz = np.load(folder / "scores.npz")
    assert npz["present"].tolist() == present
    assert np.allclose(npz["presence_scores"], [found["classes"][n]["score"] for n in names], atol=1e-6)
    assert np.allclose(npz["presence_weights"], [found["classes"][n]["weight"] for n in names], atol=1e-6)
    # The test's rise maps (one per class, on the latent's grid) are kept and saved; the classes found pass the
    # region test on them: no found class's runner-up explains its pixels better (found maps = open × weight).
    rises = result.presence_rises
    assert rises.shape == (len(names), 16, 16)  # the tiny model's 16×16 latent (UNet sample_size 16)
    assert np.allclose(npz["presence_rises"], rises.numpy()) and found["region_test"] is True
    kept = torch.tensor(present, dtype=torch.float32)
    assert outexplained(result.scores, kept, result.labels, rises) is None


def test_presence_off_is_the_plain_segmentation(tiny_sd, random_image):
    off = Segmentor.from_pretrained(tiny_sd, device="cpu", presence="off")
    # The threshold rule at -1e9 keeps every class with its open map: with the method's own rescaling in the
    # open pass, the segmentation must not change.
    keep_all = {"presence_labels": "threshold", "presence_threshold": -1e9, "presence_region_test": False}
    on = Segmentor.from_pretrained(tiny_sd, device="cpu", presence_open_rescale="method", **keep_all)
    a, b = off.segment(random_image, ["cat", "grass"]), on.segment(random_image, ["cat", "grass"])
    assert a.meta["presence"] == {"mode": "off"}
    assert torch.equal(a.labels, b.labels) and torch.equal(a.scores, b.scores)
    # By default the open pass rescales by min-max alone: goca's maps with rescale=minmax, recorded as such.
    plain = Segmentor.from_pretrained(tiny_sd, device="cpu", presence="off", rescale="minmax")
    c, d = (
        plain.segment(random_image, ["cat", "grass"]),
        Segmentor.from_pretrained(tiny_sd, device="cpu", **keep_all).segment(random_image, ["cat", "grass"]),
    )
    assert torch.equal(c.labels, d.labels) and torch.equal(c.scores, d.scores)
    assert not torch.equal(c.scores, a.scores)
    assert d.meta["settings"]["rescale"] == "minmax" and d.meta["presence"]["open_rescale"] == "minmax"
    assert a.meta["settings"]["rescale"] == "goca"
    # One class alone has nothing to be tested against: its open pass is the method's own, also in a batch
    # beside an image naming two.
    lone, pair = Segmentor.from_pretrained(tiny_sd, device="cpu").segment_each(
        [random_image, random_image], [["cat"], ["cat", "grass"]]
    )
    assert lone.meta["settings"]["rescale"] == "goca" and pair.meta["settings"]["rescale"] == "minmax"
    assert torch.allclose(lone.scores, off.segment(random_image, ["cat"]).scores, atol=1e-5)


def test_weighted_labels_are_the_open_maps_weighted_by_the_recorded_scores(tiny_sd, random_image):
    """The default rule: each open map times (score / best)^power; a class is found when it takes a pixel."""
    from attnseg.method.presence import presence_weights, weighted_labels

    names = ["cat", "grass", "wall", "sky"]
    every = Segmentor.from_pretrained(
        tiny_sd,
        device="cpu",
        presence_labels="threshold",
        presence_threshold=-1e9,
        presence_region_test=False,
    )
    seg = Segmentor.from_pretrained(
        tiny_sd, device="cpu", presence_weight_power=0.5, presence_region_test=False
    )
    assert seg.presence.labels == "weighted"
    # A threshold given alone means the threshold rule: it is never silently ignored.
    assert (
        Segmentor.from_pretrained(tiny_sd, device="cpu", presence_threshold=0.5).presence.labels
        == "threshold"
    )
    opened, result = every.segment(random_image, names), seg.segment(random_image, names)
    found = result.meta["presence"]
    scores = torch.tensor([found["classes"][n]["score"] for n in names])
    weights = presence_weights(scores, 0.5)
    assert [found["classes"][n]["weight"] for n in names] == pytest.approx(weights.tolist(), abs=1e-6)
    expected, took = weighted_labels(opened.scores, weights, opened.labels == 0)
    assert torch.equal(result.labels, expected)
    assert found["found"] == [n for n, t in zip(names, took) if t]
    for k in range(len(names)):
        if took[k]:  # a found class's map is its open map, weighted
            assert torch.allclose(result.scores[k], opened.scores[k] * weights[k])
        else:  # absent: no score, no pixel
            assert result.scores[k].abs().sum() == 0 and not (result.labels == k + 1).any()


def test_split_prompts_are_tested_each_against_its_own_prompt(tiny_sd, random_image):
    seg = Segmentor.from_pretrained(tiny_sd, device="cpu", presence_max_rows=1000)
    seg.builder.max_tokens = 24
    names = ["cat", "grass", "wall", "sky", "tree", "road", "house", "bird"]
    result = seg.segment(random_image, names)
    prompts = result.meta["open_pass_prompts"]
    assert result.meta["split_into_prompts"] and len(prompts) > 1
    # K classes + one full prompt per prompt, at every level.
    assert result.meta["forwards"]["presence_rows"] == (len(names) + len(prompts)) * LEVELS
    assert set(result.meta["presence"]["classes"]) == set(names)


def test_cli_prints_found_and_absent(tiny_sd, random_image, tmp_path, capsys):
    a = tmp_path / "a.png"
    random_image.save(a)
    rc = main(
        ["segment", str(a), "--classes", "cat,wall", "--model", str(tiny_sd), "--out", str(tmp_path / "o")]
    )
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    meta = json.loads((tmp_path / "o" / "a" / "result.json").read_text())
    assert f"found: {', '.join(meta['presence']['found'])}" in line and "absent:" in line
    rc = main(["segment", str(a), "--classes", "cat,wall", "--model", str(tiny_sd), "--out", str(tmp_path / "p"),
               "--presence", "off"])  # fmt: skip
    assert rc == 0 and "presence off" in capsys.readouterr().out


def test_cli_sets_presence_fields_and_refuses_bad_ones(tiny_sd, random_image, tmp_path, capsys):
    a = tmp_path / "a.png"
    random_image.save(a)
    args = ["segment", str(a), "--classes", "cat,wall", "--model", str(tiny_sd)]
    sets = [
        "--set",
        "presence_timesteps=300,700",
        "--set",
        "presence_sharpness=1",
        "--set",
        "presence_threshold=9",
        "--set",
        "presence_labels=threshold",
    ]
    assert main([*args, "--out", str(tmp_path / "o"), *sets]) == 0
    found = json.loads((tmp_path / "o" / "a" / "result.json").read_text())["presence"]
    assert found["levels"] == [300, 700] and found["sharpness"] == 1.0 and found["threshold"] == 9.0
    assert found["labels"] == "threshold"
    assert len(found["found"]) == 1  # nothing reaches 9: only the best class is kept
    capsys.readouterr()
    for bad, says in [
        ("presence_timesteps=0,5", "must lie in"),
        ("presence_colour=1", "unknown presence setting"),
        ("presence_labels=soft", "presence labels must be one of weighted, threshold"),
        ("presence_weight_power=0", "weight_power must be > 0"),
    ]:
        try:
            rc = main([*args, "--out", str(tmp_path / "bad"), "--set", bad])
        except SystemExit as exc:
            rc = exc.code
        assert rc == 2 and says in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_trace_tests_presence_on_the_generated_image(tiny_sd):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    prompt = "a photo of a cat on grass"
    with attnseg.trace(pipe) as tr:
        image = pipe(
            prompt, num_inference_steps=2, height=32, width=32, generator=torch.Generator().manual_seed(0)
        )
        image = image.images[0]
        seg = tr.segment(prompt, ["cat", "grass"], image=image)  # inside the block: the test is not captured
    assert tr.steps == 2
    found = seg.meta["presence"]
    assert set(found["classes"]) == {"cat", "grass"}
    for k, name in enumerate(["cat", "grass"]):
        if not found["classes"][name]["present"]:
            assert not (seg.labels == k + 1).any()
    assert tr.segment(prompt, ["cat"]).meta["presence"]["skipped"]  # no image: nothing to test on


def test_second_round_tests_against_the_kept_set(tiny_sd, random_image):
    seg = Segmentor.from_pretrained(tiny_sd, device="cpu", presence_rounds=2)
    names = ["cat", "grass", "wall"]
    result = seg.segment(random_image, names)
    found = result.meta["presence"]
    assert found["first_round_found"] is not None and found["found"]
    # First round: 3 classes + the full prompt; second: the kept set's prompt + one per class; every level each.
    assert result.meta["forwards"]["presence_rows"] == (4 + 4) * LEVELS
