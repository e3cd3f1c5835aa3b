"""Fast checks of the synthetic world, the world models' training loop and their export."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from attnseg.world import model as wm
from attnseg.world import render, scaling
from attnseg.world.train import TrainConfig, Trainer, render_in_memory, train_vae


def test_render_is_deterministic_for_a_seed():
    a = [s for _, s in render.render_scenes("val", 4, seed=3)]
    b = [s for _, s in render.render_scenes("val", 4, seed=3)]
    c = [s for _, s in render.render_scenes("val", 4, seed=4)]
    for x, y in zip(a, b):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask) and x.caption == y.caption
    assert any(not np.array_equal(x.image, z.image) for x, z in zip(a, c))
    assert a[0].image.shape == (64, 64, 3) and a[0].mask.shape == (64, 64)


def test_thing_patterns_change_only_thing_pixels_and_tell_classes_apart():
    patterned = [s for _, s in render.render_scenes("val", 12, seed=0)]
    plain = [s for _, s in render.render_scenes("val", 12, seed=0, patterns=False)]
    changed = 0
    for p, q in zip(patterned, plain):
        # Same layout, colours and caption: the patterns draw nothing from the scene's generator.
        assert np.array_equal(p.mask, q.mask) and p.caption == q.caption
        differs = np.abs(p.image.astype(int) - q.image.astype(int)).max(-1) > 0
        is_thing = p.mask > len(render.STUFF)
        # Box-averaged edges (and a crescent's thin tips) blend a thing into stuff pixels next to it; stuff
        # two pixels or more from every thing is kept as it was.
        near_thing = np.zeros_like(is_thing)
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                near_thing |= np.roll(is_thing, (dy, dx), (0, 1))
        assert not (differs & ~near_thing).any()
        changed += (differs & is_thing).sum()
    assert changed > 0
    assert set(render.THING_PATTERNS) == set(render.THINGS)
    u, v = np.meshgrid(np.linspace(-10, 10, 41), np.linspace(-10, 10, 41))
    inks = {k: render.pattern_ink(k, u, v, 10.0) for k in set(render.THING_PATTERNS.values())}
    assert not inks["plain"].any()
    for a in inks:
        for b in inks:
            if a != b:
                assert not np.allclose(inks[a], inks[b]), (a, b)
    with pytest.raises(Exception, match="unknown thing pattern"):
        render.pattern_ink("zigzag", u, v, 10.0)


def test_classes_things_stuff_and_two_word_names():
    names = [c.name for c in render.CLASSES]
    assert len(names) >= 12 and len(set(names)) == len(names)
    assert sum(c.kind == "stuff" for c in render.CLASSES) >= 5
    assert sum(c.kind == "thing" and " " in c.name for c in render.CLASSES) >= 2
    assert [c.id for c in render.CLASSES] == list(range(1, len(names) + 1))


def _mentions(caption: str) -> set[int]:
    """Class ids whose full name occurs as words in a caption."""
    return {c.id for c in render.CLASSES if re.search(rf"\b{c.name}\b", caption)}


def test_captions_agree_with_masks():
    omitted = 0
    for _, s in render.render_scenes("train", 120, seed=0):
        present = set(int(v) for v in np.unique(s.mask)) - {0}
        assert set(s.present) == present
        assert set(s.named) <= present
        assert _mentions(s.caption) == set(s.named), s.caption
        assert 1 <= sum(c > len(render.STUFF) for c in present) <= 4
        omitted += set(s.named) != present
        assert (
            any(
                w in s.caption.split()
                for w in ("a", "an", "the", "one", "some", "of", "and", "on", "next", "with")
            )
            or len(s.named) == 1
        )
    assert 5 <= omitted <= 60  # some captions leave a present class out, most do not


def test_render_split_layout(tmp_path):
    out = render.render_split(tmp_path / "val", "val", n=3, seed=0, progress=False)
    cj = json.loads((out / "classes.json").read_text())
    assert cj["ignore_index"] == 255 and cj["background_id"] is None  # stuff covers every pixel
    assert {"id", "name", "synonyms", "kind"} <= set(cj["classes"][0])
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["000000", "000001", "000002"]
    m = Image.open(out / rows[0]["mask"])
    assert m.mode == "P"
    scene = next(render.render_scenes("val", 1, seed=0))[1]
    assert np.array_equal(np.asarray(m), scene.mask)
    assert np.array_equal(np.asarray(Image.open(out / rows[0]["image"])), scene.image)
    assert sorted(rows[0]["present"]) == scene.present and rows[0]["caption"] == scene.caption
    assert not (tmp_path / "val.partial").exists()


def test_tokenizer_has_clip_like_special_tokens():
    tok = wm.build_tokenizer()
    enc = tok("A red star next to the bow tie", return_offsets_mapping=True)
    assert enc.input_ids[0] == tok.bos_token_id and enc.input_ids[-1] == tok.eos_token_id
    assert tok.pad_token_id == tok.eos_token_id and tok.model_max_length <= 77
    words = [tok.convert_ids_to_tokens(i) for i in enc.input_ids[1:-1]]
    assert words == ["a", "red", "star", "next", "to", "the", "bow", "tie"]
    assert enc.offset_mapping[3] == (6, 10)


@pytest.fixture(scope="module")
def tiny_world():
    return render_in_memory("train", 8, seed=0), render_in_memory("val", 4, seed=0)


def _trainer(tmp, world, steps, size="xs", **settings):
    cfg = TrainConfig(
        size=size,
        steps=steps,
        batch=2,
        out=str(tmp),
        vae_steps=2,
        vae_batch=2,
        ckpt_every=2,
        eval_every=2,
        heldout_n=4,
        progress=False,
        threads=1,
        **settings,
    )
    train_vae(cfg, world[0])  # the explicit first stage: a Trainer trains no VAE itself
    return Trainer(cfg, data=world[0], val=world[1])


def test_training_resumes_to_the_same_result(tmp_path, tiny_world):
    straight = _trainer(tmp_path / "a", tiny_world, 4)
    straight.run()
    first = _trainer(tmp_path / "b", tiny_world, 4)
    first.run(until=2)  # an interrupted run
    resumed = _trainer(tmp_path / "b", tiny_world, 4)
    assert resumed.step == 2
    resumed.run()
    for k, v in straight._named().items():
        assert torch.equal(v, resumed._named()[k]), k
        assert torch.equal(straight.ema[k], resumed.ema[k]), k
    assert straight.history[-1]["heldout_loss"] == pytest.approx(resumed.history[-1]["heldout_loss"])


def test_export_loads_as_a_diffusers_folder(tmp_path, tiny_world):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    from attnseg.world.export import export_from_trainer, set_default

    tr = _trainer(tmp_path / "t", tiny_world, 2)
    tr.run()
    folder = export_from_trainer(tr, tmp_path / "models", name="world-xs")
    set_default("world-xs", tmp_path / "models")
    assert (tmp_path / "models" / "DEFAULT").read_text().strip() == "world-xs"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["safety_checker"] == [None, None]
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    te = CLIPTextModel.from_pretrained(folder / "text_encoder")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    tok = AutoTokenizer.from_pretrained(folder / "tokenizer")
    enc = tok(
        ["a star on the grass"],
        padding="max_length",
        max_length=tok.model_max_length,
        return_tensors="pt",
        return_offsets_mapping=True,
    )
    with torch.no_grad():
        cond = te(enc.input_ids).last_hidden_state
        z = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
        out = unet(z, torch.tensor([100]), cond).sample
    assert out.shape == z.shape == (1, wm.LATENT_CHANNELS, 16, 16)
    assert not any(p.name.endswith((".bin", ".pt", ".pth", ".ckpt")) for p in folder.rglob("*"))


def test_a_32_latent_size_trains_exports_and_segments_on_16_maps(tmp_path, tiny_world):
    from attnseg import Segmentor
    from attnseg.world.export import export_checkpoint

    tr = _trainer(tmp_path / "t", tiny_world, 2, size="xs32")
    tr.run()
    assert (tmp_path / "t" / "vae32" / "config.json").is_file() and not (tmp_path / "t" / "vae").exists()
    assert tr.lat_mean.shape[1:] == (4, 32, 32)
    folder = export_checkpoint("xs32", tmp_path / "t", tmp_path / "models")
    assert folder.name == "world-xs32"
    seg = Segmentor.from_pretrained(str(folder), device="cpu", dtype="float32", tau=0.0)
    assert seg.backbone.preset.native_size == 64
    plan = seg.backbone.capture_plan((32, 32), seg.config)
    cross = {seg.backbone._grids((32, 32))[n] for n, p in plan.plans.items() if p.read_cross}
    assert cross == {(16, 16), (8, 8)} and plan.map_size == (16, 16)  # SDXL's layout: none at 32²
    image = Image.fromarray(tiny_world[1].images[0])
    out = seg.segment(image, ["sky", "grass", "star"])
    assert out.labels.shape == (64, 64) and len(out.meta["layers"]) == 7


def test_scaling_lists_models_by_latent_and_runs_each_through_attnseg_eval(tmp_path, tiny_world):
    import argparse

    from attnseg.eval.runner import EvalConfig, run_eval
    from attnseg.world.export import export_from_trainer
    from attnseg.world.scaling import add_scaling_arguments, run_scaling, shipped_models

    for size in ("xs32", "xs"):
        tr = _trainer(tmp_path / "t", tiny_world, 1, size=size)
        tr.run()
        export_from_trainer(tr, tmp_path / "models")
    models = shipped_models(tmp_path / "models")
    assert [m.name for m in models] == ["world-xs", "world-xs32"]  # the 16² family first
    parser = argparse.ArgumentParser()
    add_scaling_arguments(parser)
    argv = ["--val", str(tmp_path / "val"), "--n", "2", "--no-grid", "--out", str(tmp_path / "out")]
    assert run_scaling(parser.parse_args([*argv, "--models", str(models[1])])) == 0
    first = json.loads((tmp_path / "out" / "results.json").read_text())
    # run again with both models: the finished run folders are re-read, not evaluated again
    logs = sorted((tmp_path / "out" / "runs").glob("*/records/main-*.jsonl"))
    before = [p.read_bytes() for p in logs]
    assert run_scaling(parser.parse_args([*argv, "--models", *map(str, models)])) == 0
    assert [p.read_bytes() for p in logs] == before
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [(r["model"], r["latent"], r["method"]) for r in results] == [
        ("world-xs", 16, "vanilla"),
        ("world-xs", 16, "goca"),
        ("world-xs32", 32, "vanilla"),
        ("world-xs32", 32, "goca"),
    ]
    assert results[2:] == first
    # the study's number is attnseg eval's: the same command on the same scenes gives the same mIoU
    cfg = EvalConfig(
        dataset="world",
        root=str(tmp_path / "val"),
        out=str(tmp_path / "eval"),
        model=str(models[1]),
        method="goca",
        dtype="float32",
        progress=False,
    )
    m = run_eval(cfg)
    assert 100 * m["mIoU"] == pytest.approx(results[3]["miou"])
    assert "background" not in m["per_class_iou"] and set(results[3]["kind_iou"]) == {"stuff", "thing"}
    own = json.loads((tmp_path / "eval" / "segmentor.json").read_text())["meta"]["timestep"]
    assert results[3]["timestep"] == own and isinstance(own, int)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| world-xs32 | 32² | goca |" in table and (tmp_path / "out" / "scaling.png").stat().st_size > 0


def test_local_token_encoder_trains_and_exports_from_its_checkpoint(tmp_path, tiny_world):
    from transformers import AutoTokenizer, CLIPTextModel

    from attnseg.world.export import export_checkpoint

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "render.json").write_text('{"split": "train", "n": 8, "thing_patterns": true}')
    tr = _trainer(
        tmp_path / "t",
        tiny_world,
        2,
        text_layers=0,
        max_length=40,
        cross_attention_gain=3.0,
        data=str(tmp_path / "data"),
    )
    tr.run()
    assert tr.text.config.num_hidden_layers == 0 and tr.tokenizer.model_max_length == 40
    # 0 layers: a token's output depends on its word and position only, not on the words before it
    ids = torch.tensor([[1, 5, 7, 2], [1, 6, 7, 2]])
    with torch.no_grad():
        out = tr.text(ids).last_hidden_state
    assert torch.allclose(out[0, 2], out[1, 2]) and not torch.allclose(out[0, 1], out[1, 1])
    folder = export_checkpoint("xs", tmp_path / "t", tmp_path / "models")
    te = CLIPTextModel.from_pretrained(folder / "text_encoder")
    tok = AutoTokenizer.from_pretrained(folder / "tokenizer")
    assert te.config.num_hidden_layers == 0 and te.config.max_position_embeddings == 40
    assert tok.model_max_length == 40
    info = json.loads((folder / "world.json").read_text())
    assert info["size"]["text_layers"] == 0 and info["train_config"]["cross_attention_gain"] == 3.0
    assert info["train_data"] == {"split": "train", "n": 8, "thing_patterns": True}  # which world it learned
    key = "embeddings.token_embedding.weight"
    assert torch.equal(te.state_dict()[key], tr.ema[f"text.{key}"])  # the checkpoint's EMA weights


def test_tune_picks_the_best_setting_on_a_held_out_split_and_the_loader_uses_it(tmp_path, tiny_world):
    from attnseg import Segmentor
    from attnseg.errors import BadConfigError
    from attnseg.world.export import export_from_trainer
    from attnseg.world.tune import tune, write_defaults

    tr = _trainer(tmp_path / "t", tiny_world, 2)
    tr.run()
    model = export_from_trainer(tr, tmp_path / "models", name="world-xs")
    held_out = render.render_split(tmp_path / "tune", "test", n=2, seed=0, progress=False)
    chosen = tune(model, held_out, n=2, timesteps=(100, 300), refine_steps=(0, 2), blur=(True, False))
    grid = chosen["tuned"]["grid"]
    assert {(g["timestep"], g["refine_steps"], g["blur"]) for g in grid} == {
        (t, k, b) for t in (100, 300) for k in (0, 2) for b in (True, False)
    }
    best = max(grid, key=lambda g: g["miou"])
    assert chosen["preset"] == {"timestep": best["timestep"], "refine_steps": best["refine_steps"]}
    assert chosen["method"] == {"blur": best["blur"], "tau": 0.0}  # the world has no background
    assert chosen["tuned"]["split"]["split"] == "test"
    path = write_defaults(
        model,
        {"preset": {"timestep": 300, "refine_steps": 0}, "method": {"blur": False}, "tuned": chosen["tuned"]},
    )
    assert json.loads(path.read_text())["tuned"] == chosen["tuned"]
    seg = Segmentor.from_pretrained(str(model), method="goca", device="cpu", dtype="float32")
    assert seg.backbone.preset.timestep == 300 and seg.config.refine_steps == 0 and seg.config.blur is False
    assert Segmentor.from_pretrained(str(model), method="vanilla").config.blur is False
    assert Segmentor.from_pretrained(str(model), method="goca", refine_steps=1).config.refine_steps == 1
    val = render.render_split(tmp_path / "val", "val", n=1, seed=0, progress=False)
    with pytest.raises(BadConfigError, match="val split"):
        tune(model, val, n=1)


def test_tune_presence_scores_thresholds_as_the_segmentor_would_and_the_loader_uses_the_choice(
    tmp_path, tiny_world
):
    from attnseg import Segmentor
    from attnseg.errors import BadCheckpointError, BadConfigError
    from attnseg.eval.metrics import ConfusionMeter
    from attnseg.method.presence import PresenceConfig
    from attnseg.world.export import export_from_trainer
    from attnseg.world.tune import mostly_clean, tune_presence, write_defaults

    tr = _trainer(tmp_path / "t", tiny_world, 2)
    tr.run()
    model = export_from_trainer(tr, tmp_path / "models", name="world-xs")
    held_out = render.render_split(tmp_path / "tune", "test", n=2, seed=0, progress=False)
    thresholds, powers = (0.0, 1e9), (0.2, 4.0)  # threshold 1e9: only each scene's best class is kept
    shares = (0.0, 0.3)  # 0.3: a class under 30% of the image is dropped
    chosen = tune_presence(model, held_out, n=2, thresholds=thresholds, powers=powers, min_shares=shares)
    grid, clean = {}, {}  # (open rescaling, rule, its setting, min share, region test) -> mIoU, clean scenes
    for g in chosen["presence_tuned"]["grid"]:
        value = g["threshold"] if g["labels"] == "threshold" else g["weight_power"]
        key = g["open_rescale"], g["labels"], value, g["min_share"], g["region_test"]
        grid[key], clean[key] = g["miou"], g["clean_scenes"]
    assert list(grid) == [
        (rescale, rule, value, share, region)
        for rescale in ("minmax", "method")
        for rule, values in (("threshold", thresholds), ("weighted", powers))
        for value in values
        for share in shares
        for region in (False, True)
    ]
    best = {}  # the best mIoU among settings with most scenes clean, else the best mIoU
    for rule in ("weighted", "threshold"):
        of_rule = [k for k in grid if k[1] == rule]
        best[rule] = max([k for k in of_rule if mostly_clean(clean[k], 2)] or of_rule, key=grid.get)
    top = max(best.values(), key=grid.get)
    assert chosen["presence"] == {  # a tie goes to the default rule, weighted
        "labels": top[1],
        "threshold": best["threshold"][2],
        "weight_power": best["weighted"][2],
        "min_share": top[3],
        "open_rescale": top[0],
        "region_test": top[4],
    }
    # Each setting's score is what Segmentor itself gives with that setting.
    names, ids = [c.name for c in render.CLASSES], np.array([0] + [c.id for c in render.CLASSES])
    for (rescale, rule, value, share, region), miou in grid.items():
        field = "presence_threshold" if rule == "threshold" else "presence_weight_power"
        seg = Segmentor.from_pretrained(
            str(model),
            "goca",
            dtype="float32",
            tau=0.0,
            presence_labels=rule,
            presence_min_share=share,
            presence_open_rescale=rescale,
            presence_region_test=region,
            **{field: value},
        )
        meter, clean_here = ConfusionMeter(int(ids.max()) + 1), 0
        for row in scaling.read_rows(held_out, 2):
            out = seg.segment(Image.open(held_out / row["image"]).convert("RGB"), names)
            predicted, truth = ids[out.labels.numpy()], np.asarray(Image.open(held_out / row["mask"]))
            meter.update(torch.from_numpy(predicted), torch.from_numpy(truth.astype(np.int64)))
            clean_here += set(np.unique(predicted)) <= set(np.unique(truth))
        assert miou == pytest.approx(100 * meter.compute().miou, abs=0.01)
        assert clean[rescale, rule, value, share, region] == clean_here
    # The two rescalings give different open maps, so different grids.
    assert any(grid[("minmax", *k[1:])] != grid[("method", *k[1:])] for k in grid if k[0] == "minmax")
    write_defaults(model, {"method": {"blur": False}})
    path = write_defaults(
        model, {"presence": {"threshold": 0.25}, "presence_tuned": chosen["presence_tuned"]}
    )
    written = json.loads(path.read_text())
    assert written["presence"] == {"threshold": 0.25} and written["method"] == {"blur": False}  # others kept
    assert Segmentor.from_pretrained(str(model)).presence.threshold == 0.25
    assert Segmentor.from_pretrained(str(model), presence_threshold=0.5).presence.threshold == 0.5
    mine = PresenceConfig(threshold=0.75)
    assert Segmentor.from_pretrained(str(model), presence=mine).presence is mine
    val = render.render_split(tmp_path / "val", "val", n=1, seed=0, progress=False)
    with pytest.raises(BadConfigError, match="val split"):
        tune_presence(model, val, n=1)
    write_defaults(model, {"presence": {"threshold": "high"}})  # a hand-edited file gone wrong
    with pytest.raises(BadCheckpointError, match="attnseg.json.*presence threshold must be a number"):
        Segmentor.from_pretrained(str(model))


def test_most_scenes_clean_needs_the_lower_bound_above_one_half():
    from attnseg.world.tune import mostly_clean

    # A bare majority is not enough on a small split; the bar falls towards one half as the split grows.
    assert [min(c for c in range(n + 1) if mostly_clean(c, n)) for n in (80, 200, 500)] == [49, 114, 272]
    assert not mostly_clean(2, 2) and not mostly_clean(0, 0) and mostly_clean(80, 80)


def test_thing_pixels_splits_thing_pixels_by_where_they_went():
    from attnseg.eval.metrics import ConfusionMeter
    from attnseg.world.scaling import thing_pixels

    kinds = ["stuff", "stuff", "thing", "thing"]  # eval ids: sky, grass, star, heart; 4 = void
    sky, grass, star, heart, void = range(5)
    mat = torch.zeros(5, 5, dtype=torch.int64)
    mat[star, star], mat[star, heart], mat[heart, sky], mat[heart, void] = 5, 2, 2, 1  # 10 thing pixels
    mat[sky, sky], mat[grass, star] = 15, 5  # 20 stuff pixels
    assert thing_pixels(mat, kinds) == pytest.approx(
        {"right_thing": 0.5, "other_thing": 0.2, "stuff": 0.2, "void": 0.1, "stuff_taken_by_things": 0.25}
    )
    s = ConfusionMeter.from_matrix(mat, kinds).compute()
    assert s.iou == pytest.approx((15 / 17, 0.0, 5 / 12, 0.0))
    assert s.kind_iou == pytest.approx({"stuff": 15 / 34, "thing": 5 / 24})


def test_list_captions_use_the_segmentors_prompt_composer():
    from attnseg.prompts import DEFAULT_TEMPLATE, compose_prompt
    from attnseg.world.train import list_caption

    caption = list_caption("a red star on the grass near some water", np.random.default_rng(0))
    names = caption.removeprefix("a photo of ").removesuffix(".").replace(" and ", ", ").split(", ")
    assert sorted(names) == ["grass", "star", "water"]
    assert (
        caption == compose_prompt(names) == DEFAULT_TEMPLATE.format(f"{names[0]}, {names[1]} and {names[2]}")
    )
    assert list_caption("nothing named", np.random.default_rng(0)) == ""


@pytest.mark.parametrize("mask_pads", [True, False])
def test_mask_pads_hides_the_pads_from_the_denoiser(tmp_path, tiny_world, mask_pads):
    from attnseg.world.train import caption_mask

    ids = torch.tensor([[0, 5, 6, 1, 1, 1], [0, 1, 1, 1, 1, 1]])
    assert caption_mask(ids, 1).tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]]
    tr = _trainer(tmp_path, tiny_world, 1, text_layers=1, mask_pads=mask_pads)
    ids = tr.ids[:2]
    first_pad = int(caption_mask(ids, tr.tokenizer.eos_token_id).sum(1).max())
    assert first_pad < ids.shape[1]
    g = torch.Generator().manual_seed(0)
    cfg = tr.unet.config
    x0 = torch.randn(2, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)
    noise, t = torch.randn(x0.shape, generator=g), torch.tensor([300, 600])
    with torch.no_grad():
        before = tr.loss_on(x0, ids, t, noise, None)
        # A random vector per pad position, not a constant: the encoder's LayerNorm subtracts a constant
        # added to every channel, which would leave the pads' outputs (and the loss) as they were.
        weight = tr.text.embeddings.position_embedding.weight
        weight[first_pad:] += torch.randn(weight[first_pad:].shape, generator=g)  # only pads sit there
        after = tr.loss_on(x0, ids, t, noise, None)
    assert torch.equal(before, after) == mask_pads
