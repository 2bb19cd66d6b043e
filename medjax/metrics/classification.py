"""Classification metrics on the host (numpy, float64) and their accumulator.

Accuracy, precision, recall and F1 (binary for the positive class 1, or macro over classes),
ROC AUC (rank-based, ties counted one half), the confusion matrix, and a Zero-Rule baseline
(always predict the majority class). Model outputs follow docs/CONVENTIONS.md: logits
``[N, 1]`` are a sigmoid positive-class score, logits ``[N, K]`` with ``K > 1`` a softmax.

Conventions when a ratio is undefined: precision, recall and F1 of a class with no predicted
(resp. no true) positives are 0, as scikit-learn's default ``zero_division`` gives them; ROC
AUC is NaN when the labels hold only one class (for macro AUC such classes are skipped).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

from medjax import errors, registry


def confusion_matrix(pred: npt.ArrayLike, labels: npt.ArrayLike, num_classes: int) -> np.ndarray:
    """``int64[K, K]`` counts; row = true class, column = predicted class.

    Args:
      pred: ``int[N]`` predicted classes.
      labels: ``int[N]`` true classes.
      num_classes: ``K`` (at least 2 for a binary problem).
    """
    pred, labels = np.asarray(pred, np.int64).ravel(), np.asarray(labels, np.int64).ravel()
    return np.bincount(labels * num_classes + pred, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


def precision_recall_f1(
    pred: npt.ArrayLike, labels: npt.ArrayLike, num_classes: int, *, average: str = "binary"
) -> dict[str, float]:
    """Precision, recall and F1.

    Args:
      pred: ``int[N]`` predicted classes.
      labels: ``int[N]`` true classes.
      num_classes: ``K >= 2``.
      average: ``"binary"`` (class 1 is positive; needs ``K == 2``) or ``"macro"`` (unweighted
        mean of the per-class values over all ``K`` classes; F1 is the mean of per-class F1s).

    Returns:
      ``{"precision", "recall", "f1"}`` floats (0 where undefined, see the module docstring).

    Raises:
      ConfigError: an unknown ``average`` or ``"binary"`` with ``K != 2``.
    """
    cm = confusion_matrix(pred, labels, num_classes).astype(np.float64)
    tp = np.diag(cm)
    precision = _safe_div(tp, cm.sum(0))
    recall = _safe_div(tp, cm.sum(1))
    f1 = _safe_div(2 * precision * recall, precision + recall)
    if average == "binary":
        if num_classes != 2:
            raise errors.ConfigError(f"average='binary' needs 2 classes; got {num_classes}.")
        return {"precision": precision[1], "recall": recall[1], "f1": f1[1]}
    if average == "macro":
        return {"precision": precision.mean(), "recall": recall.mean(), "f1": f1.mean()}
    raise errors.ConfigError(f"average={average!r}; allowed: 'binary', 'macro'.")


def roc_auc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Binary ROC AUC by the rank-sum (Mann-Whitney U) identity.

    ``AUC = P(score of a random positive > score of a random negative)
    + 0.5 P(equal)``, computed as ``(R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` with
    average ranks for ties, in O(N log N).

    Args:
      scores: ``float[N]``, higher means more positive.
      labels: ``[N]``, non-zero (or True) is positive.

    Returns:
      The AUC in ``[0, 1]``, or NaN if ``labels`` has only one class.
    """
    scores = np.asarray(scores, np.float64).ravel()
    positive = np.asarray(labels).ravel() != 0
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(scores)  # average ranks for ties
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_auc_ovr(probs: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Macro one-vs-rest ROC AUC over the classes present in both roles.

    Args:
      probs: ``float[N, K]`` class scores.
      labels: ``int[N]`` true classes.

    Returns:
      The mean of ``roc_auc(probs[:, k], labels == k)`` over classes ``k`` that have positives
      and negatives; NaN if there is none.
    """
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    aucs = [roc_auc(probs[:, k], labels == k) for k in range(probs.shape[1])]
    aucs = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def zero_rule(labels: npt.ArrayLike, num_classes: int) -> int:
    """The Zero-Rule baseline's class: the most frequent label (the smallest on a tie).

    Args:
      labels: ``int[N]`` training labels.
      num_classes: ``K >= 2``.
    """
    return int(np.argmax(np.bincount(np.asarray(labels, np.int64).ravel(), minlength=num_classes)))


def scores_from_logits(logits: npt.ArrayLike) -> np.ndarray:
    """Class probabilities ``float64[N, max(K, 2)]`` from logits ``[N, K]``.

    ``K == 1`` (sigmoid) becomes the two columns ``(1 - p, p)``; ``K > 1`` is a softmax.
    """
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2:
        raise ValueError(f"Expected logits [N, K]; got shape {logits.shape}.")
    if logits.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-logits[:, 0]))
        return np.stack([1.0 - p, p], axis=1)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@registry.register("metrics.classification", "metrics.ClassificationMetrics")
class ClassificationMetrics:
    """Accumulates logits and labels over a split, then computes every metric at once.

    Scores are kept (``N`` floats per class) because ROC AUC needs them all; that is cheap at
    classification scale (LUNA16 has ~750k candidates -> a few MB).
    """

    def __init__(
        self, num_classes: int, *, threshold: float = 0.5, zero_rule_class: int | None = None
    ) -> None:
        """Initialises an empty accumulator.

        Args:
          num_classes: the model's ``K`` (1 for a sigmoid binary classifier).
          threshold: positive-class probability threshold when ``K == 1``; ``K > 1`` argmaxes.
          zero_rule_class: the Zero-Rule class from the *training* labels
            (``zero_rule(train_labels, K)``); default the majority of the evaluated labels,
            which is an optimistic baseline.
        """
        self.num_classes = max(num_classes, 2)
        self.sigmoid = num_classes == 1
        self.threshold = threshold
        self.zero_rule_class = zero_rule_class
        self.reset()

    def reset(self) -> None:
        """Forgets every example."""
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def update(
        self, logits: npt.ArrayLike, labels: npt.ArrayLike, valid: npt.ArrayLike | None = None
    ) -> None:
        """Adds a batch.

        Args:
          logits: ``float[B, K]`` model outputs (device arrays are copied to the host).
          labels: ``int[B]`` true classes.
          valid: optional ``bool[B]``; False rows (batch padding) are dropped.
        """
        scores = scores_from_logits(np.asarray(logits))
        labels = np.asarray(labels, np.int64).ravel()
        if labels.shape[0] != scores.shape[0]:
            raise ValueError(f"{scores.shape[0]} logits rows but {labels.shape[0]} labels.")
        if valid is not None:
            keep = np.asarray(valid, bool).ravel()
            scores, labels = scores[keep], labels[keep]
        self._scores.append(scores)
        self._labels.append(labels)

    def _predict(self, scores: np.ndarray) -> np.ndarray:
        if self.sigmoid:
            return (scores[:, 1] > self.threshold).astype(np.int64)
        return scores.argmax(axis=1)

    def confusion_matrix(self) -> np.ndarray:
        """``int64[K, K]`` over everything seen (row = true, column = predicted)."""
        scores, labels = self._gathered()
        return confusion_matrix(self._predict(scores), labels, self.num_classes)

    def _gathered(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._labels:
            return np.zeros((0, self.num_classes)), np.zeros((0,), np.int64)
        return np.concatenate(self._scores), np.concatenate(self._labels)

    def result(self) -> dict[str, Any]:
        """Metrics over everything seen.

        Returns:
          Floats: ``num_examples``, ``accuracy``, ``precision``, ``recall``, ``f1`` (binary for
          class 1 when ``K <= 2``, else macro), ``macro_f1``, ``auc`` (binary, or macro
          one-vs-rest), ``zero_rule_accuracy`` (accuracy of always predicting the Zero-Rule
          class). Empty -> only ``num_examples``.
        """
        scores, labels = self._gathered()
        out: dict[str, Any] = {"num_examples": float(labels.size)}
        if labels.size == 0:
            return out
        pred = self._predict(scores)
        k = self.num_classes
        out["accuracy"] = float(np.mean(pred == labels))
        average = "binary" if k == 2 else "macro"
        out.update(
            {n: float(v) for n, v in precision_recall_f1(pred, labels, k, average=average).items()}
        )
        out["macro_f1"] = float(precision_recall_f1(pred, labels, k, average="macro")["f1"])
        out["auc"] = roc_auc(scores[:, 1], labels == 1) if k == 2 else roc_auc_ovr(scores, labels)
        baseline = self.zero_rule_class
        if baseline is None:
            baseline = zero_rule(labels, k)
        out["zero_rule_accuracy"] = float(np.mean(labels == baseline))
        return out
