"""End to end through the API and the CLI on tiny random models; bad models and outputs."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from attnseg.cli import main
from attnseg.errors import BadCheckpointError, BadClassesError, BadConfigError
from attnseg.segmentor import Segmentor


@pytest.fixture(scope="module")
def sd_segmentor(tiny_sd):
    return Segmentor.from_pretrained(tiny_sd, device="cpu")


def test_api_segment_sd(sd_segmentor, random_image, tmp_path):
    result = sd_segmentor.segment(random_image, ["cat", "grass|lawn", "wall"], seed=3)
    assert result.scores.shape == (3, 40, 52) and result.labels.shape == (40, 52)
    assert result.scores.min() >= 0 and result.scores.max() <= 1
    assert int(result.labels.max()) <= 3
    assert result.labels.dtype == torch.int64
    weights = result.meta["diagnostics"][0]["layer_weights"]
    assert len(weights) == 7 and abs(sum(weights) - 1) < 1e-5
    assert result.meta["seed"] == 3 and result.meta["model"]["family"] == "sd"
    folder = result.save(tmp_path / "img")
    assert sorted(p.name for p in folder.iterdir()) == [
        ".attnseg-output.json",  # the manifest: what attnseg wrote, so a rerun may replace it
        "labels.png",
        "overlay.png",
        "result.json",
        "scores.npz",
    ]
    saved = json.loads((folder / "result.json").read_text())
    assert saved["classes"] == ["cat", "grass", "wall"] and saved["prompts"][0]["token_spans"]["lawn"]
    labels = Image.open(folder / "labels.png")
    assert labels.mode == "P" and np.array_equal(np.asarray(labels), result.labels.numpy())


def test_same_seed_same_result_and_batching_does_not_change_it(tiny_sd, random_image):
    # A random model's maps are nearly flat, so min-max stretches batched-BLAS float noise to ~1e-3.
    one = Segmentor.from_pretrained(tiny_sd, method="vanilla", device="cpu")
    two = Segmentor.from_pretrained(tiny_sd, method="vanilla", device="cpu", batch_size=2)
    other = Image.fromarray(np.asarray(random_image)[::-1].copy())
    a = one.segment([random_image, other], ["cat", "wall"], seed=5)
    b = two.segment([random_image, other], ["cat", "wall"], seed=5)
    for x, y in zip(a, b):
        assert torch.allclose(x.scores, y.scores, atol=2e-2)
        assert (x.labels == y.labels).float().mean() > 0.95
    c = one.segment(random_image, ["cat", "wall"], seed=6)
    assert not torch.allclose(a[0].scores, c.scores, atol=5e-2)


def test_methods_differ_and_each_runs(tiny_sd, random_image):
    outputs = {}
    for method in ("goca", "vanilla", "diffsegmenter", "iseg"):
        seg = Segmentor.from_pretrained(tiny_sd, method=method, device="cpu")
        outputs[method] = seg.segment(random_image, ["cat", "wall"]).scores
        assert outputs[method].shape == (2, 40, 52)
    assert not torch.allclose(outputs["goca"], outputs["vanilla"])
    with pytest.raises(BadConfigError, match="unknown method"):
        Segmentor.from_pretrained(tiny_sd, method="magic")
    with pytest.raises(BadConfigError, match="unknown method setting"):
        Segmentor.from_pretrained(tiny_sd, heads="goca")


def test_with_config_shares_the_model_and_equals_a_fresh_load(
    sd_segmentor, tiny_sd, random_image, monkeypatch
):
    fresh = Segmentor.from_pretrained(tiny_sd, method="diffsegmenter", device="cpu", tau=0.3)

    def refuse(backbone):
        raise AssertionError("with_config re-hashed the weights")

    monkeypatch.setattr("attnseg.segmentor._fingerprint", refuse)
    seg = sd_segmentor.with_config("diffsegmenter", tau=0.3)
    assert seg.backbone is sd_segmentor.backbone and seg.model_hash == fresh.model_hash
    assert seg.method == "diffsegmenter" and seg.config == fresh.config
    assert (
        seg.config.refine_steps == 1 < sd_segmentor.config.refine_steps
    )  # the family tunes goca's steps only
    a = seg.segment(random_image, ["cat", "wall"])
    b = fresh.segment(random_image, ["cat", "wall"])
    assert torch.equal(a.scores, b.scores) and torch.equal(a.labels, b.labels)
    assert a.meta["method"] == "diffsegmenter" and a.tau == 0.3
    other_tau = seg.with_config(tau=0.6)
    assert other_tau.method == "diffsegmenter" and other_tau.config == dataclasses.replace(
        seg.config, tau=0.6
    )
    assert sd_segmentor.method == "goca" and sd_segmentor.config.tau == 0.5  # the original is untouched
    with pytest.raises(BadConfigError, match="unknown method setting"):
        sd_segmentor.with_config(heads="goca")


def test_sdxl_end_to_end(tiny_sdxl, random_image):
    seg = Segmentor.from_pretrained(tiny_sdxl, device="cpu")
    result = seg.segment(random_image, ["cat", "grass"])
    assert result.meta["model"]["family"] == "sdxl" and result.scores.shape == (2, 40, 52)
    assert len(result.meta["layers"]) == 7


def test_many_classes_are_split_and_recorded(tiny_sd, random_image):
    seg = Segmentor.from_pretrained(tiny_sd, device="cpu")
    seg.builder.max_tokens = 24
    names = ["cat", "grass", "wall", "sky", "tree", "road", "house", "bird"]
    result = seg.segment(random_image, names)
    assert result.meta["split_into_prompts"] and result.scores.shape[0] == len(names)


def test_cli_segment_writes_outputs(tiny_sd, random_image, tmp_path):
    a = tmp_path / "a.png"
    random_image.save(a)
    rc = main(
        [
            "segment",
            str(a),
            "--classes",
            "cat,wall",
            "--model",
            str(tiny_sd),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
            "--seed",
            "7",
        ]
    )
    assert rc == 0
    meta = json.loads((tmp_path / "out" / "a" / "result.json").read_text())
    assert meta["seed"] == 7 and meta["image"] == str(a)


def test_cli_bad_inputs_exit_nonzero_without_output(tiny_sd, tmp_path, capsys, random_image):
    good = tmp_path / "good.png"
    random_image.save(good)
    out = tmp_path / "out"
    cases = [
        ([str(tmp_path / "missing.png"), "--classes", "cat"], "does not exist"),
        ([str(good), "--classes", " , "], "empty"),
        ([str(good), "--classes", "cat,cat"], "twice"),
        ([str(good), "--classes", "the", "--model", str(tiny_sd)], "no content word"),
        ([str(good), "--classes", "cat", "--model", str(tmp_path / "nowhere")], "not found"),
        ([str(good), "--classes", "cat", "--model", str(tiny_sd), "--tau", "3"], "tau"),
    ]
    for args, needle in cases:
        rc = main(["segment", *args, "--out", str(out), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and "Traceback" not in err, (args, err)
        assert not out.exists()


def test_bad_model_folders(tiny_sd, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_sd, partial)
    shutil.rmtree(partial / "unet")
    with pytest.raises(BadCheckpointError, match="partial"):
        Segmentor.from_pretrained(partial)
    unknown = tmp_path / "unknown"
    shutil.copytree(tiny_sd, unknown)
    index = json.loads((unknown / "model_index.json").read_text())
    index["_class_name"] = "MysteryPipeline"
    (unknown / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(BadCheckpointError, match="does not know"):
        Segmentor.from_pretrained(unknown)
    no_index = tmp_path / "empty"
    no_index.mkdir()
    with pytest.raises(BadCheckpointError, match="model_index.json is missing"):
        Segmentor.from_pretrained(no_index)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_sd, corrupt)
    weights = next((corrupt / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(BadCheckpointError, match="not a readable safetensors"):
        Segmentor.from_pretrained(corrupt)


def test_pickled_checkpoints_need_the_flag(tiny_sd, tmp_path):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    with pytest.raises(BadCheckpointError, match="--allow-pickle"):
        Segmentor.from_pretrained(ckpt)
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_sd, pickled)
    for f in (pickled / "unet").glob("*.safetensors"):
        f.unlink()
    torch.save({}, pickled / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(BadCheckpointError, match="--allow-pickle"):
        Segmentor.from_pretrained(pickled)


def test_hub_id_not_in_cache_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BadCheckpointError, match="never downloads"):
        Segmentor.from_pretrained("nobody/not-a-model")


def test_model_defaults_from_attnseg_json(tiny_sd, tmp_path, random_image):
    folder = tmp_path / "with_defaults"
    shutil.copytree(tiny_sd, folder)
    (folder / "attnseg.json").write_text(
        json.dumps({"preset": {"timestep": 250}, "method": {"tau": 0.3}, "template": "{} here."})
    )
    seg = Segmentor.from_pretrained(folder)
    assert seg.backbone.preset.timestep == 250 and seg.config.tau == 0.3 and seg.template == "{} here."
    assert Segmentor.from_pretrained(folder, tau=0.7).config.tau == 0.7  # the caller wins
    result = seg.segment(random_image, ["cat"])
    assert result.meta["timestep"] == 250 and result.meta["prompts"][0]["text"] == "cat here."
    (folder / "attnseg.json").write_text("{broken")
    with pytest.raises(BadCheckpointError, match="attnseg.json"):
        Segmentor.from_pretrained(folder)


def test_sd2_v_prediction_linear_projection(tmp_path, random_image):
    from attnseg.testing import build_tiny_sd

    folder = build_tiny_sd(tmp_path / "sd2", sd2=True)
    seg = Segmentor.from_pretrained(folder)
    result = seg.segment(random_image, ["cat", "wall"])
    assert result.meta["model"]["family"] == "sd" and len(result.meta["layers"]) == 7
    assert seg.backbone.components["scheduler"].config.prediction_type == "v_prediction"


def test_hub_id_loads_from_the_local_cache_without_network(tiny_sd, tmp_path, monkeypatch, random_image):
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny-sd" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_sd, snapshot)
    (cache / "models--someone--tiny-sd" / "refs").mkdir()
    (cache / "models--someone--tiny-sd" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(
        "huggingface_hub._snapshot_download.constants.HF_HUB_CACHE", str(cache), raising=False
    )
    seg = Segmentor.from_pretrained("someone/tiny-sd")
    assert seg.backbone.model_id == "someone/tiny-sd"
    assert seg.segment(random_image, ["cat"]).meta["model"]["model_id"] == "someone/tiny-sd"


def test_reference_preset_labels_background_words_by_the_offset_rule(tiny_sd, random_image):
    from attnseg.method.labels import assign_labels

    seg = Segmentor.from_pretrained(
        tiny_sd, method="goca-reference", device="cpu", background=["background"], tau=-0.2
    )
    result = seg.segment(random_image, ["cat", "grass"])
    settings = result.meta["settings"]
    assert settings["label_rule"] == "offset" and settings["propagate_background"]
    assert settings["stop_words"] == "reference" and settings["reference_channel0"]
    assert result.meta["prompts"][0]["text"] == "a photo of cat, grass and background."
    assert result.tau == -0.2
    # Labels are argmax over [B − 0.2, cat, grass]: without the background word's map B a τ of −0.2 labels no
    # pixel background (class maps are >= 0); with it, the pixels where B leads by 0.2 are background.
    assert (assign_labels(result.scores, -0.2, rule="offset") > 0).all()
    assert (result.labels == 0).any() and (result.labels > 0).any()


def test_segment_prompt_reads_classes_and_background_words_inside_a_caption(tiny_sd, random_image):
    seg = Segmentor.from_pretrained(tiny_sd, method="goca-reference", device="cpu")
    result = seg.segment_prompt(
        random_image, "a cat on the grass, background.", ["cat", "grass"], ["background"]
    )
    assert result.meta["prompts"][0]["text"] == "a cat on the grass, background."
    assert result.scores.shape == (2, random_image.height, random_image.width)
    assert result.background is not None and result.background.shape == result.scores.shape[1:]
    spans = result.meta["prompts"][0]["token_spans"]
    assert set(spans) == {"cat", "grass", "background"}
    assert seg.segment_prompt(random_image, "a cat on the grass.", ["cat", "grass"]).background is None
    with pytest.raises(BadClassesError, match="does not occur in the prompt"):
        seg.segment_prompt(random_image, "a cat.", ["dog"])
