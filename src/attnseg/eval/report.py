"""Reports over finished runs: a Markdown table in the layout papers use, and per-class IoU bars as PNG."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from attnseg.errors import BadConfigError
from attnseg.eval.datasets import DATASETS
from attnseg.io import output_folder

DATASET_ORDER = list(DATASETS)
# Data sets without a background (argmax, "none") share the row of their fixed-τ siblings, as in papers.
_TAU_LABEL = {"fixed": "τ fixed", "none": "τ fixed", "heldout": "τ held-out", "test-oracle": "τ test-sweep†"}


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """The metrics.json of a finished run, with the folder it came from."""
    folder = Path(run_dir)
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise BadConfigError(f"{run_dir} {what}; give the run folder an `attnseg eval --out` wrote")
    config = folder / "config.json"
    try:
        json.loads(config.read_text())["identity"]  # noqa: B018 - what every attnseg run folder has
    except (OSError, ValueError, KeyError, TypeError):
        raise BadConfigError(
            f"{run_dir} is not an attnseg eval run (no attnseg config.json in it); give the run folder an "
            "`attnseg eval --out` wrote"
        ) from None
    path = folder / "metrics.json"
    if not path.is_file():
        raise BadConfigError(
            f"{run_dir} has no metrics.json: the run has not finished; run the same attnseg eval command again to complete it"
        )
    try:
        m = json.loads(path.read_text())
        m["protocol"]["name"], m["dataset"]  # noqa: B018 - the fields a report needs
    except (ValueError, KeyError, TypeError):
        raise BadConfigError(f"{path} is not an attnseg eval metrics file") from None
    m["_run"] = str(run_dir)
    return m


def protocol_label(m: dict[str, Any]) -> str:
    """How a run's protocol reads in a table: 'oracle-tags, τ held-out'."""
    p = m["protocol"]
    mode = p.get("tau_mode", "none")
    name = f"{p['name']} + presence" if p.get("presence") == "on" else p["name"]
    return f"{name}, {_TAU_LABEL.get(mode, mode)}"


def _fmt(x: float | None) -> str:
    """A score in percent with one decimal, or a dash."""
    return "–" if x is None else f"{100 * x:.1f}"


def _rows(runs: Sequence[dict[str, Any]]) -> list[tuple[tuple[str, str, str], dict[str, dict[str, Any]]]]:
    """Runs grouped into table rows: one per method × model × protocol, and another wherever a cell is taken."""
    rows: list[tuple[tuple[str, str, str], dict[str, dict[str, Any]]]] = []
    for r in runs:
        key = (r.get("method", "?"), r.get("model", "?"), protocol_label(r))
        free = next((cells for k, cells in rows if k == key and r["dataset"] not in cells), None)
        if free is None:  # a second run of the same method, model, protocol and data set gets its own row
            free = {}
            rows.append((key, free))
        free[r["dataset"]] = r
    return rows


def table(runs: Sequence[dict[str, Any]]) -> str:
    """A Markdown table: rows method × model × protocol, columns data sets, cells mIoU (%).

    Every run has a cell: runs that would share one go to rows of their own, and a Run column (the run
    folders) tells those rows apart.
    """
    cols = [d for d in DATASET_ORDER if any(r["dataset"] == d for r in runs)]
    titles = {r["dataset"]: r.get("title", r["dataset"]) for r in runs}
    rows = _rows(runs)
    keys = [k for k, _ in rows]
    show_run = len(set(keys)) < len(keys)
    lines = [
        "| Method | Model | Protocol | "
        + ("Run | " if show_run else "")
        + " | ".join(titles[c] for c in cols)
        + (" | Avg. |" if len(cols) > 1 else " |"),
        "|---|---|---|" + ("---|" if show_run else "") + "---:|" * (len(cols) + (1 if len(cols) > 1 else 0)),
    ]
    for (method, model, proto), cells in rows:
        vals = []
        for c in cols:
            r = cells.get(c)
            mark = "†" if r is not None and r["protocol"].get("oracle_tau") else ""
            vals.append(_fmt(r["mIoU"] if r else None) + mark)
        run = ", ".join(cells[c]["_run"] for c in cols if c in cells)
        line = f"| {method} | {model} | {proto} | " + (f"{run} | " if show_run else "") + " | ".join(vals)
        if len(cols) > 1:
            got = [cells[c]["mIoU"] for c in cols if c in cells and cells[c]["mIoU"] is not None]
            line += " | " + (_fmt(sum(got) / len(got)) if len(got) == len(cols) else "–")
        lines.append(line + " |")
    notes = ["", "mIoU (%), per data set; Avg. over the data sets of the row when it has them all."]
    if any(r["protocol"].get("oracle_tags") for r in runs):
        notes.append(
            "oracle-tags: each image is prompted only with the classes present in its ground truth (an oracle, as in the paper)."
        )
    if any(r["protocol"]["name"] == "paper" for r in runs):
        notes.append(
            "paper: the reference code's protocol, an oracle: a caption per image matched to its ground-truth "
            "classes (missed ones appended), background = B + τ, τ swept on the scored images."
        )
    if any(r["protocol"]["name"] == "open" for r in runs):
        notes.append("open: each image is prompted with every class of the data set.")
    if any(r["protocol"].get("presence") == "on" for r in runs):
        notes.append(
            "+ presence: a presence step decided which prompted classes each image shows; absent ones got no pixels."
        )
    if any(r["protocol"].get("oracle_tau") for r in runs):
        notes.append("†: τ swept on the scored split itself (an oracle, for reproducing the paper only).")
    if any(r["protocol"].get("tau_mode") in ("fixed", "none") for r in runs):
        notes.append(
            "τ fixed: one background threshold for every image (no τ on data sets without a background class)."
        )
    if any(r["protocol"].get("tau_mode") == "heldout" for r in runs):
        notes.append("τ held-out: τ chosen on a split that is not scored.")
    return "\n".join(lines + notes) + "\n"


def presence_table(runs: Sequence[dict[str, Any]]) -> str:
    """Precision / recall of the presence decisions per class, one column pair per run that made them."""
    made = [r for r in runs if r.get("presence")]
    if not made:
        return ""
    names = list(dict.fromkeys(n for r in made for n in r["presence"]["per_class"]))
    head = " | ".join(f"{r.get('method', '?')} · {r.get('model', '?')} P / R" for r in made)
    lines = ["", "Presence decisions (precision / recall over images, %)", "", f"| Class | {head} |"]
    lines.append("|---|" + "---:|" * len(made))
    for name in [*names, None]:
        cells = []
        for r in made:
            c = r["presence"] if name is None else r["presence"]["per_class"].get(name, {})
            cells.append(f"{_fmt(c.get('precision'))} / {_fmt(c.get('recall'))}")
        lines.append(f"| {name or '**all**'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at a size (a bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def bars(runs: Sequence[dict[str, Any]]) -> Image.Image:
    """One panel per run: a horizontal bar per class, its IoU; classes with no pixels are marked n/a."""
    font, title_font = _font(11), _font(13)
    row_h, name_w, bar_w, val_w, pad = 14, 150, 220, 46, 10
    panel_w = pad + name_w + bar_w + val_w + pad
    panels = []
    for r in runs:
        per = list(r["per_class_iou"].items())
        h = 48 + row_h * len(per) + pad
        im = Image.new("RGB", (panel_w, h), "white")
        dr = ImageDraw.Draw(im)
        tau = "" if r.get("tau") is None else f"  (tau {r['tau']:g})"
        head = f"{Path(r['_run']).name}: {r.get('title', r['dataset'])}  mIoU {_fmt(r['mIoU'])}{tau}"
        dr.text((pad, 6), head, fill="black", font=title_font)
        dr.text(
            (pad, 24),
            f"{r.get('method', '?')} · {r.get('model', '?')} · {protocol_label(r)}".replace("τ", "tau")[:64],
            fill=(90, 90, 90),
            font=font,
        )
        for i, (name, iou) in enumerate(per):
            y = 46 + i * row_h
            dr.text((pad, y), name[:24], fill="black", font=font)
            x0 = pad + name_w
            dr.rectangle([x0, y + 2, x0 + bar_w, y + row_h - 3], outline=(220, 220, 220))
            if iou is None:
                dr.text((x0 + bar_w + 4, y), "n/a", fill=(150, 150, 150), font=font)
                continue
            dr.rectangle([x0, y + 2, x0 + max(1, round(bar_w * iou)), y + row_h - 3], fill=(66, 120, 200))
            dr.text((x0 + bar_w + 4, y), _fmt(iou), fill="black", font=font)
        panels.append(im)
    if not panels:
        raise BadConfigError("no runs to report")
    out = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels)), "white")
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width
    return out


def write_report(
    run_dirs: Sequence[str | Path], out_dir: str | Path, overwrite: bool = False
) -> tuple[str, Path, Path]:
    """Build the table and the bars for run folders; write report.md and report.png atomically."""
    if not run_dirs:
        raise BadConfigError("attnseg report needs at least one run folder")
    runs = [load_run(d) for d in run_dirs]
    md = table(runs) + presence_table(runs)
    out = Path(out_dir)
    with output_folder(out, overwrite, replace=False) as stage:  # beside what is there; never over the user's
        (stage / "report.md").write_text(md)
        bars(runs).save(stage / "report.png", format="PNG")
    return md, out / "report.md", out / "report.png"
