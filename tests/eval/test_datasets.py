"""Readers: every data set's fake official layout reads back as hand-written eval ids; bad layouts say what is missing."""

from __future__ import annotations

import json
from pathlib import Path

import eval_layouts as L
import numpy as np
import pytest
from PIL import Image

from attnseg.errors import BadConfigError, BadDatasetError
from attnseg.eval.datasets import (
    DATASETS,
    coco_fine_to_coarse,
    coco_raw_to_trainid,
    get_dataset,
    load_classnames,
)

CASES = [
    ("voc21", ""),
    ("voc20", ""),
    ("context60", ""),
    ("context59", ""),
    ("coco-object", ""),
    ("coco-object", "raw"),
    ("coco-stuff171", ""),
    ("coco-stuff171", "raw"),
    ("coco-stuff27", ""),
    ("coco-stuff27", "raw"),
    ("cityscapes", ""),
    ("cityscapes", "labelid"),
    ("ade20k", ""),
    ("world", ""),
]
SIZES = {
    "voc21": 21,
    "voc20": 20,
    "context60": 60,
    "context59": 59,
    "coco-object": 81,
    "coco-stuff171": 171,
    "coco-stuff27": 27,
    "cityscapes": 19,
    "ade20k": 150,
    "world": 9,
}


@pytest.mark.parametrize(("name", "variant"), CASES)
def test_reader_maps_official_labels(tmp_path: Path, name: str, variant: str) -> None:
    masks = L.build(name, tmp_path / "data", n=3, variant=variant)
    ds = get_dataset(name, tmp_path / "data")
    assert [s.id for s in ds.samples] == sorted(masks)
    assert ds.num_classes == SIZES[name]
    for s in ds.samples:
        want = L.expected_eval(name, masks[s.id], ds.class_names, ds.has_background, variant)
        got = ds.load_mask(s)
        assert got.dtype == np.int64
        assert np.array_equal(got, want)
        assert ds.load_image(s).size == (L.W, L.H)


def test_registry_names() -> None:
    assert set(DATASETS) == set(SIZES)
    assert DATASETS["voc21"].has_background and not DATASETS["voc20"].has_background
    assert DATASETS["coco-object"].has_background and DATASETS["context60"].has_background
    with pytest.raises(BadConfigError, match="unknown data set"):
        get_dataset("pascal", ".")


@pytest.mark.parametrize(
    "filename",
    [
        "voc20.txt",
        "context59.txt",
        "coco_stuff171.txt",
        "coco_stuff27.txt",
        "cityscapes19.txt",
        "ade20k150.txt",
    ],
)
def test_class_files_have_unique_names_and_synonyms(filename: str) -> None:
    entries = load_classnames(filename)
    words = [w for e in entries for w in e.split("|")]
    assert len(words) == len(set(words)), sorted(w for w in set(words) if words.count(w) > 1)
    assert all(w == w.strip() and w for w in words)


def test_class_lists_match_the_official_order() -> None:
    voc = [e.split("|")[0] for e in load_classnames("voc20.txt")]
    assert voc[0] == "aeroplane" and voc[10] == "table" and voc[14] == "person" and voc[19] == "tv monitor"
    ade = [e.split("|")[0] for e in load_classnames("ade20k150.txt")]
    assert ade[0] == "wall" and ade[12] == "person" and ade[20] == "car" and ade[149] == "flag"
    city = [e.split("|")[0] for e in load_classnames("cityscapes19.txt")]
    assert city[0] == "road" and city[13] == "car" and city[18] == "bicycle"


def test_coco_tables() -> None:
    raw = coco_raw_to_trainid()
    assert len(raw) == 171 and sorted(raw.values()) == list(range(171))
    assert (
        raw[0] == 0 and raw[89] == 79 and raw[91] == 80 and raw[181] == 170
    )  # person, toothbrush, banner, wood
    assert 11 not in raw  # COCO id 12 does not exist
    coarse = coco_fine_to_coarse()
    assert len(coarse) == 171 and set(coarse) == set(range(27))
    spec = json.loads((_classnames() / "coco_stuff27_map.json").read_text())
    assert spec["fine"][0] == "person" and spec["fine"][80] == "banner" and spec["fine"][170] == "wood"


def _classnames() -> Path:
    import attnseg.eval.datasets as d

    return Path(d.__file__).parent / "classnames"


# -- bad layouts -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("voc21", "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"),
        ("context59", "VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt"),
        ("coco-stuff171", "images/val2017"),
        ("cityscapes", "leftImg8bit/val"),
        ("ade20k", "ADEChallengeData2016/images/validation"),
        ("world", "classes.json"),
    ],
)
def test_empty_root_names_the_expected_file(tmp_path: Path, name: str, expected: str) -> None:
    with pytest.raises(BadDatasetError) as e:
        get_dataset(name, tmp_path)
    assert str(tmp_path / expected) in str(e.value)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(BadDatasetError, match="is not a folder"):
        get_dataset("voc21", tmp_path / "nope")


def test_missing_mask_is_named(tmp_path: Path) -> None:
    L.build("voc21", tmp_path, n=3)
    victim = tmp_path / "VOCdevkit/VOC2012/SegmentationClass/2008_000001.png"
    victim.unlink()
    with pytest.raises(BadDatasetError) as e:
        get_dataset("voc21", tmp_path)
    assert str(victim) in str(e.value) and "val.txt" in str(e.value)


def test_missing_label_folder(tmp_path: Path) -> None:
    L.build("ade20k", tmp_path, n=2)
    for p in (tmp_path / "ADEChallengeData2016/annotations/validation").iterdir():
        p.unlink()
    (tmp_path / "ADEChallengeData2016/annotations/validation").rmdir()
    with pytest.raises(BadDatasetError, match="annotations/validation"):
        get_dataset("ade20k", tmp_path)


def test_coco_missing_label_names_the_trainid_file(tmp_path: Path) -> None:
    L.build("coco-stuff171", tmp_path, n=2)
    (tmp_path / "annotations/val2017/000000000002_labelTrainIds.png").unlink()
    with pytest.raises(BadDatasetError, match="000000000002_labelTrainIds.png"):
        get_dataset("coco-stuff171", tmp_path)


def test_unknown_split_lists_what_exists(tmp_path: Path) -> None:
    L.build("voc21", tmp_path, n=2)
    with pytest.raises(BadDatasetError, match=r"train\.txt.*\['val'\]"):
        get_dataset("voc21", tmp_path, "train")
    with pytest.raises(BadConfigError, match="unknown split"):
        get_dataset("voc21", tmp_path, "test2")


def test_rgb_mask_is_refused(tmp_path: Path) -> None:
    L.build("cityscapes", tmp_path, n=2)
    ds = get_dataset("cityscapes", tmp_path)
    Image.new("RGB", (L.W, L.H), (128, 64, 128)).save(ds.samples[0].mask)
    with pytest.raises(BadDatasetError, match="RGB image; expected a single-channel label PNG"):
        ds.load_mask(ds.samples[0])


def test_unknown_label_value_is_refused(tmp_path: Path) -> None:
    L.build("voc21", tmp_path, n=2)
    ds = get_dataset("voc21", tmp_path)
    Image.fromarray(np.full((L.H, L.W), 77, dtype=np.uint8)).save(ds.samples[0].mask)
    with pytest.raises(BadDatasetError, match=r"label values \[77\]"):
        ds.load_mask(ds.samples[0])


def test_world_split_mismatch_and_bad_index(tmp_path: Path) -> None:
    L.build("world", tmp_path, n=2)
    with pytest.raises(BadDatasetError, match="holds the 'val' split"):
        get_dataset("world", tmp_path, "train")
    (tmp_path / "index.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(BadDatasetError, match="index.jsonl:1"):
        get_dataset("world", tmp_path)


def test_world_render_output_is_read(tmp_path: Path) -> None:
    render = pytest.importorskip("attnseg.world.render")
    out = render.render_split(tmp_path / "w", "val", n=2, seed=0, size=64, progress=False)
    ds = get_dataset("world", out)
    assert len(ds.samples) == 2 and ds.split == "val"
    # the rendered world has no background pixel, so no background class: its 13 classes alone
    assert not ds.has_background and ds.class_names == [c.name for c in render.CLASSES]
    assert ds.class_kinds == [c.kind for c in render.CLASSES] and ds.foreground_ids == list(range(13))
    m = ds.load_mask(ds.samples[0])
    assert m.shape == (64, 64) and m.min() >= 0 and m.max() < ds.num_classes
    scene = next(render.render_scenes("val", 1, seed=0))[1]
    assert np.array_equal(m, scene.mask.astype(np.int64) - 1)  # eval id = world id - 1
    # a background pixel in a world without background is an error, not a silent miss
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(ds.samples[0].mask)
    with pytest.raises(BadDatasetError, match=r"label values \[0\]"):
        ds.load_mask(ds.samples[0])
