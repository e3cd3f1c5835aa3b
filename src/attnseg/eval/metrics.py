"""Confusion matrices in 64-bit integers and the scores papers report from them (mIoU, pixel accuracy).

A matrix for a data set of C classes is (C+1)×(C+1): rows are ground truth, columns predictions, and the
extra last index is *void*: a pixel left unassigned (below τ on a data set without a background class).
Void is never a ground-truth class; a void prediction counts as a miss of the pixel's true class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

IGNORE_INDEX = 255


def confusion(gt_hw: torch.Tensor, pred_hw: torch.Tensor, n: int) -> torch.Tensor:
    """n×n int64 counts of (ground truth, prediction) over the pixels whose ground truth is not 255."""
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


def _nan_to_none(x: float) -> float | None:
    """JSON has no NaN: an undefined score is null."""
    return None if math.isnan(x) else x


def scores(mat: torch.Tensor, num_classes: int) -> dict[str, object]:
    """mIoU, per-class IoU, pixel and mean accuracy of a (C+1)×(C+1) confusion matrix.

    A class whose union is empty (absent from ground truth and prediction) has IoU NaN and is left out of the
    mean, as mmsegmentation does. Pixel accuracy counts void predictions as wrong.
    """
    m = mat.to(torch.float64)
    c = num_classes
    tp = m.diagonal()[:c]
    gt = m[:c].sum(1)
    pred = m[:, :c].sum(0)
    union = gt + pred - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
    total = gt.sum()
    valid = ~torch.isnan(iou)
    return {
        "mIoU": _nan_to_none(float(iou[valid].mean())) if valid.any() else None,
        "iou": [_nan_to_none(float(v)) for v in iou],
        "pixel_accuracy": _nan_to_none(float(tp.sum() / total)) if total > 0 else None,
        "mean_accuracy": _nan_to_none(float(acc[~torch.isnan(acc)].mean()))
        if (~torch.isnan(acc)).any()
        else None,
        "classes_scored": int(valid.sum()),
        "pixels": int(total),
    }


def miou(mat: torch.Tensor, num_classes: int) -> float:
    """The mean IoU of a confusion matrix (NaN when no class has a non-empty union)."""
    v = scores(mat, num_classes)["mIoU"]
    return float("nan") if v is None else float(v)
