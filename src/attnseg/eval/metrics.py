"""Confusion matrices in 64-bit integers and the scores papers report from them (mIoU, pixel accuracy).

A matrix for a data set of C classes is (C+1)×(C+1): rows are ground truth, columns predictions, and the
extra last index is *void*: a pixel left unassigned (below τ on a data set without a background class).
Void is never a ground-truth class; a void prediction counts as a miss of the pixel's true class.

`ConfusionMeter` is the one place IoU is computed (eval, the world study, tune, the demo, the benchmarks).
Its class rule, as mmsegmentation's IoUMetric and torchmetrics' JaccardIndex: a class counts toward mIoU when
its union over the whole set is non-empty, i.e. it occurs in the ground truth or in the predictions of some
image; a class absent from both has no IoU (NaN) and is left out of the mean. A class predicted but never in
the ground truth therefore scores 0 and pulls the mean down, as it should.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from attnseg.labelmaps import IGNORE_INDEX


def confusion(gt_hw: torch.Tensor, pred_hw: torch.Tensor, n: int) -> torch.Tensor:
    """n×n int64 counts of (ground truth, prediction) over the pixels whose ground truth is not IGNORE_INDEX."""
    if gt_hw.shape != pred_hw.shape:
        raise ValueError(
            f"ground truth {tuple(gt_hw.shape)} and prediction {tuple(pred_hw.shape)} differ in size"
        )
    gt = gt_hw.reshape(-1).to(torch.int64)
    pred = pred_hw.reshape(-1).to(device=gt.device, dtype=torch.int64)
    valid = gt != IGNORE_INDEX
    idx = gt[valid] * n + pred[valid]
    return torch.bincount(idx, minlength=n * n).reshape(n, n).cpu()


def grid_confusions(
    gt_hw: torch.Tensor,
    best_score_hw: torch.Tensor,
    best_id_hw: torch.Tensor,
    grid: Sequence[float],
    fill: int,
    n: int,
) -> torch.Tensor:
    """G×n×n int64 confusions of the labels `best_id if best_score > τ else fill`, for every τ of a grid.

    One histogram over (gt, best_id, number of grid values below the score) gives all G matrices at once.
    """
    g_count = len(grid)
    taus = torch.tensor(sorted(grid), dtype=best_score_hw.dtype, device=best_score_hw.device)
    if list(grid) != sorted(grid):
        raise ValueError("the τ grid must be sorted")
    gt = gt_hw.reshape(-1).to(torch.int64)
    valid = gt != IGNORE_INDEX
    g = gt[valid]
    p = best_id_hw.reshape(-1).to(device=gt.device, dtype=torch.int64)[valid]
    s = best_score_hw.reshape(-1).to(gt.device)[valid].contiguous()
    below = torch.searchsorted(
        taus.to(gt.device), s
    )  # how many τ are < s: the pixel is foreground for τ_j, j < below
    hist = torch.bincount((g * n + p) * (g_count + 1) + below, minlength=n * n * (g_count + 1))
    hist = hist.reshape(n, n, g_count + 1).cpu()
    # fg[j] = pixels with below > j = suffix sums over the last axis, shifted by one
    suffix = hist.flip(-1).cumsum(-1).flip(-1)  # suffix[..., b] = sum over below >= b
    fg = suffix[..., 1:].permute(2, 0, 1).contiguous()  # G×n×n
    bg_rows = hist.sum(1).cumsum(-1)[:, :g_count].T  # G×n: per gt row, pixels with below <= j
    fg[:, :, fill] += bg_rows
    return fg


def sparse(mat: torch.Tensor) -> list[int]:
    """A confusion matrix as a flat list [row, col, count, ...] of its non-zero cells."""
    nz = mat.nonzero()
    vals = mat[nz[:, 0], nz[:, 1]]
    return torch.stack([nz[:, 0], nz[:, 1], vals], 1).reshape(-1).tolist()


def dense(flat: Sequence[int], n: int) -> torch.Tensor:
    """The n×n int64 matrix of a sparse list made by `sparse`."""
    mat = torch.zeros(n, n, dtype=torch.int64)
    if flat:
        t = torch.tensor(flat, dtype=torch.int64).reshape(-1, 3)
        mat.index_put_((t[:, 0], t[:, 1]), t[:, 2], accumulate=True)
    return mat


def _none_if_nan(x: float) -> float | None:
    """JSON has no NaN: an undefined score is null."""
    return None if math.isnan(x) else x


def _nanmean(values: Sequence[float]) -> float:
    """The mean of the values that are not NaN (NaN when none is)."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


@dataclass(frozen=True)
class SegScores:
    """What a confusion matrix says: per-class IoU and recall, their means, pixel accuracy; NaN = undefined."""

    iou: tuple[float, ...]  # per class, NaN where the class is in neither ground truth nor prediction
    accuracy: tuple[float, ...]  # per class recall, NaN where the class has no ground-truth pixel
    miou: float
    mean_accuracy: float
    pixel_accuracy: float  # void predictions count as wrong
    classes_scored: int
    pixels: int
    void_pixels: int
    kind_iou: dict[str, float] = field(default_factory=dict)  # mean IoU per class kind ("stuff", "thing")

    def to_json(self) -> dict[str, Any]:
        """The scores with NaN as None, for metrics.json."""
        return {
            "mIoU": _none_if_nan(self.miou),
            "iou": [_none_if_nan(v) for v in self.iou],
            "pixel_accuracy": _none_if_nan(self.pixel_accuracy),
            "mean_accuracy": _none_if_nan(self.mean_accuracy),
            "classes_scored": self.classes_scored,
            "pixels": self.pixels,
            "kind_iou": {k: _none_if_nan(v) for k, v in self.kind_iou.items()},
        }


class ConfusionMeter:
    """An int64 (C+1)×(C+1) confusion matrix that accumulates images and merges across processes.

    The shape of torchmetrics' metrics: `update(pred, gt)` per image, `merge` / `all_reduce` to combine
    meters, `compute()` for the scores. Predictions are eval ids 0..C-1 or C for void; ground truth is eval
    ids with IGNORE_INDEX skipped. `kinds` (one per class, e.g. "stuff" / "thing") adds a mean IoU per kind.
    """

    def __init__(self, num_classes: int, kinds: Sequence[str | None] | None = None) -> None:
        """An empty meter for C classes (plus the void column)."""
        if kinds is not None and len(kinds) != num_classes:
            raise ValueError(f"{len(kinds)} class kinds for {num_classes} classes")
        self.num_classes = num_classes
        self.kinds = tuple(kinds) if kinds is not None else None
        self.mat = torch.zeros(num_classes + 1, num_classes + 1, dtype=torch.int64)

    @classmethod
    def from_matrix(cls, mat: torch.Tensor, kinds: Sequence[str | None] | None = None) -> ConfusionMeter:
        """A meter holding a (C+1)×(C+1) matrix already counted."""
        meter = cls(mat.shape[0] - 1, kinds)
        meter.add_matrix(mat)
        return meter

    def update(self, pred_hw: torch.Tensor, gt_hw: torch.Tensor) -> None:
        """Count one image (or any batch of pixels): predictions and ground truth of the same shape."""
        pred = torch.as_tensor(pred_hw)
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) > self.num_classes):
            raise ValueError(f"predictions must be eval ids 0..{self.num_classes} (the last is void)")
        self.mat += confusion(torch.as_tensor(gt_hw), pred, self.num_classes + 1)

    def add_matrix(self, mat: torch.Tensor) -> None:
        """Add counts of a matrix of the same size (a stored per-image record)."""
        if tuple(mat.shape) != tuple(self.mat.shape):
            raise ValueError(f"a {tuple(mat.shape)} matrix cannot join a {tuple(self.mat.shape)} meter")
        self.mat += mat.to(torch.int64).cpu()

    def merge(self, other: ConfusionMeter) -> ConfusionMeter:
        """Add another meter's counts to this one; returns self."""
        self.add_matrix(other.mat)
        return self

    def all_reduce(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> ConfusionMeter:
        """Sum the counts over processes (`reduce`, or torch.distributed's all_reduce when a group is up)."""
        if reduce is not None:
            self.mat = reduce(self.mat).to(torch.int64).cpu()
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            buf = self.mat.clone()
            torch.distributed.all_reduce(buf)
            self.mat = buf
        return self

    def compute(self) -> SegScores:
        """Per-class IoU and the means over the classes the class rule (module docstring) counts."""
        m = self.mat.to(torch.float64)
        c = self.num_classes
        tp = m.diagonal()[:c]
        gt = m[:c].sum(1)
        pred = m[:, :c].sum(0)
        union = gt + pred - tp
        nan = torch.full_like(tp, float("nan"))
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan).tolist()
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan).tolist()
        total = int(gt.sum())
        kind_iou = {}
        if self.kinds is not None:
            for kind in dict.fromkeys(k for k in self.kinds if k is not None):
                kind_iou[kind] = _nanmean([v for v, k in zip(iou, self.kinds) if k == kind])
        return SegScores(
            iou=tuple(iou),
            accuracy=tuple(acc),
            miou=_nanmean(iou),
            mean_accuracy=_nanmean(acc),
            pixel_accuracy=float(tp.sum()) / total if total else float("nan"),
            classes_scored=sum(not math.isnan(v) for v in iou),
            pixels=total,
            void_pixels=int(self.mat[:c, c].sum()),
            kind_iou=kind_iou,
        )
