"""Post-processing ops and the choice on validation, against hand-made label maps."""

from __future__ import annotations

import numpy as np
import pytest

from medjax import errors
from medjax.plan import postprocessing as pp


def _blob(shape, box, value=1):
    a = np.zeros(shape, np.uint8)
    a[tuple(slice(lo, hi) for lo, hi in box)] = value
    return a


def test_component_ops_on_a_hand_made_map():
    m = np.zeros((6, 8), bool)
    m[0:3, 0:3] = True  # 9 voxels
    m[5, 7] = True  # 1 voxel
    m[4:6, 0:2] = True  # 4 voxels
    m[3, 3] = True  # touches the 9-block only diagonally: its own face component
    assert pp.keep_largest_component(m).sum() == 9
    assert pp.keep_largest_component(m)[0:3, 0:3].all()
    kept = pp.remove_small_components(m, 4)
    assert kept.sum() == 13 and not kept[5, 7] and not kept[3, 3]
    assert not pp.keep_largest_component(np.zeros((3, 3), bool)).any()
    labels = np.zeros((6, 8), np.uint8)
    labels[m] = 2
    labels[0, 7] = 1
    out = pp.apply(labels, {"classes": {"2": {"keep_largest": True, "min_size_voxels": 0}}})
    assert (out == 2).sum() == 9 and out[0, 7] == 1 and out[5, 7] == 0


def test_choice_takes_an_option_only_when_it_raises_dice():
    shape = (12, 12)
    # Class 1: one true blob of 16; predictions add a 1-voxel false positive -> keep-largest
    # (and the size cut) both give Dice 1; keep-largest is tried first and kept on a tie.
    truth1 = _blob(shape, [(0, 4), (0, 4)])
    pred1 = truth1.copy()
    pred1[10, 10] = 1
    # Class 2 (other cases): two true blobs of 9 and 4 -> keep-largest would lose one; the
    # cut below 10 % / 25 % / 50 % of the smallest true component (4): 0 / 1 / 2 voxels.
    truth2 = _blob(shape, [(0, 3), (0, 3)], 2) + _blob(shape, [(6, 8), (6, 8)], 2)
    pred2 = truth2.copy()
    pred2[11, 0] = 2
    # Dice before: class 1: case A 2*16/(17+16); case B empty/empty = 1.
    doc = pp.choose([pred1, pred2], [truth1, truth2], [1, 2])
    c1, c2 = doc["classes"]["1"], doc["classes"]["2"]
    assert c1["dice_before"] == pytest.approx((32 / 33 + 1) / 2)
    assert c1["keep_largest"] and c1["min_size_voxels"] == 0 and c1["dice_after"] == 1.0
    # Class 2: keep-largest gives 2*9/(9+13) on case B; removing < 2 voxels gives 1.0.
    assert not c2["keep_largest"] and c2["min_size_voxels"] == 2
    assert c2["dice_before"] == pytest.approx((1 + 26 / 27) / 2) and c2["dice_after"] == 1.0
    # A clean prediction keeps "none".
    doc = pp.choose([truth2], [truth2], [2])
    assert doc["classes"]["2"] == {
        "keep_largest": False,
        "min_size_voxels": 0,
        "dice_before": 1.0,
        "dice_after": 1.0,
    }
    np.testing.assert_array_equal(pp.apply(pred2, doc), pred2)


def test_predict_options_from_the_choice():
    doc = {
        "classes": {
            "1": {"keep_largest": True, "min_size_voxels": 0},
            "2": {"keep_largest": False, "min_size_voxels": 5},
        }
    }
    assert pp.predict_options(doc) == {"keep_largest": (1,), "min_size_voxels": 5}
    doc["classes"]["3"] = {"keep_largest": False, "min_size_voxels": 7}
    with pytest.raises(errors.ConfigError, match="min_size_voxels"):
        pp.predict_options(doc)


# --- evaluation on post-processed predictions (the wrapper around the task's accumulators) ----


class _Cases:
    """A split's cases in memory, as a store source gives them (``ids``, ``[i]``, ``len``)."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels
        self.ids = [f"case{i}" for i in range(len(images))]

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i]}


def _largest(mask):
    """scipy.ndimage reference: the largest face-connected component of ``mask``."""
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    if n == 0:
        return np.zeros(mask.shape, bool)
    return lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))


def _dice(p, t):
    return 1.0 if p.sum() + t.sum() == 0 else 2.0 * (p & t).sum() / (p.sum() + t.sum())


KEEP_LARGEST_1 = {"version": 1, "classes": {"1": {"keep_largest": True, "min_size_voxels": 0}}}


def test_batch_evaluation_scores_the_postprocessed_maps():
    from medjax.evaluate import segmentation as seg_eval
    from medjax.metrics import confusion

    shape = (12, 12)
    truth = [_blob(shape, [(1, 5), (1, 5)]), _blob(shape, [(2, 6), (2, 9)])]
    pred = [truth[0].copy(), _blob(shape, [(2, 6), (2, 6)])]
    pred[0][9:11, 9:11] = 1  # a 4-voxel false positive: keep-largest removes it
    pred[1][8:10, 2:9] = 1  # a second, smaller component: removed, Dice drops
    labels = np.stack(truth + [np.zeros(shape, np.uint8)]).astype(np.int32)  # + a padding row
    preds = np.stack(pred + [np.zeros(shape, np.uint8)]).astype(np.int32)
    valid = np.array([True, True, False])
    logits = np.where(preds[..., None] > 0, 3.0, -3.0).astype(np.float32)
    out = {
        k: np.asarray(v)
        for k, v in confusion.per_example_counts(logits, labels, valid=valid).items()
    }
    out.update(loss=np.array([0.5, 0.25, 0.0]), pred=preds)
    batch = {"label": labels, "valid": valid, "index": np.array([0, 1, -1])}
    cases = _Cases([np.zeros((*shape, 1), np.float32)] * 2, truth)

    inner = seg_eval.SplitEvaluation(cases, keep_predictions=True, num_classes=1)
    evaluation = pp.PostprocessedEvaluation(inner, KEEP_LARGEST_1, num_classes=1)
    evaluation.accumulate(out, batch)
    result = evaluation.finalize()

    kept = [_largest(p > 0) for p in pred]
    assert kept[0].sum() == 16 and kept[1].sum() == 16  # both cases changed
    for row, k, t in zip(result.per_case, kept, truth, strict=True):
        assert row["dice"] == pytest.approx(_dice(k, t > 0), abs=1e-12)
        np.testing.assert_array_equal(result.predictions[row["index"]], k)
    tp = sum((k & (t > 0)).sum() for k, t in zip(kept, truth, strict=True))
    total = sum(k.sum() + (t > 0).sum() for k, t in zip(kept, truth, strict=True))
    assert result.metrics["dice"] == pytest.approx(2 * tp / total, abs=1e-12)
    assert result.metrics["loss"] == pytest.approx(0.375)  # the network's loss, unchanged


def test_window_evaluation_scores_the_postprocessed_maps():
    from medjax.evaluate import segmentation as seg_eval

    shape = (4, 10, 10)
    truth = np.zeros(shape, np.uint8)
    truth[1:3, 1:5, 1:5] = 1
    truth[1:3, 6:9, 6:9] = 2
    pred = truth.copy()
    pred[0, 8, 0] = 1  # class-1 speck: keep-largest removes it
    pred[3, 0:2, 8:10] = 2  # 4-voxel class-2 blob: the size cut (5) removes it
    choice = {
        "version": 1,
        "classes": {
            "1": {"keep_largest": True, "min_size_voxels": 0},
            "2": {"keep_largest": False, "min_size_voxels": 5},
        },
    }
    rng = np.random.default_rng(0)
    # Logits whose argmax is ``pred``, with noise so that the rewritten voxels are not trivial.
    logits = rng.normal(0, 1, (*shape, 3)).astype(np.float32)
    logits += 5.0 * np.eye(3, dtype=np.float32)[pred]
    expected = pred.copy()
    expected[(pred == 1) & ~_largest(pred == 1)] = 0
    expected[0:4, 0:2, 8:10][pred[0:4, 0:2, 8:10] == 2] = 0
    assert (expected != pred).sum() == 5

    def evaluate(wrap, case_logits):
        cases = _Cases([np.zeros((*shape, 1), np.float32)], [truth])
        ev = seg_eval.VolumeEvaluation(
            cases, [(1.0, 1.0, 1.0)], tile_size=shape, num_classes=3, keep_predictions=True
        )
        ev = pp.PostprocessedEvaluation(ev, choice, num_classes=3) if wrap else ev
        ev.accumulate({"logits": case_logits[None]}, {"index": np.array([0]), "valid": [True]})
        return ev.finalize()

    ours = evaluate(True, logits)
    # The reference: the task's own scoring of logits whose argmax is the scipy-cleaned map.
    reference = evaluate(False, 5.0 * np.eye(3, dtype=np.float32)[expected])
    np.testing.assert_array_equal(ours.predictions[0], expected)
    assert ours.metrics == pytest.approx(reference.metrics, nan_ok=True)
    assert ours.per_case == reference.per_case
    assert ours.per_case[0]["dice"] == pytest.approx(1.0)  # the clean-up restores the truth
