"""The runner in one process: resuming from partial and torn records, config checks, the run folder."""

from __future__ import annotations

import json
from pathlib import Path

import eval_layouts as L
import numpy as np
import pytest

from attnseg.errors import BadConfigError
from attnseg.eval.fake import ColorKeySegmentor
from attnseg.eval.records import ImageRecord, decode_record, encode_record, read_records
from attnseg.eval.runner import EvalConfig, _prefetch, run_eval, subset

KEYS = ("mIoU", "per_class_iou", "pixel_accuracy", "mean_accuracy", "tau", "protocol")


def _cfg(root: Path, out: Path, **kw: object) -> EvalConfig:
    base = {"dataset": "voc21", "protocol": "open", "tau": 0.5, "progress": False}
    base.update(kw)
    return EvalConfig(root=str(root), out=str(out), **base)  # type: ignore[arg-type]


class _Boom:
    """A segmentor that must not be needed: a fully recorded run never loads the model."""

    def segment(self, *a: object, **k: object) -> None:
        raise AssertionError("the segmentor was called for an image that has a record")


def test_record_encoding_detects_torn_and_garbled_lines() -> None:
    rec = {"id": "a", "conf": [0, 0, 5], "tau": 0.5}
    line = encode_record(rec)
    assert decode_record(line) == rec
    assert decode_record(line[:-1]) is None  # no newline: torn
    assert decode_record(line[:-9] + b"\n") is None
    assert decode_record(line.replace(b"5", b"6")) is None  # checksum
    assert json.loads(line)["id"] == "a"  # still plain JSON


def test_resume_after_partial_run_and_torn_line(tmp_path: Path) -> None:
    L.build("voc21", tmp_path / "d", n=10)
    seg = lambda: ColorKeySegmentor(noise=0.25)  # noqa: E731
    full = run_eval(_cfg(tmp_path / "d", tmp_path / "full"), seg)
    # the same run, cut after 4 images with half a record written
    run_eval(_cfg(tmp_path / "d", tmp_path / "cut", limit=None), seg)
    log = tmp_path / "cut/records/main-r0of1.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:4]) + lines[4][:25])
    (tmp_path / "cut/metrics.json").unlink()
    calls: list[ColorKeySegmentor] = []

    def counted() -> ColorKeySegmentor:
        calls.append(ColorKeySegmentor(noise=0.25))
        return calls[-1]

    again = run_eval(_cfg(tmp_path / "d", tmp_path / "cut"), counted)
    assert sum(n for n, _ in calls[0].calls) == 6  # only the 6 images without a whole record
    for k in KEYS:
        assert again[k] == full[k], k
    recs, good = read_records(log)
    assert len(recs) == 10 and len({r["id"] for r in recs}) == 10 and good == log.stat().st_size
    assert np.array_equal(np.load(tmp_path / "cut/confusion.npy"), np.load(tmp_path / "full/confusion.npy"))
    # a complete folder is re-scored from records alone
    third = run_eval(_cfg(tmp_path / "d", tmp_path / "cut"), _Boom)
    assert third["mIoU"] == full["mIoU"]


def test_batch_size_does_not_change_numbers(tmp_path: Path) -> None:
    L.build("coco-object", tmp_path / "d", n=7)
    seg = lambda: ColorKeySegmentor(noise=0.2)  # noqa: E731
    a = run_eval(_cfg(tmp_path / "d", tmp_path / "a", dataset="coco-object", batch_size=1), seg)
    b = run_eval(_cfg(tmp_path / "d", tmp_path / "b", dataset="coco-object", batch_size=3), seg)
    for k in KEYS:
        assert a[k] == b[k], k


class _EachKey(ColorKeySegmentor):
    """The colour-key segmentor with `segment_each`: one call for images with different class lists."""

    def segment_each(self, images: list, class_lists: list, seed: int = 0) -> list:
        self.calls.append((len(images), [list(c) for c in class_lists]))
        return [self._one(im, list(c), seed) for im, c in zip(images, class_lists)]


def test_oracle_tags_batches_images_with_different_class_lists(tmp_path: Path) -> None:
    L.build("coco-object", tmp_path / "d", n=7)
    made: list[ColorKeySegmentor] = []

    def factory(cls: type) -> ColorKeySegmentor:
        made.append(cls(noise=0.2))
        return made[-1]

    kw = {"dataset": "coco-object", "protocol": "oracle-tags"}
    one = run_eval(_cfg(tmp_path / "d", tmp_path / "a", batch_size=1, **kw), lambda: factory(_EachKey))
    four = run_eval(_cfg(tmp_path / "d", tmp_path / "b", batch_size=4, **kw), lambda: factory(_EachKey))
    plain = run_eval(
        _cfg(tmp_path / "d", tmp_path / "c", batch_size=4, **kw), lambda: factory(ColorKeySegmentor)
    )
    for k in KEYS:
        assert one[k] == four[k] == plain[k], k
    batched = made[1].calls
    assert len(batched) == 2  # one call per block of 4, whatever the class lists (unprompted images skip it)
    assert max(len({tuple(c) for c in lists}) for _, lists in batched) > 1


def test_other_settings_are_refused_in_the_same_folder(tmp_path: Path) -> None:
    L.build("voc21", tmp_path / "d", n=2)
    run_eval(_cfg(tmp_path / "d", tmp_path / "r"), ColorKeySegmentor)
    with pytest.raises(BadConfigError, match=r"tau=0\.5 \(now 0\.7\)"):
        run_eval(_cfg(tmp_path / "d", tmp_path / "r", tau=0.7), ColorKeySegmentor)
    # settings that change no number may differ
    run_eval(_cfg(tmp_path / "d", tmp_path / "r", batch_size=2), _Boom)


def test_limit_spreads_over_the_split_and_reuses_records(tmp_path: Path) -> None:
    L.build("voc21", tmp_path / "d", n=8)
    m = run_eval(_cfg(tmp_path / "d", tmp_path / "r", limit=4), ColorKeySegmentor)
    assert m["counts"]["images"] == 4 and m["counts"]["images_in_split"] == 8
    assert [i for i in range(8)][::2] == [(k * 8) // 4 for k in range(4)]
    assert len(subset(list(range(8)), 4)) == 4  # type: ignore[arg-type]
    full = run_eval(_cfg(tmp_path / "d", tmp_path / "r"), ColorKeySegmentor)
    assert full["counts"]["images"] == 8


def test_run_folder_records_command_config_versions_seed(tmp_path: Path) -> None:
    L.build("world", tmp_path / "d", n=2)
    cfg = _cfg(
        tmp_path / "d", tmp_path / "r", dataset="world", seed=7, command=("attnseg", "eval", "--seed", "7")
    )
    m = run_eval(cfg, ColorKeySegmentor)
    r = tmp_path / "r"
    config = json.loads((r / "config.json").read_text())
    assert config["identity"]["seed"] == 7 and config["identity"]["dataset"] == "world"
    launch = json.loads((r / "launches.jsonl").read_text().splitlines()[0])
    assert launch["command"] == ["attnseg", "eval", "--seed", "7"] and launch["seed"] == 7
    assert launch["versions"]["torch"] and launch["processes"] == 1
    assert json.loads((r / "segmentor.json").read_text())["meta"]["model"] == "color-key"
    metrics = json.loads((r / "metrics.json").read_text())
    for key in (
        "mIoU",
        "per_class_iou",
        "pixel_accuracy",
        "protocol",
        "tau",
        "counts",
        "seed",
        "model",
        "method",
    ):
        assert key in metrics
    assert metrics == m | {"created": metrics["created"]}
    assert not list(r.glob("**/*.tmp"))


def test_segmentor_contract_violations_are_reported(tmp_path: Path) -> None:
    L.build("voc21", tmp_path / "d", n=1)

    class Small(ColorKeySegmentor):
        def segment(self, images, classes, seed=0):  # type: ignore[no-untyped-def]
            out = super().segment(images, classes, seed)
            for r in out:
                r.scores = r.scores[:, ::2, ::2]
            return out

    with pytest.raises(BadConfigError, match="must be K×H×W at the image size"):
        run_eval(_cfg(tmp_path / "d", tmp_path / "r"), Small)


def test_resume_reruns_a_partly_recorded_batch_whole(tmp_path: Path) -> None:
    """Batches are fixed blocks of the shard: a resumed image meets the same batch-mates as before."""
    L.build("voc21", tmp_path / "d", n=7)
    run_eval(_cfg(tmp_path / "d", tmp_path / "r", batch_size=3), lambda: ColorKeySegmentor(noise=0.2))
    log = tmp_path / "r/records/main-r0of1.jsonl"
    full = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(full[:4]))  # block 0 whole, block 1 with one of three images
    seg = ColorKeySegmentor(noise=0.2)
    run_eval(_cfg(tmp_path / "d", tmp_path / "r", batch_size=3), lambda: seg)
    assert [n for n, _ in seg.calls] == [3, 1]  # blocks 1 and 2, as in the first launch

    def strip(lines: list[bytes]) -> list[str]:
        recs = [decode_record(x if x.endswith(b"\n") else x + b"\n") for x in lines]
        return sorted(json.dumps({k: v for k, v in r.items() if k != "sec"}, sort_keys=True) for r in recs)  # type: ignore[union-attr]

    assert strip(log.read_bytes().splitlines(keepends=True)) == strip(full)


def test_image_records_round_trip_and_malformed_ones_are_named() -> None:
    rec = ImageRecord("a", (1, 2), 0.5, (0, 0, 5), ((0, 0, 5),) * 2, 0.25, {"special_token_mass": 0.5})
    line = encode_record(rec.to_json())
    assert ImageRecord.from_json(decode_record(line), "log") == rec  # type: ignore[arg-type]
    bare = ImageRecord("b", (), None, None)
    assert set(bare.to_json()) == {"id", "ids", "tau", "sec"}  # no conf, grid or diag keys when empty
    with pytest.raises(BadConfigError, match="main-r0of1.jsonl holds a record that is not"):
        ImageRecord.from_json({"id": "c", "ids": "x"}, "main-r0of1.jsonl")


def test_prefetch_raises_the_producers_error_in_the_consumer() -> None:
    def items():  # type: ignore[no-untyped-def]
        yield 1
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for item in _prefetch(items(), 2):
            got.append(item)
    assert got == [1]
    assert list(_prefetch(iter([("__error__", 3), None]), 1)) == [("__error__", 3), None]  # plain data


def test_segmentor_diagnostics_are_averaged_into_metrics(tmp_path: Path) -> None:
    L.build("voc21", tmp_path / "d", n=3)

    class Diag(ColorKeySegmentor):
        def segment(self, images, classes, seed=0):  # type: ignore[no-untyped-def]
            out = super().segment(images, classes, seed)
            for r in out:  # one entry per prompt, as attnseg.Segmentor reports
                r.meta["diagnostics"] = [
                    {"prompt": "p", "special_token_mass": 0.2 * len(classes), "layer_weights": [1.0]}
                ]
            return out

    m = run_eval(_cfg(tmp_path / "d", tmp_path / "r", protocol="oracle-tags"), Diag)
    recs = [json.loads(x) for x in (tmp_path / "r/records/main-r0of1.jsonl").read_text().splitlines()]
    masses = [r["diag"]["special_token_mass"] for r in recs if "diag" in r]
    assert len(masses) == 3 and m["diagnostics"] == {"special_token_mass": pytest.approx(sum(masses) / 3)}
