"""In-step confusion counts vs numpy, and the host-side ratios from them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax.metrics import confusion


def _np_counts(logits, labels, valid, threshold=0.5):
    logits = np.asarray(logits, np.float64)
    k = logits.shape[-1]
    if k == 1:
        pred = (1 / (1 + np.exp(-logits[..., 0])) > threshold).astype(int)
        ref = (labels != 0).astype(int)
        classes = [1]
    else:
        pred, ref, classes = logits.argmax(-1), labels, range(1, k)
    keep = np.ones(labels.shape, bool) if valid is None else np.asarray(valid, bool)
    if keep.ndim == 1:
        keep = keep.reshape(keep.shape + (1,) * (labels.ndim - 1)) & np.ones(labels.shape, bool)
    out = {key: np.zeros((labels.shape[0], len(classes))) for key in confusion.COUNT_KEYS}
    for b in range(labels.shape[0]):
        for i, c in enumerate(classes):
            p, r, m = pred[b] == c, ref[b] == c, keep[b]
            out["tp"][b, i] = (p & r & m).sum()
            out["fp"][b, i] = (p & ~r & m).sum()
            out["fn"][b, i] = (~p & r & m).sum()
            out["tn"][b, i] = (~p & ~r & m).sum()
    return out


@pytest.mark.parametrize("shape", [(3, 6, 7), (3, 4, 5, 6), (9,)])
@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("valid_kind", [None, "example", "voxel"])
def test_counts_match_numpy(shape, k, valid_kind):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=shape + (k,)).astype(np.float32)
    labels = rng.integers(0, max(k, 2), shape).astype(np.int32)
    valid = {
        None: None,
        "example": np.array([True, False] + [True] * (shape[0] - 2)),
        "voxel": rng.random(shape) > 0.3,
    }[valid_kind]
    per_example = confusion.per_example_counts(logits, labels, valid=valid)
    pooled = confusion.confusion_counts(logits, labels, valid=valid)
    want = _np_counts(logits, labels, valid)
    kp = 1 if k == 1 else k - 1
    for key in confusion.COUNT_KEYS:
        assert per_example[key].shape == (shape[0], kp) and per_example[key].dtype == jnp.float32
        np.testing.assert_array_equal(per_example[key], want[key])
        np.testing.assert_array_equal(pooled[key], want[key].sum(0))


def test_threshold_and_jit():
    logits = jnp.array([[[-1.0], [0.1], [1.0], [2.0]]])  # sigmoid: .27 .52 .73 .88
    labels = jnp.array([[0, 1, 1, 0]])
    fn = jax.jit(lambda x, y: confusion.confusion_counts(x, y, threshold=0.6))
    got = jax.device_get(fn(logits, labels))
    assert (got["tp"][0], got["fp"][0], got["fn"][0], got["tn"][0]) == (1, 1, 1, 1)


def test_from_counts_values_and_empty_conventions():
    counts = {
        "tp": np.array([3.0, 0.0, 0.0]),
        "fp": np.array([1.0, 0.0, 2.0]),
        "fn": np.array([2.0, 0.0, 0.0]),
        "tn": np.array([4.0, 10.0, 0.0]),
    }
    m = confusion.from_counts(counts)
    # Class 0 by hand: dice 6/9, iou 3/6, sens 3/5, spec 4/5, prec 3/4.
    np.testing.assert_allclose(
        [m[k][0] for k in ("dice", "iou", "sensitivity", "specificity", "precision")],
        [6 / 9, 0.5, 0.6, 0.8, 0.75],
    )
    # Class 1: both empty -> dice = iou = 1, sensitivity and precision undefined.
    assert m["dice"][1] == 1 and m["iou"][1] == 1 and m["specificity"][1] == 1
    assert np.isnan(m["sensitivity"][1]) and np.isnan(m["precision"][1])
    # Class 2: only false positives -> dice 0, precision 0, specificity 0/2, no negatives left.
    assert m["dice"][2] == 0 and m["precision"][2] == 0 and m["specificity"][2] == 0
    assert all(v.dtype == np.float64 for v in m.values())


def test_per_case_dice_from_device_counts():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 8, 8, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (4, 8, 8))
    counts = confusion.per_example_counts(jnp.asarray(logits), jnp.asarray(labels))
    dice = confusion.from_counts(counts)["dice"]
    pred = logits.argmax(-1)
    for b in range(4):
        for c in (1, 2):
            p, r = pred[b] == c, labels[b] == c
            assert dice[b, c - 1] == pytest.approx(2 * (p & r).sum() / (p.sum() + r.sum()))
