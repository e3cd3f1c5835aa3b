"""Hostile inputs: each bad command ends in exit 2 and one line that names the problem, with no traceback,
and leaves the user's files byte-identical; no command that writes deletes or replaces what it did not write."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnseg.cli import main

LONG_CLASS = "a" * 500


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its kind, permission bits and (for files) bytes."""
    out = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        content = path.read_bytes() if stat.S_ISREG(mode) else None
        out[path.relative_to(root).as_posix()] = (stat.S_IFMT(mode), stat.S_IMODE(mode), content)
    return out


def run(args: list[str], capsys) -> tuple[int, str, str]:
    """The CLI in-process: exit code, stdout, stderr."""
    try:
        rc = main(args)
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.fixture
def user_tree(tmp_path, monkeypatch):
    """A folder as a user has it: photos, notes, a file and a folder named like attnseg's outputs."""
    monkeypatch.chdir(tmp_path)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    (tmp_path / "photos").mkdir()
    image.save(tmp_path / "photos" / "good.png")
    (tmp_path / "photos" / "notes.txt").write_text("my notes\n")
    (tmp_path / "home_like" / "good").mkdir(parents=True)
    (tmp_path / "home_like" / "good" / "keep.txt").write_text("do not lose me\n")
    (tmp_path / "afile.txt").write_text("a file, not a folder\n")
    (tmp_path / "report.md").write_text("# my own report\n")
    return tmp_path


SEGMENT = ["segment", "photos/good.png", "--classes", "sky,grass"]
HOSTILE = [
    # output places that cannot or must not be written
    (SEGMENT + ["--out", "afile.txt"], r"afile\.txt is an existing file"),
    (SEGMENT + ["--out", "home_like"], r"home_like/good .*attnseg did not write \(keep\.txt\)"),
    (SEGMENT + ["--out", "afile.txt/sub"], r"inside afile\.txt, which is a file"),
    (SEGMENT + ["--out", "x" * 300], r"--out has a name of 300 bytes .* allow 255"),
    (["world", "render", "--n", "2", "--out", "photos"], r"photos .*attnseg did not write"),
    (
        ["world", "render", "--n", "2", "--out", "."],
        r"\. \(.*\) already exists and holds files attnseg did not write",
    ),
    (["world", "render", "--n", "2", "--out", "afile.txt"], r"is an existing file"),
    (["world", "render", "--n", "2", "--size", "100000", "--out", "w"], r"--size must lie in 16–1024"),
    (["world", "render", "--n", "0", "--out", "w"], r"--n must be at least 1"),
    (["demo", "--n", "0"], r"--n must be at least 1"),
    (["demo", "--n", "-2"], r"--n must be at least 1"),
    (["demo", "--out", "afile.txt"], r"is an existing file"),
    (["demo", "--out", "photos"], r"photos .*attnseg did not write"),
    (["report", "runs/a", "--out", "afile.txt"], r"is an existing file"),
    (["report", "runs/a"], r"report\.md already exist\(s\) and attnseg did not write it"),
    (["eval", "--dataset", "world", "--root", "w", "--out", "afile.txt"], r"is an existing file"),
    (["eval", "--dataset", "world", "--root", "w", "--out", "photos"], r"attnseg did not write"),
    (["serve", "--port", "99999"], r"--port 99999 is not a port"),
    (["serve", "--port", "-1"], r"--port -1 is not a port"),
    (["world", "train", "--out", "afile.txt"], r"is an existing file"),
    (["world", "train", "--out", "photos"], r"photos .*attnseg did not write"),
    (["world", "scaling", "--out", "afile.txt"], r"is an existing file"),
    (SEGMENT + ["--seed", "99999999999999999999999"], r"--seed: a seed lies in 0–"),
    (["world", "render", "--seed", "-1", "--out", "w"], r"--seed: a seed lies in 0–"),
    # settings, each read by its type
    (SEGMENT + ["--set", "blur=maybe"], r"blur takes true or false"),
    (SEGMENT + ["--set", "resolution_weights=abc"], r"resolution_weights takes a comma-separated list"),
    (SEGMENT + ["--set", "tau=abc"], r"tau takes a finite number"),
    (SEGMENT + ["--set", "refine_steps=abc"], r"refine_steps takes a whole number"),
    (SEGMENT + ["--set", "iseg_gamma=abc"], r"iseg_gamma takes a finite number"),
    (SEGMENT + ["--set", "propagation_layers=abc"], r"propagation_layers takes a count"),
    (SEGMENT + ["--set", "head_aggregation=best"], r"head_aggregation='best' is not one of"),
    (SEGMENT + ["--set", "colour=red"], r"unknown method setting 'colour'"),
    (SEGMENT + ["--set", "tau"], r"expected KEY=VALUE"),
    (SEGMENT + ["--tau", "1.5"], r"tau must lie in \[0, 1\]"),
    (SEGMENT + ["--template", "{} and {}"], r"has 2 '\{\}'; it needs exactly one"),
    (SEGMENT + ["--template", "a photo"], r"has 0 '\{\}'; it needs exactly one"),
    (SEGMENT + ["--device", "tpu"], r"--device 'tpu' is not a device"),
    (SEGMENT + ["--device", "meta"], r"--device 'meta' cannot run attnseg here"),
    (SEGMENT + ["--device", "cuda:7"], r"cuda"),
    (SEGMENT + ["--dtype", "float8"], r"unknown dtype 'float8'"),
    (SEGMENT + ["--batch-size", "0"], r"--batch-size: must be at least 1"),
    (SEGMENT + ["--max-pixels", "-5"], r"--max-pixels: must be at least 1"),
    (SEGMENT + ["--max-pixels", "100"], r"over the limit of 100"),
    # classes and images
    (
        ["segment", "photos/good.png", "--classes", "cat"],
        r"does not know the word\(s\) 'cat'.* knows \d+ words: .*circle",
    ),
    (["segment", "photos/good.png", "--classes", LONG_CLASS], r"does not know the word"),
    (["segment", "photos/good.png", "--classes", "sky,,grass"], r"class #2 .* is empty"),
    (["segment", "photos/good.png", "--classes", "sky,Sky"], r"appears twice"),
    (["segment", "photos/good.png", "--classes", "the"], r"has no content word"),
    (["segment", "photos/missing.png", "--classes", "sky"], r"does not exist"),
    (["segment", "photos/notes.txt", "--classes", "sky"], r"not an image PIL can read"),
    (["segment", "photos", "--classes", "sky"], r"is not a file"),
    (
        ["segment", "photos/good.png", "--classes", "sky", "--model", "no/such-model"],
        r"model 'no/such-model' not found",
    ),
    (["nonsense"], r"invalid choice: 'nonsense'"),
]


@pytest.mark.parametrize("args,message", HOSTILE, ids=[" ".join(a)[:60] for a, _ in HOSTILE])
def test_hostile_input_is_one_line_exit_2_and_changes_nothing(user_tree, capsys, args, message):
    (user_tree / "w").mkdir()  # a world root for eval's checks (empty: eval must not get that far)
    before = snapshot(user_tree)
    rc, _, err = run(args, capsys)
    assert rc == 2, err
    assert re.search(message, err), err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert snapshot(user_tree) == before


def test_a_long_class_on_a_bpe_model_says_it_is_too_long(user_tree, capsys, tiny_sd):
    before = snapshot(user_tree)
    rc, _, err = run(SEGMENT[:2] + ["--classes", " ".join(["wall"] * 100), "--model", str(tiny_sd)], capsys)
    assert rc == 2 and re.search(
        r"takes \d+ tokens, more than the text encoder's \d+; shorten it$", err.strip()
    )
    assert "background" not in err and "Token indices" not in err and len(err.strip().splitlines()) == 1
    assert snapshot(user_tree) == before


def test_read_only_and_immutable_out(user_tree, capsys):
    locked = user_tree / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)
    immutable = shutil.which("chattr") and os.geteuid() == 0
    if immutable and subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        immutable = False
    if os.geteuid() == 0 and not immutable:
        os.chmod(locked, 0o755)
        pytest.skip("root ignores permission bits and this file system has no immutable flag")
    try:
        before = snapshot(user_tree)
        for args in (SEGMENT + ["--out", "locked"], ["world", "render", "--n", "1", "--out", "locked/w"]):
            rc, _, err = run(args, capsys)
            assert rc == 2 and "cannot write into" in err and "locked" in err, err
            assert len(err.strip().splitlines()) == 1
        assert snapshot(user_tree) == before
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(locked)])
        os.chmod(locked, 0o755)


def test_busy_port_is_refused_before_the_model_loads(user_tree, capsys, monkeypatch):
    import attnseg.demo.web as web

    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded before the port was checked")

    monkeypatch.setattr(web, "DemoApp", no_model)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc, _, err = run(["serve", "--port", str(port)], capsys)
    assert rc == 2 and f"port {port} on 127.0.0.1 is already in use" in err
    rc, _, err = run(["serve", "--host", "no-such-host.invalid", "--port", "0"], capsys)
    assert rc == 2 and "is not an address of this machine" in err


def test_an_image_too_large_for_memory_is_refused_with_the_need(user_tree, capsys, monkeypatch):
    import attnseg.io as aio

    Image.new("RGB", (2000, 1500)).save(user_tree / "photos" / "big.png")
    monkeypatch.setattr(aio, "available_memory_bytes", lambda: 200 * 2**20)
    before = snapshot(user_tree)
    rc, _, err = run(["segment", "photos/big.png", "--classes", "sky,grass"], capsys)
    assert rc == 2 and re.search(r"big\.png is 2000×1500: .* needs about 0\.3 GiB .* downscale it", err), err
    assert snapshot(user_tree) == before


def test_no_traceback_and_no_library_noise_in_a_real_process(user_tree):
    """Subprocess checks: what a user's terminal shows, warnings of the libraries included."""
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    bad = subprocess.run(
        [sys.executable, "-m", "attnseg.cli", *SEGMENT, "--set", "tau=abc"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    good = subprocess.run(
        [sys.executable, "-m", "attnseg.cli", *SEGMENT, "--out", "o", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert good.returncode == 0, good.stderr
    assert good.stdout == "" and good.stderr == "", good.stderr  # no loading bars, no accelerate notice
    version = subprocess.run(
        [sys.executable, "-m", "attnseg.cli", "--version"], capture_output=True, text=True
    )
    assert version.stdout.startswith("attnseg ")


# --------------------------------------------------------------------------- data loss, per command


def test_segment_never_replaces_a_folder_it_did_not_write(user_tree, capsys):
    rc, _, err = run(SEGMENT + ["--out", "home_like", "--overwrite", "--quiet"], capsys)
    assert rc == 0, err
    folder = user_tree / "home_like" / "good"
    assert (folder / "keep.txt").read_text() == "do not lose me\n"  # written beside, never over
    assert {"labels.png", "overlay.png", "scores.npz", "result.json"} <= {p.name for p in folder.iterdir()}


def test_segment_replaces_its_own_output_and_keeps_files_added_since_only_when_asked(user_tree, capsys):
    assert run(SEGMENT + ["--out", "o", "--quiet"], capsys)[0] == 0
    assert run(SEGMENT + ["--out", "o", "--quiet"], capsys)[0] == 0  # its own: replaced, no question
    (user_tree / "o" / "good" / "mine.txt").write_text("added by the user\n")
    before = snapshot(user_tree)
    rc, _, err = run(SEGMENT + ["--out", "o", "--quiet"], capsys)
    assert rc == 2 and "mine.txt" in err and snapshot(user_tree) == before


def test_segment_removes_what_killed_runs_left_and_nothing_else(user_tree, capsys):
    out = user_tree / "o"
    out.mkdir()
    dead = out / ".good.attnseg-partial-999999999-abc123"  # a stage whose process is gone
    dead.mkdir()
    (dead / ".attnseg-stage").write_text("999999999\n")
    (dead / "labels.png").write_bytes(b"half")
    legacy = out / ".img13.k2j4h5g6"  # tempfile.mkdtemp's, from attnseg 0.1, of another image
    legacy.mkdir()
    (legacy / "labels.png").write_bytes(b"half")
    users = out / ".good.backup"
    users.mkdir()
    (users / "labels.png").write_bytes(b"the user's")
    old_umask = os.umask(0o022)
    try:
        assert run(SEGMENT + ["--out", "o", "--quiet"], capsys)[0] == 0
    finally:
        os.umask(old_umask)
    assert not dead.exists() and not legacy.exists()
    assert (users / "labels.png").read_bytes() == b"the user's"
    assert stat.S_IMODE((out / "good").stat().st_mode) == 0o755  # the umask's, not mkdtemp's 0700


def test_world_render_never_deletes_and_replaces_only_its_own_scenes(user_tree, capsys):
    rc, _, err = run(["world", "render", "--n", "1", "--out", "photos", "--overwrite"], capsys)
    assert rc == 0, err
    assert (user_tree / "photos" / "notes.txt").read_text() == "my notes\n"
    assert (user_tree / "photos" / "good.png").is_file() and (user_tree / "photos" / "index.jsonl").is_file()
    assert run(["world", "render", "--n", "3", "--out", "w3"], capsys)[0] == 0
    assert run(["world", "render", "--n", "1", "--out", "w3"], capsys)[0] == 0  # its own: replaced
    assert sorted(p.name for p in (user_tree / "w3" / "images").iterdir()) == ["000000.png"]


def test_demo_refuses_a_users_folder_and_replaces_its_own(user_tree, capsys):
    (user_tree / "mine").mkdir()
    (user_tree / "mine" / "summary.md").write_text("mine\n")
    before = snapshot(user_tree)
    rc, _, err = run(["demo", "--n", "1", "--out", "mine"], capsys)
    assert rc == 2 and "attnseg did not write (summary.md)" in err and snapshot(user_tree) == before
    for _ in range(2):
        rc, out, err = run(["demo", "--n", "1", "--out", "d"], capsys)
        assert rc == 0, err
    assert sorted(p.name for p in (user_tree / "d").iterdir()) == [
        ".attnseg-output.json",
        "demo.png",
        "scene_00.png",
        "summary.md",
    ]


def test_report_writes_beside_the_users_files_never_over_them(user_tree):
    from attnseg.errors import BadOutputError
    from attnseg.io import output_folder

    with output_folder(user_tree, replace=False) as stage:  # the writer report uses
        (stage / "report.png").write_bytes(b"png")
    assert (user_tree / "report.png").read_bytes() == b"png" and (user_tree / "afile.txt").is_file()
    with pytest.raises(BadOutputError, match="report.md already exist"):
        with output_folder(user_tree, replace=False) as stage:
            (stage / "report.md").write_text("new")
    assert (user_tree / "report.md").read_text() == "# my own report\n"


def test_world_train_and_export_refuse_a_users_folder(user_tree):
    from attnseg.errors import BadOutputError
    from attnseg.world.export import write_folder
    from attnseg.world.train import TrainConfig, render_in_memory, train_vae

    before = snapshot(user_tree)
    with pytest.raises(BadOutputError, match="attnseg did not write"):
        train_vae(
            TrainConfig(size="xs", out="photos", vae_steps=1, progress=False), render_in_memory("train", 2)
        )
    with pytest.raises(BadOutputError, match="attnseg did not write"):
        write_folder(user_tree / "home_like", None, None, None, user_tree, {})
    assert snapshot(user_tree) == before


def test_eval_resumes_its_own_run_folder_only(user_tree, capsys):
    from attnseg.io import check_output_folder

    run_dir = user_tree / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    check_output_folder(run_dir, recognise=lambda f: (f / "config.json").is_file(), offer_overwrite=False)
    with pytest.raises(Exception, match="a new or empty folder"):
        check_output_folder(user_tree / "photos", recognise=lambda f: False, offer_overwrite=False)


# --------------------------------------------------------------------------- said, not silently done


@pytest.mark.parametrize(
    "word,value", [("no", False), ("off", False), ("0", False), ("YES", True), ("on", True)]
)
def test_bool_settings_mean_what_they_say(user_tree, capsys, word, value):
    rc, _, err = run(SEGMENT + ["--out", "o", "--quiet", "--set", f"reference_channel0={word}"], capsys)
    assert rc == 0, err
    result = json.loads((user_tree / "o" / "good" / "result.json").read_text())
    assert result["settings"]["reference_channel0"] is value


def test_what_the_user_should_know_is_said_once(user_tree, capsys):
    frames = [Image.new("RGBA", (80, 60), (255, 0, 0, 0)), Image.new("RGBA", (80, 60), (0, 255, 0, 255))]
    frames[0].paste((0, 0, 255, 255), (0, 0, 40, 60))
    frames[0].save(user_tree / "photos" / "anim.gif", save_all=True, append_images=frames[1:])
    rc, out, err = run(["segment", "photos/anim.gif", "--classes", "sky", "--out", "o"], capsys)
    assert rc == 0, err
    assert "it has 2 frames; the first is segmented" in err
    assert "transparent" in err
    assert err.count("small model trained on synthetic scenes") == 1  # an 80×60 picture is not a world scene
    result = json.loads((user_tree / "o" / "anim" / "result.json").read_text())
    assert "synthetic scenes" in result["model"]["note"] and len(result["image_notes"]) == 2
    rc, out, err = run(SEGMENT + ["--out", "o", "--quiet"], capsys)
    assert rc == 0 and out == "" and err == ""


def test_help_shows_defaults_and_models_lists_the_words(capsys):
    flags = {"--help", "--quiet", "--overwrite", "--allow-pickle", "--plain-things", "--version"}
    required = {"--classes", "--out"}
    for args in (["segment", "-h"], ["serve", "-h"], ["demo", "-h"], ["world", "render", "-h"]):
        rc, out, _ = run(args, capsys)
        assert rc == 0
        options = out.split("options:", 1)[1]
        for block in re.split(r"\n(?=  -)", options):
            option = re.match(r"\s*(?:-\w, )?(--[a-z-]+)", block)
            if option and option.group(1) not in flags:
                assert "default" in block or option.group(1) in required, (args, block)
                assert len(block.split(None, 2)) > 2, (args, block)  # it has help text
    rc, out, _ = run(["models"], capsys)
    assert rc == 0 and "trained on the synthetic world" in out and "circle" in out


def test_demo_captions_wrap_instead_of_being_cut():
    from PIL import ImageFont

    from attnseg.demo.scenes import _wrap

    caption = (
        "a photo of a big orange heart next to the small blue star and the purple circle on the grass " * 2
    )
    lines = _wrap(caption, ImageFont.load_default(), 300)
    assert " ".join(lines) == " ".join(caption.split())
    assert all(ImageFont.load_default().getlength(line) <= 300 for line in lines)


def test_an_eval_that_failed_before_scoring_does_not_block_the_corrected_rerun(user_tree, capsys):
    assert run(["world", "render", "--split", "val", "--n", "2", "--out", "W"], capsys)[0] == 0
    eval_args = ["eval", "--dataset", "world", "--root", "W", "--out", "R", "--limit", "1", "--no-progress"]
    rc, _, err = run(eval_args + ["--model", "no-such-model"], capsys)
    assert rc == 2 and "not found" in err
    rc, out, err = run(eval_args, capsys)  # the corrected command: the empty run gives way
    assert rc == 0, err
    assert "mIoU" in out
    rc, _, err = run(
        eval_args + ["--method", "vanilla"], capsys
    )  # a scored run is kept, and says how to restart
    assert rc == 2 and "holds a run with other settings" in err and "remove R to start it again" in err
