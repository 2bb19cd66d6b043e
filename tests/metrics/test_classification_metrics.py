"""Classification metrics vs brute-force and hand-computed references."""

import numpy as np
import pytest

from medjax import errors, registry
from medjax.metrics import classification


def _brute_auc(scores, positive):
    """All positive/negative pairs: 1 if the positive scores higher, 1/2 on a tie."""
    pos, neg = scores[positive], scores[~positive]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


@pytest.mark.parametrize("seed", range(4))
def test_roc_auc_matches_pairwise(seed):
    rng = np.random.default_rng(seed)
    # Rounded scores give many ties, which the rank formula must count as one half.
    scores = np.round(rng.normal(size=60), 1)
    labels = rng.integers(0, 2, 60)
    assert classification.roc_auc(scores, labels) == pytest.approx(
        _brute_auc(scores, labels != 0), abs=1e-12
    )


def test_roc_auc_edge_cases():
    assert classification.roc_auc([0.1, 0.9], [0, 1]) == 1.0
    assert classification.roc_auc([0.9, 0.1], [0, 1]) == 0.0
    assert classification.roc_auc([0.5, 0.5, 0.5], [0, 1, 1]) == 0.5
    assert np.isnan(classification.roc_auc([0.1, 0.2], [1, 1]))
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.3, 0.4, 0.3]])
    labels = np.array([0, 1, 2, 1])
    want = np.mean([_brute_auc(probs[:, k], labels == k) for k in range(3)])
    assert classification.roc_auc_ovr(probs, labels) == pytest.approx(want)


def test_confusion_matrix_and_prf():
    pred = np.array([1, 1, 0, 0, 1, 2, 2, 0])
    labels = np.array([1, 0, 0, 1, 1, 2, 1, 0])
    cm = classification.confusion_matrix(pred, labels, 3)
    want = np.zeros((3, 3), np.int64)
    for t, p in zip(labels, pred, strict=True):
        want[t, p] += 1
    np.testing.assert_array_equal(cm, want)
    # By hand from cm: class 0 P 2/3 R 2/3; class 1 P 2/3 R 2/4; class 2 P 1/2 R 1/1.
    p = np.array([2 / 3, 2 / 3, 1 / 2])
    r = np.array([2 / 3, 1 / 2, 1.0])
    f1 = 2 * p * r / (p + r)
    got = classification.precision_recall_f1(pred, labels, 3, average="macro")
    assert got["precision"] == pytest.approx(p.mean())
    assert got["recall"] == pytest.approx(r.mean())
    assert got["f1"] == pytest.approx(f1.mean())
    binary = classification.precision_recall_f1([1, 1, 0, 0], [1, 0, 1, 0], 2)
    assert binary == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5})
    # No predicted positives: precision and F1 are 0 by convention, not NaN.
    none = classification.precision_recall_f1([0, 0], [1, 0], 2)
    assert none == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    with pytest.raises(errors.ConfigError):
        classification.precision_recall_f1(pred, labels, 3, average="binary")


def test_zero_rule():
    assert classification.zero_rule([2, 2, 1, 0, 2], 3) == 2
    assert classification.zero_rule([0, 1], 2) == 0  # tie -> smallest class


def test_accumulator_binary_sigmoid_with_padding():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(30, 1)).astype(np.float32)
    labels = rng.integers(0, 2, 30)
    valid = np.ones(30, bool)
    valid[-4:] = False
    acc = registry.lookup("metrics", "classification", num_classes=1)
    for start in range(0, 30, 10):
        s = slice(start, start + 10)
        acc.update(logits[s], labels[s], valid=valid[s])
    out = acc.result()
    x, y = logits[:26, 0].astype(np.float64), labels[:26]
    pred = (1 / (1 + np.exp(-x)) > 0.5).astype(int)
    assert out["num_examples"] == 26
    assert out["accuracy"] == pytest.approx((pred == y).mean())
    tp, fp = ((pred == 1) & (y == 1)).sum(), ((pred == 1) & (y == 0)).sum()
    fn = ((pred == 0) & (y == 1)).sum()
    assert out["precision"] == pytest.approx(tp / (tp + fp))
    assert out["recall"] == pytest.approx(tp / (tp + fn))
    assert out["auc"] == pytest.approx(_brute_auc(x, y == 1))
    assert out["zero_rule_accuracy"] == pytest.approx(max(y.mean(), 1 - y.mean()))
    np.testing.assert_array_equal(
        acc.confusion_matrix(), classification.confusion_matrix(pred, y, 2)
    )
    acc.reset()
    assert acc.result() == {"num_examples": 0.0}


def test_accumulator_softmax_multiclass_and_fixed_baseline():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(40, 3))
    labels = rng.integers(0, 3, 40)
    acc = classification.ClassificationMetrics(3, zero_rule_class=2)
    acc.update(logits, labels)
    out = acc.result()
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert out["accuracy"] == pytest.approx((logits.argmax(1) == labels).mean())
    assert out["f1"] == out["macro_f1"]
    want_auc = np.mean([_brute_auc(probs[:, k], labels == k) for k in range(3)])
    assert out["auc"] == pytest.approx(want_auc)
    assert out["zero_rule_accuracy"] == pytest.approx((labels == 2).mean())
