"""What classification-like tasks (classification, LUNA16) accumulate over an evaluation: class
scores per case, the confusion matrix, the mean loss.

Used inside a task's ``Evaluation`` (``tasks.base``); the batches come from
``evaluate.runner`` already gathered on the host.
"""

from __future__ import annotations

import numpy as np

from medjax.metrics import classification


class ClassScores:
    """Per-case class probabilities plus the split's classification metrics.

    Args:
      num_classes: ``K`` of the logits (1 = a sigmoid positive-class score).
      zero_rule_class: the training split's majority class (for ``zero_rule_accuracy``).
    """

    def __init__(self, num_classes: int, zero_rule_class: int):
        self.metrics_acc = classification.ClassificationMetrics(
            num_classes, zero_rule_class=zero_rule_class
        )
        self.loss_sum, self.count = 0.0, 0
        self._probs: list[np.ndarray] = []
        self._index: list[np.ndarray] = []

    def add(self, out: dict[str, np.ndarray], batch: dict[str, np.ndarray]) -> None:
        """Adds a batch: ``out["logits"] [B, K]`` (and ``out["loss"] [B]`` when labelled);
        ``batch`` has ``valid bool[B]``, ``index int[B]`` and, when labelled, ``label int[B]``.
        Unlabelled batches (prediction on new cases) only add probabilities."""
        valid = np.asarray(batch["valid"])
        logits = np.asarray(out["logits"])
        if "label" in batch:
            self.metrics_acc.update(logits, batch["label"], valid=valid)
            self.loss_sum += float(np.asarray(out["loss"])[valid].sum())
            self.count += int(valid.sum())
        self._probs.append(classification.scores_from_logits(logits)[valid])
        self._index.append(np.asarray(batch["index"])[valid])

    @property
    def threshold(self) -> float:
        """The positive-class probability threshold of a sigmoid (``K == 1``) model."""
        return self.metrics_acc.threshold

    def probabilities(self) -> tuple[np.ndarray, np.ndarray]:
        """``(index int[N], probs float[N, K'])`` in evaluation order (``K' = max(K, 2)``)."""
        if not self._probs:
            return np.zeros(0, np.int64), np.zeros((0, 2), np.float32)
        return np.concatenate(self._index), np.concatenate(self._probs)

    def confusion_matrix(self) -> np.ndarray:
        """``int[K', K']``: rows true class, columns predicted class."""
        return self.metrics_acc.confusion_matrix()

    def metrics(self) -> dict[str, float]:
        """Scalar metrics, ``confusion/<true>_<pred>`` counts and the mean ``loss``; empty when
        nothing was labelled."""
        if not self.count:
            return {}
        out = {k: float(v) for k, v in self.metrics_acc.result().items() if np.isscalar(v)}
        return out

    def confusion_scalars(self) -> dict[str, float]:
        """The confusion matrix as scalars ``confusion/<true>_<pred>`` (logged every epoch)."""
        if not self.count:
            return {}
        return {
            f"confusion/{t}_{p}": float(c) for (t, p), c in np.ndenumerate(self.confusion_matrix())
        }

    def mean_loss(self) -> dict[str, float]:
        """``{"loss": mean over labelled cases}`` (empty when nothing was labelled)."""
        return {"loss": self.loss_sum / self.count} if self.count else {}
