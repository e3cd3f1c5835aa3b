"""`attnseg eval --protocol paper`: the reference code's protocol on every data set's fake layout."""

from __future__ import annotations

import json
from pathlib import Path

import eval_layouts as L
import numpy as np
import pytest

from attnseg.errors import BadConfigError
from attnseg.eval.cli import main
from attnseg.eval.datasets import get_dataset
from attnseg.eval.protocols import (
    PAPER_SETTINGS,
    PAPER_TAU_GRID,
    Caption,
    PaperSettings,
    paper_prompt,
    read_captions,
)

FAKE = ["--segmentor", "attnseg.eval.fake:make", "--no-progress"]
ALL = sorted(PAPER_SETTINGS)


def _gt_names(name: str, raw: np.ndarray, variant: str = "") -> list[str]:
    """Display names of the classes a fake label map holds, from the hand-written table."""
    names = L.spec(name, variant)
    return sorted({names[int(v)] for v in np.unique(raw) if names.get(int(v))})


@pytest.mark.parametrize("name", ALL)
def test_paper_protocol_runs_on_every_fake_layout(tmp_path: Path, name: str, capsys) -> None:
    settings = PAPER_SETTINGS[name]
    raws = L.build(name, tmp_path / "d", n=3, split=settings.split or "val")
    # Captions naming every GT class: the colour-key segmentor is then exact at τ = 0 (ties go to background).
    captions = {i: "a picture of " + " and ".join(_gt_names(name, raw)) for i, raw in raws.items()}
    (tmp_path / "c.json").write_text(json.dumps(captions))
    args = ["eval", "--dataset", name, "--root", str(tmp_path / "d"), "--out", str(tmp_path / "r")]
    rc = main([*args, "--protocol", "paper", "--captions", str(tmp_path / "c.json"), *FAKE])
    assert rc == 0
    assert "paper protocol (oracle)" in capsys.readouterr().out
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["dataset"] == name and m["mIoU"] == 1.0 and m["counts"]["images"] == 3
    p = m["protocol"]
    assert p["name"] == "paper" and p["oracle"] and p["oracle_tau"] and p["label_rule"] == "offset"
    assert (
        m["tau_search"]["grid"] == list(PAPER_TAU_GRID) == [-0.4, -0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4]
    )
    assert m["tau"] in PAPER_TAU_GRID and m["split"] == (settings.split or "val")
    prompts = json.loads((tmp_path / "r" / "prompts.json").read_text())
    order = sorted(raws, reverse=settings.reverse)
    assert [p["id"] for p in prompts] == order  # VOC and Context: the list reversed
    assert all(p["prompt"].endswith(", background.") == settings.background_word for p in prompts)


def test_missed_classes_are_appended_and_unmatched_words_become_background(tmp_path: Path) -> None:
    L.build("voc21", tmp_path / "d", n=1, split="train")
    dataset = get_dataset("voc21", tmp_path / "d", "train")
    ids = [dataset.class_names.index(n) for n in ("dog", "person")]
    caption = Caption("Two dogs near a cat on a sofa.", ("two dogs", "a cat", "sofa"))
    prompt = paper_prompt(caption, dataset, ids, PAPER_SETTINGS["voc21"])
    # 'dogs' names the GT's dog; 'cat' is a VOC class the GT lacks and 'sofa' no GT class: background words.
    assert prompt.text == "Two dogs near a cat on a sofa, person, background."
    assert prompt.class_ids == ids and prompt.class_names == ["dogs", "person"]
    assert prompt.background == ["cat", "sofa", "background"]
    coco = PaperSettings("val", False, 10, background_word=False, append_missed=False)
    bare = paper_prompt(Caption("two dogs"), dataset, ids, coco)
    assert bare.text == "two dogs." and bare.class_ids == ids[:1] and bare.background == []


def test_captions_in_each_accepted_shape(tmp_path: Path) -> None:
    shapes = {
        "plain": {"2008_000001.jpg": "a dog"},
        "nested": {"2008_000001": {"caption": "a dog", "entities": ["dog"]}},
        "records": [{"image_id": "2008_000001", "caption": "a  dog", "entities": ["dog"]}],
    }
    for name, data in shapes.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
        got = read_captions(tmp_path / f"{name}.json")
        assert list(got) == ["2008_000001"] and got["2008_000001"].text == "a dog"
    (tmp_path / "bad.json").write_text(json.dumps({"x": {"entities": []}}))
    with pytest.raises(BadConfigError, match="has no caption text"):
        read_captions(tmp_path / "bad.json")


def test_without_captions_it_says_what_is_missing_and_how_to_make_them(tmp_path: Path, capsys) -> None:
    L.build("voc21", tmp_path / "d", n=2, split="train")
    args = ["eval", "--dataset", "voc21", "--root", str(tmp_path / "d"), "--out", str(tmp_path / "r")]
    assert main([*args, "--protocol", "paper", *FAKE]) == 2
    err = capsys.readouterr().err
    assert "needs --captions FILE for VOC21" in err and "vision-language model" in err
    (tmp_path / "c.json").write_text(json.dumps({"2007_000000": "a dog"}))
    assert main([*args, "--protocol", "paper", "--captions", str(tmp_path / "c.json"), *FAKE]) == 2
    assert "no caption for 1 of the 2 images scored (first: 2007_000001)" in capsys.readouterr().err
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_world_uses_its_own_captions(tmp_path: Path) -> None:
    render = pytest.importorskip("attnseg.world.render")
    render.render_split(tmp_path / "w", "val", n=2, seed=0, size=64, progress=False)
    args = ["eval", "--dataset", "world", "--root", str(tmp_path / "w"), "--out", str(tmp_path / "r")]
    assert main([*args, "--protocol", "paper", *FAKE]) == 0
    prompts = json.loads((tmp_path / "r" / "prompts.json").read_text())
    index = [json.loads(line) for line in (tmp_path / "w" / "index.jsonl").read_text().splitlines()]
    assert [p["prompt"].split(",")[0].rstrip(".") for p in prompts] == [
        r["caption"].rstrip(" .").split(",")[0] for r in index
    ]


def test_report_labels_a_paper_run_as_an_oracle(tmp_path: Path, capsys) -> None:
    raws = L.build("coco-object", tmp_path / "d", n=2)
    captions = {i: " and ".join(_gt_names("coco-object", raw)) or "nothing" for i, raw in raws.items()}
    (tmp_path / "c.json").write_text(json.dumps(captions))
    args = ["eval", "--dataset", "coco-object", "--root", str(tmp_path / "d"), "--out", str(tmp_path / "r")]
    assert main([*args, "--protocol", "paper", "--captions", str(tmp_path / "c.json"), *FAKE]) == 0
    assert main(["report", str(tmp_path / "r"), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "| paper, τ test-sweep† | 100.0† |" in out
    assert "paper: the reference code's protocol, an oracle" in out
