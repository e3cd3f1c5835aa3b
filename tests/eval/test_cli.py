"""The commands: every data set's fake layout, kill -9 and resume, two gloo processes, bad layouts, reports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import eval_layouts as L
import numpy as np
import pytest
from PIL import Image

import attnseg.eval
from attnseg.eval.cli import main
from attnseg.eval.runner import EvalConfig, run_eval

FAKE = ["--segmentor", "attnseg.eval.fake:make", "--no-progress"]
KEYS = ("mIoU", "per_class_iou", "pixel_accuracy", "mean_accuracy", "tau", "protocol", "tau_search")


def _env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this checkout importable, no inherited launcher variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    src = str(Path(attnseg.eval.__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def _same(a: dict, b: dict) -> None:
    for k in KEYS:
        assert a.get(k) == b.get(k), k
    assert a["counts"]["images"] == b["counts"]["images"]


@pytest.mark.parametrize(
    "name",
    [
        "voc21",
        "voc20",
        "context60",
        "context59",
        "coco-object",
        "coco-stuff171",
        "coco-stuff27",
        "cityscapes",
        "ade20k",
        "world",
    ],
)
def test_eval_runs_on_every_fake_layout(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    L.build(name, tmp_path / "d", n=3)
    rc = main(
        [
            "eval",
            "--dataset",
            name,
            "--root",
            str(tmp_path / "d"),
            "--out",
            str(tmp_path / "r"),
            "--tau",
            "0.5",
            *FAKE,
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "mIoU 100.00" in out and "metrics.json" in out
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["dataset"] == name and m["mIoU"] == 1.0 and m["counts"]["images"] == 3


def test_eval_on_a_rendered_world(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    render = pytest.importorskip("attnseg.world.render")
    render.render_split(tmp_path / "w", "val", n=3, seed=0, size=64, progress=False)
    rc = main(
        [
            "eval",
            "--dataset",
            "world",
            "--root",
            str(tmp_path / "w"),
            "--out",
            str(tmp_path / "r"),
            "--protocol",
            "open",
            "--tau",
            "0.5",
            *FAKE,
        ]
    )
    assert rc == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["counts"]["images"] == 3 and m["split"] == "val"


def test_bad_layout_is_a_message_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        ["eval", "--dataset", "cityscapes", "--root", str(tmp_path), "--out", str(tmp_path / "r"), *FAKE]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"expected the image folder {tmp_path / 'leftImg8bit' / 'val'}" in err


def _count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_kill_9_and_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    L.build("world", tmp_path / "d", n=30)
    args = [
        "eval",
        "--dataset",
        "world",
        "--root",
        str(tmp_path / "d"),
        "--protocol",
        "open",
        "--tau",
        "0.5",
        "--batch-size",
        "2",
    ]
    args += [*FAKE, "--segmentor-arg", "noise=0.2", "--segmentor-arg", "delay=0.03"]
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "attnseg.eval", *args, "--out", str(run)]
    log = run / "records" / "main-r0of1.jsonl"
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while _count_lines(log) < 8:
            assert proc.poll() is None, (
                f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
            )  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no records within 60 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    done = _count_lines(log)
    assert 8 <= done < 30 and not (run / "metrics.json").exists()
    with open(log, "ab") as f:  # as if the kill had landed in the middle of a write
        f.write(b'{"id":"000029","ids":[1,2')

    again = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "mIoU" in again.stdout

    ref = tmp_path / "ref"
    assert main([*args, "--out", str(ref)]) == 0
    a = json.loads((run / "metrics.json").read_text())
    b = json.loads((ref / "metrics.json").read_text())
    _same(a, b)
    assert np.array_equal(np.load(run / "confusion.npy"), np.load(ref / "confusion.npy"))
    ids = [json.loads(x)["id"] for x in log.read_text().splitlines()]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 30  # no image lost, none scored twice
    assert len((run / "launches.jsonl").read_text().splitlines()) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Boom:
    def segment(self, *a: object, **k: object) -> None:
        raise AssertionError("the segmentor was called for an image that has a record")


def test_two_gloo_processes_equal_one(tmp_path: Path) -> None:
    L.build("voc21", tmp_path / "d", n=9, split="val")
    L.build("voc21", tmp_path / "d", n=5, split="train")
    args = [
        "eval",
        "--dataset",
        "voc21",
        "--root",
        str(tmp_path / "d"),
        "--tau-search",
        "heldout",
        "--tau-grid",
        "0.2,0.5,0.8,0.97",
    ]
    args += [*FAKE, "--segmentor-arg", "noise=0.3", "--batch-size", "2"]
    two = tmp_path / "two"
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "attnseg.eval", *args, "--out", str(two)],
            env=_env(
                RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "mIoU" in outs[0][0] and outs[1][0] == ""  # rank 0 reports

    one = tmp_path / "one"
    assert main([*args, "--out", str(one)]) == 0
    a = json.loads((two / "metrics.json").read_text())
    b = json.loads((one / "metrics.json").read_text())
    _same(a, b)
    assert a["counts"]["processes"] == 2 and a["protocol"]["tau_mode"] == "heldout"
    assert np.array_equal(np.load(two / "confusion.npy"), np.load(one / "confusion.npy"))
    main_logs = sorted(p.name for p in (two / "records").glob("main-*.jsonl"))
    assert main_logs == ["main-r0of2.jsonl", "main-r1of2.jsonl"]
    assert [_count_lines(two / "records" / n) for n in main_logs] == [5, 4]
    # the folder of a two-process run resumes in one process without scoring anything again
    cfg = EvalConfig(
        dataset="voc21",
        root=str(tmp_path / "d"),
        out=str(two),
        tau_search="heldout",
        tau_grid=(0.2, 0.5, 0.8, 0.97),
        segmentor="attnseg.eval.fake:make",
        segmentor_args=(("noise", 0.3),),
        progress=False,
    )
    c = run_eval(cfg, _Boom)
    _same(c, b)


def test_report_table_and_bars(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    L.build("voc21", tmp_path / "v", n=3, paint_as={"dog": "person"})
    L.build("ade20k", tmp_path / "a", n=3)
    runs = []
    for name, root, extra in [
        ("voc21", "v", ["--tau", "0.5"]),
        ("ade20k", "a", []),
        ("voc21", "v", ["--protocol", "open", "--tau-search", "test-oracle", "--tau-grid", "0.3,0.6"]),
    ]:
        out = tmp_path / f"run{len(runs)}"
        assert (
            main(
                ["eval", "--dataset", name, "--root", str(tmp_path / root), "--out", str(out), *extra, *FAKE]
            )
            == 0
        )
        runs.append(str(out))
    capsys.readouterr()
    assert main(["report", *runs, "--out", str(tmp_path / "rep")]) == 0
    printed = capsys.readouterr().out
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md in printed
    lines = md.splitlines()
    assert lines[0] == "| Method | Model | Protocol | VOC21 | ADE20K | Avg. |"
    m0 = json.loads((Path(runs[0]) / "metrics.json").read_text())
    avg = (100 * m0["mIoU"] + 100.0) / 2
    assert f"| fake | color-key | oracle-tags, τ fixed | {100 * m0['mIoU']:.1f} | 100.0 | {avg:.1f} |" in md
    assert (
        f"| fake | color-key | open, τ test-sweep† | {100 * json.loads((Path(runs[2]) / 'metrics.json').read_text())['mIoU']:.1f}† | – | – |"
        in md
    )
    assert "oracle" in md
    png = Image.open(tmp_path / "rep" / "report.png")
    assert png.format == "PNG" and png.width >= 3 * 300 and png.height > 150 * 10
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_attnseg_command_has_eval_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = pytest.importorskip("attnseg.cli")
    L.build("voc20", tmp_path / "d", n=2)
    assert (
        cli.main(
            ["eval", "--dataset", "voc20", "--root", str(tmp_path / "d"), "--out", str(tmp_path / "r"), *FAKE]
        )
        == 0
    )
    assert cli.main(["report", str(tmp_path / "r"), "--out", str(tmp_path / "rep")]) == 0
    assert "| VOC20 |" in capsys.readouterr().out
    assert (
        cli.main(
            [
                "eval",
                "--dataset",
                "voc20",
                "--root",
                str(tmp_path / "nothing"),
                "--out",
                str(tmp_path / "x"),
                *FAKE,
            ]
        )
        == 2
    )


def test_every_eval_flag_reaches_its_config_field() -> None:
    import argparse
    from dataclasses import fields

    from attnseg.eval.cli import add_eval_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    argv = [
        "--dataset",
        "ade20k",
        "--root",
        "r",
        "--out",
        "o",
        "--split",
        "training",
        "--model",
        "world-s",
        "--method",
        "vanilla",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--set",
        "refine_steps=3",
        "--timestep",
        "200",
        "--template",
        "a photo of {}",
        "--allow-pickle",
        "--config",
        "cfg",
        "--segmentor",
        "m:f",
        "--segmentor-arg",
        "k=2",
        "--protocol",
        "open",
        "--tau",
        "0.4",
        "--tau-search",
        "heldout",
        "--tau-split",
        "val",
        "--tau-root",
        "t",
        "--tau-images",
        "7",
        "--tau-grid",
        "0.3,0.5",
        "--no-background",
        "tau",
        "--classes-per-prompt",
        "3",
        "--no-synonyms",
        "--seed",
        "5",
        "--limit",
        "9",
        "--batch-size",
        "2",
        "--no-progress",
        "--presence",
        "off",
    ]
    config = config_from_args(parser.parse_args(argv), ["attnseg", "eval"])
    defaults = EvalConfig(dataset="ade20k", root="r", out="o")
    # Every field but the command line is a flag, and the argv above moves each one off its default.
    unchanged = [f.name for f in fields(EvalConfig) if getattr(config, f.name) == getattr(defaults, f.name)]
    assert unchanged == ["dataset", "root", "out"]
    assert config.overrides == (("refine_steps", 3),) and config.segmentor_args == (("k", 2),)
    assert config.timestep == 200
    assert config.tau_grid == (0.3, 0.5) and config.synonyms is False and config.progress is False
    assert config.command == ("attnseg", "eval")


def test_report_gives_every_run_its_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """issue 12: two runs of one method on one data set were one row (the last won) while report.png had both."""
    L.build("voc21", tmp_path / "voc", n=3)
    L.build("ade20k", tmp_path / "ade", n=3)
    runs = {}
    for name, root, noise in [("a", "voc", "0"), ("b", "voc", "0.4"), ("c", "ade", "0")]:
        out = tmp_path / name
        dataset = "voc21" if root == "voc" else "ade20k"
        args = [
            "eval",
            "--dataset",
            dataset,
            "--root",
            str(tmp_path / root),
            "--out",
            str(out),
            "--tau",
            "0.5",
        ]
        assert main([*args, *FAKE, "--segmentor-arg", f"noise={noise}"]) == 0
        runs[name] = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    folders = [str(tmp_path / n) for n in "abc"]
    assert main(["report", *folders, "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    lines = md.splitlines()
    assert lines[0] == "| Method | Model | Protocol | Run | VOC21 | ADE20K | Avg. |"
    a, b = (f"{100 * runs[n]['mIoU']:.1f}" for n in "ab")
    assert a != b
    proto = "| fake | color-key | oracle-tags, τ fixed |"
    assert f"{proto} {folders[0]}, {folders[2]} | {a} | 100.0 |" in md  # a and c share a row: other data sets
    assert f"{proto} {folders[1]} | {b} | – | – |" in md  # b would take a's cell: a row of its own
    assert sum(line.startswith("| fake") for line in lines) == 2


def test_report_on_a_folder_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    assert main(["report", str(tmp_path / "photos"), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert "is not an attnseg eval run" in err and "has not finished" not in err and "Traceback" not in err
    assert main(["report", str(tmp_path / "photos" / "cat.jpg")]) == 2
    assert "is a file" in capsys.readouterr().err
    # a real run folder without metrics.json has not finished
    L.build("voc20", tmp_path / "d", n=2)
    run = tmp_path / "run"
    assert main(["eval", "--dataset", "voc20", "--root", str(tmp_path / "d"), "--out", str(run), *FAKE]) == 0
    (run / "metrics.json").unlink()
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 2
    assert "has not finished" in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()
