"""Confusion matrices and scores: hand-computed cases, the τ-grid shortcut, and torchmetrics as a cross-check."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from attnseg.eval import metrics as M
from attnseg.eval.protocols import assign_labels, best_class, predict


def test_confusion_counts_int64_and_skips_ignore() -> None:
    gt = torch.tensor([[0, 1, 1], [2, 255, 2]])
    pred = torch.tensor([[0, 1, 2], [2, 0, 3]])  # 3 = void for C = 3
    mat = M.confusion(gt, pred, 4)
    assert mat.dtype == torch.int64
    expected = torch.zeros(4, 4, dtype=torch.int64)
    for g, p in [(0, 0), (1, 1), (1, 2), (2, 2), (2, 3)]:
        expected[g, p] += 1
    assert torch.equal(mat, expected)


def test_scores_hand_computed() -> None:
    # C = 3 plus void (index 3). Rows GT, columns prediction.
    # GT 0: 2 right, 1 predicted as class 1, 1 left void. GT 1: 1 right. Class 2: absent everywhere -> NaN.
    mat = torch.tensor([[2, 1, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    s = M.ConfusionMeter.from_matrix(mat).compute().to_json()
    assert s["iou"][0] == pytest.approx(2 / 4)  # tp 2, gt 4, pred 2
    assert s["iou"][1] == pytest.approx(1 / 2)  # tp 1, gt 1, pred 2
    assert s["iou"][2] is None
    assert s["mIoU"] == pytest.approx((2 / 4 + 1 / 2) / 2)
    assert s["pixel_accuracy"] == pytest.approx(3 / 5)  # the void pixel counts as wrong
    assert s["mean_accuracy"] == pytest.approx((2 / 4 + 1) / 2)
    assert s["classes_scored"] == 2 and s["pixels"] == 5


def test_scores_empty_matrix_is_undefined_not_zero() -> None:
    s = M.ConfusionMeter(2).compute()
    assert math.isnan(s.miou) and math.isnan(s.pixel_accuracy) and s.to_json()["iou"] == [None, None]
    assert s.to_json()["mIoU"] is None


def test_class_rule_counts_a_class_predicted_but_never_in_the_truth() -> None:
    """mmseg's and torchmetrics' rule: a class in the truth or the predictions of the set counts; 0 if only predicted."""
    meter = M.ConfusionMeter(3)
    meter.update(torch.tensor([[0, 0, 2, 2]]), torch.tensor([[0, 0, 1, 1]]))  # class 2 never in the truth
    s = meter.compute()
    assert s.iou[0] == 1.0 and s.iou[1] == 0.0 and s.iou[2] == 0.0
    assert s.miou == pytest.approx(1 / 3) and s.classes_scored == 3
    absent = M.ConfusionMeter(3)
    absent.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))  # class 2 in neither: left out
    assert absent.compute().miou == 1.0 and math.isnan(absent.compute().iou[2])


def test_meter_update_merge_and_all_reduce_equal_one_meter() -> None:
    g = torch.Generator().manual_seed(3)
    c = 5
    gts = [torch.randint(0, c, (6, 7), generator=g) for _ in range(4)]
    preds = [torch.randint(0, c + 1, (6, 7), generator=g) for _ in range(4)]  # c = void
    gts[0][0] = 255
    whole = M.ConfusionMeter(c)
    for p, t in zip(preds, gts):
        whole.update(p, t)
    a, b = M.ConfusionMeter(c), M.ConfusionMeter(c)
    for p, t in zip(preds[:2], gts[:2]):
        a.update(p, t)
    for p, t in zip(preds[2:], gts[2:]):
        b.update(p, t)
    assert torch.equal(a.merge(b).mat, whole.mat) and whole.mat.dtype == torch.int64
    assert int(whole.mat.sum()) == 4 * 42 - 7  # the ignored row is not counted
    # all_reduce sums over processes; here a stand-in reduce that adds a second process's counts
    doubled = M.ConfusionMeter.from_matrix(whole.mat.clone()).all_reduce(lambda t: t + whole.mat)
    assert torch.equal(doubled.mat, 2 * whole.mat)
    assert doubled.compute().iou == pytest.approx(whole.compute().iou, nan_ok=True)
    with pytest.raises(ValueError, match="eval ids 0..5"):
        whole.update(torch.full((2, 2), 6), torch.zeros(2, 2, dtype=torch.int64))


def test_kind_means_average_the_classes_of_each_kind() -> None:
    mat = torch.zeros(5, 5, dtype=torch.int64)
    mat[0, 0], mat[1, 1], mat[1, 0], mat[2, 2], mat[3, 2] = 3, 1, 1, 2, 2  # class 3 never predicted
    s = M.ConfusionMeter.from_matrix(mat, ["stuff", "stuff", "thing", "thing"]).compute()
    assert s.iou == pytest.approx((3 / 4, 1 / 2, 2 / 4, 0.0))
    assert s.kind_iou == pytest.approx({"stuff": (3 / 4 + 1 / 2) / 2, "thing": 0.25})


def test_sparse_roundtrip() -> None:
    mat = torch.zeros(6, 6, dtype=torch.int64)
    mat[0, 0], mat[3, 5], mat[5, 1] = 10**12, 3, 7  # counts beyond 32 bits survive
    assert torch.equal(M.dense(M.sparse(mat), 6), mat)
    assert M.dense([], 6).sum() == 0


@pytest.mark.parametrize("fill", [0, 4])
def test_grid_confusions_equal_thresholding_each_tau(fill: int) -> None:
    g = torch.Generator().manual_seed(0)
    k, h, w, c = 3, 17, 23, 4
    scores = torch.rand(k, h, w, generator=g)
    scores[:, :2] = 0.5  # exact ties with a grid value
    ids = [1, 2, 3]
    gt = torch.randint(0, c, (h, w), generator=g)
    gt[0, :5] = 255
    grid = (0.1, 0.25, 0.5, 0.75, 0.9)
    best, bid = best_class(scores, ids)
    got = M.grid_confusions(gt, best, bid, grid, fill, c + 1)
    for j, tau in enumerate(grid):
        want = M.confusion(gt, predict(scores, ids, tau, fill), c + 1)
        assert torch.equal(got[j], want), tau


def test_predict_uses_the_core_rule() -> None:
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(4, 9, 9, generator=g)
    labels = assign_labels(scores, 0.6)
    bg = torch.full_like(scores[:1], 0.6)
    assert torch.equal(labels, torch.cat([bg, scores]).argmax(0))
    ids = [3, 5, 7, 9]
    pred = predict(scores, ids, 0.6, 0)
    lut = torch.tensor([0, *ids])
    assert torch.equal(pred, lut[labels])


def test_matches_torchmetrics() -> None:
    tm = pytest.importorskip("torchmetrics.functional.classification")
    g = torch.Generator().manual_seed(2)
    c = 6
    gt = torch.randint(0, c, (4, 40, 50), generator=g)
    gt[:, :3] = 255
    pred = torch.randint(0, c, (4, 40, 50), generator=g)
    pred[gt == 2] = 2  # some structure
    mat = sum(M.confusion(gt[i], pred[i], c + 1) for i in range(4))
    ref = tm.multiclass_confusion_matrix(pred.reshape(-1), gt.reshape(-1), num_classes=c, ignore_index=255)
    assert torch.equal(mat[:c, :c], ref.to(torch.int64))
    ours = M.ConfusionMeter.from_matrix(mat).compute().to_json()
    iou = tm.multiclass_jaccard_index(
        pred.reshape(-1), gt.reshape(-1), num_classes=c, ignore_index=255, average=None
    )
    for a, b in zip(ours["iou"], iou.tolist()):
        assert a == pytest.approx(b, abs=1e-6)
    acc = tm.multiclass_accuracy(
        pred.reshape(-1), gt.reshape(-1), num_classes=c, ignore_index=255, average="micro"
    )
    assert ours["pixel_accuracy"] == pytest.approx(float(acc), abs=1e-6)
    assert not math.isnan(ours["mIoU"])
    macro = tm.multiclass_jaccard_index(
        pred.reshape(-1), gt.reshape(-1), num_classes=c, ignore_index=255, average="macro"
    )
    assert ours["mIoU"] == pytest.approx(float(macro), abs=1e-6)


def test_ignore_index_is_defined_once() -> None:
    src = Path(M.__file__).resolve().parents[1]
    defined = [p.name for p in src.rglob("*.py") if re.search(r"^IGNORE_INDEX\s*=", p.read_text(), re.M)]
    assert defined == ["labelmaps.py"]
