"""`attnseg generate` on the embedded default model: outputs, masks, and bad inputs refused before writing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from attnseg.cli import main

PROMPT = "a red star and a blue circle on the grass"


def error_lines(stderr: str) -> list[str]:
    """attnseg's own lines on stderr (loading progress bars of transformers aside)."""
    return [line for line in stderr.splitlines() if line.startswith("attnseg")]


def generate(*args: str) -> int:
    return main(["generate", PROMPT, "--steps", "3", "--quiet", *args])


def test_generate_with_masks_writes_labels_of_the_named_classes(tmp_path):
    out = tmp_path / "gen"
    assert generate("--masks", "--n", "2", "--seed", "7", "--out", str(out)) == 0
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert [p.name for p in folders] == ["000_seed7", "001_seed8"]
    for folder, seed in zip(folders, (7, 8)):
        assert {p.name for p in folder.iterdir()} == {
            "image.png",
            "labels.png",
            "overlay.png",
            "scores.npz",
            "result.json",
        }
        result = json.loads((folder / "result.json").read_text())
        assert result["classes"] == ["star", "circle", "grass"]  # the prompt's nouns, in its order
        assert result["seed"] == seed and result["generation"]["guidance"] == "s-cfg"
        assert len(result["rate_mean_per_step"]) == 3
        labels = np.asarray(Image.open(folder / "labels.png"))
        assert labels.shape == (64, 64) and labels.max() <= 3
        assert Image.open(folder / "image.png").size == (64, 64)
        scores = np.load(folder / "scores.npz")
        assert scores["scores"].shape == (3, 64, 64) and list(scores["classes"]) == result["classes"]


def test_plain_cfg_without_masks_and_a_rerun_into_its_own_folder(tmp_path):
    out = tmp_path / "gen"
    assert generate("--guidance", "cfg", "--n", "1", "--classes", "star", "--out", str(out)) == 0
    folder = out / "000_seed0"
    assert {p.name for p in folder.iterdir()} == {"image.png", "result.json"}
    first = (folder / "image.png").read_bytes()
    assert json.loads((folder / "result.json").read_text())["classes"] == ["star"]
    # generate made this folder, so it may write there again; same seed, same image
    assert generate("--guidance", "cfg", "--n", "1", "--classes", "star", "--out", str(out)) == 0
    assert (folder / "image.png").read_bytes() == first


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cfg", "0"], "--cfg must be > 0"),
        (["--cfg", "1"], "needs --cfg > 1"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--n", "0"], "--n must be >= 1"),
        (["--classes", "heart"], "'heart' does not occur in the prompt"),
        (["--mask-method", "goca", "--set", "nonsense=1"], "unknown method setting"),
    ],
)
def test_bad_options_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "gen"
    assert generate("--out", str(out), *args) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("   ", "the prompt is empty"),
        ("a red dog on the grass", "does not know 'dog'"),
        ("a red and a blue", "names none of the classes"),
    ],
)
def test_bad_prompts_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, prompt, message):
    out = tmp_path / "gen"
    assert main(["generate", prompt, "--steps", "2", "--quiet", "--out", str(out)]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert generate("--out", str(out), "--n", "1") == 2
    assert "did not write" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    file_out = tmp_path / "a_file"
    file_out.write_text("x")
    assert generate("--out", str(file_out), "--n", "1") == 2 and file_out.read_text() == "x"


def test_overwrite_writes_beside_the_users_files_and_keeps_them(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "000_seed0").mkdir()
    (out / "000_seed0" / "draft.txt").write_text("mine too")
    assert (
        generate("--guidance", "cfg", "--n", "1", "--classes", "star", "--out", str(out), "--overwrite") == 0
    )
    assert (out / "notes.txt").read_text() == "keep me"
    assert (out / "000_seed0" / "draft.txt").read_text() == "mine too"
    assert Image.open(out / "000_seed0" / "image.png").size == (64, 64)
    # a second run without --overwrite finds files it did not write and leaves everything as it is
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert generate("--guidance", "cfg", "--n", "2", "--classes", "star", "--out", str(out)) == 2
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
