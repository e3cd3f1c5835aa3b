"""Presence in evaluation: which segmentor setting a protocol uses, and precision / recall of its decisions."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from attnseg.eval import metrics as M
from attnseg.eval.records import ImageRecord


def presence_mode(presence: str | None, protocol: str) -> str:
    """The segmentor's presence setting: as given, else on for the open protocol and off for oracle tags."""
    if presence is not None:
        return presence
    return "on" if protocol == "open" else "off"  # with oracle tags every named class is present already


def presence_record(meta: dict | None, chunk: Sequence[int], acc: dict[str, Any]) -> dict[str, Any]:
    """Add one segment call's decisions (its classes are the eval ids `chunk`) to an image's record fields."""
    presence = (meta or {}).get("presence", {})
    classes = presence.get("classes")
    if not classes:
        return acc
    decided = [bool(v["present"]) for v in classes.values()]  # in the order the classes were named
    out = {"present": list(acc.get("present", [])), "presence_scores": dict(acc.get("presence_scores", {}))}
    for eval_id, value, keep in zip(chunk, classes.values(), decided):
        if keep:
            out["present"].append(int(eval_id))
        out["presence_scores"][str(eval_id)] = round(float(value["score"]), 6)
    return out


@dataclass
class PresenceCounts:
    """Per eval id: images where it was prompted and present (tp), judged present wrongly (fp), dropped (fn)."""

    tp: torch.Tensor
    fp: torch.Tensor
    fn: torch.Tensor
    images: torch.Tensor  # 1 element: images whose record carries decisions
    clean: torch.Tensor  # 1 element: of those, images with no class judged present that is not there
    exact: torch.Tensor  # 1 element: images whose found classes are exactly the ones there

    @classmethod
    def zeros(cls, n: int) -> PresenceCounts:
        """Empty counts for n eval ids (void included, never counted)."""
        z = lambda size=n: torch.zeros(size, dtype=torch.int64)  # noqa: E731
        return cls(z(), z(), z(), z(1), z(1), z(1))

    def add(self, rec: ImageRecord, n: int) -> None:
        """Count one record's decisions against its ground truth (the classes with pixels in its confusion)."""
        if rec.present is None:
            return
        cells = rec.conf or (rec.grid or [None])[0]
        if cells is None:
            return
        truth = M.dense(cells, n)[: n - 1].sum(1) > 0
        said = set(rec.present)
        wrong = missed = 0
        for eval_id in rec.ids:
            yes, real = eval_id in said, bool(truth[eval_id])
            self.tp[eval_id] += yes and real
            self.fp[eval_id] += yes and not real
            self.fn[eval_id] += real and not yes
            wrong, missed = wrong + (yes and not real), missed + (real and not yes)
        self.images += 1
        self.clean += wrong == 0
        self.exact += wrong == 0 and missed == 0

    def all_reduce(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> PresenceCounts:
        """The counts summed over processes."""
        parts = (self.tp, self.fp, self.fn, self.images, self.clean, self.exact)
        return PresenceCounts(*(reduce(t) for t in parts))

    def describe_protocol(self, protocol: dict[str, Any]) -> dict[str, Any]:
        """The protocol record with whether a presence step decided the classes (so metrics.json says so)."""
        on = int(self.images) > 0
        text = protocol["description"]
        if on:
            text += "; a presence step (denoising-error test) kept only the prompted classes it found in each image"
        return protocol | {"presence": "on" if on else "off", "description": text}

    def summary(self, names: Sequence[str], ids: Iterable[int]) -> dict[str, Any] | None:
        """Precision, recall and F1 over (image, class) pairs, overall and per class, and the images labelled
        with no absent class (clean) and with exactly their classes (exact); None without decisions."""
        if int(self.images) == 0:
            return None
        per_class = {}
        for i in ids:
            tp, fp, fn = int(self.tp[i]), int(self.fp[i]), int(self.fn[i])
            if tp + fp + fn:
                per_class[names[i]] = _prf(tp, fp, fn)
        total = _prf(int(self.tp.sum()), int(self.fp.sum()), int(self.fn.sum()))
        images = {
            "images": int(self.images),
            "clean_images": int(self.clean),
            "exact_images": int(self.exact),
        }
        return {**images, **total, "per_class": per_class}


def _prf(tp: int, fp: int, fn: int) -> dict[str, Any]:
    """Precision, recall, F1 and the share of present classes dropped, with the counts."""
    p = tp / (tp + fp) if tp + fp else None
    r = tp / (tp + fn) if tp + fn else None
    f1 = 2 * p * r / (p + r) if p and r else (0.0 if p is not None and r is not None else None)
    return {
        "precision": p,
        "recall": r,
        "f1": f1,
        "dropped": None if r is None else 1 - r,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }
