"""The classification task: a ``classification_folder`` of images -> store -> one label each.

Data: ``config.data.root`` is ``root/<class>/<file>`` or ``root/<split>/<class>/<file>`` of 2D
images (PNG, TIFF, ...) or 3D volumes (anything ``medjax.read_volume`` reads); empty means the
built-in dataset named by ``data.synthetic`` (``spine2d_cls``: sagittal spine slices with and
without cord lesions). Cases go through the preprocessing store like segmentation cases
(``data.preprocess``; ``target_size`` gives every case one shape) and are fed whole: the model
input is ``data.patch_size``, which must be that shape. Files that cannot be read are skipped
and reported by name (the store's ``report.json``, and on stderr); the rest trains.

Training draws shuffled epochs, or class-balanced epochs of ``data.classification.epoch_length``
samples at ``data.classification.ratio`` (``pipeline.make_sample_dataset``). Evaluation reports
accuracy, balanced accuracy, precision/recall/F1, ROC AUC, per-class sensitivity and
specificity and the confusion matrix (``confusion/<true>_<pred>``), and, per case, the class
probabilities (``per_case.csv``).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from medjax import errors, progress, registry
from medjax.data import pipeline, sources
from medjax.evaluate import classification as eval_cls
from medjax.metrics import classification
from medjax.models import spec as model_spec
from medjax.tasks import base
from medjax.train import step as step_lib


class _LoadClassBatch:
    """Source indices -> ``{"image": float32[b, *S, C], "label": int32[b]}`` (picklable)."""

    def __init__(self, source: sources.StoreSource, labels: np.ndarray):
        self.source, self.labels = source, np.asarray(labels, np.int32)

    def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        indices = np.asarray(indices, np.int64)
        return {
            "image": np.stack([np.asarray(self.source[int(i)]["image"]) for i in indices]),
            "label": self.labels[indices],
        }


def per_class_rates(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class one-vs-rest sensitivity and specificity from a confusion matrix.

    Args:
      confusion: ``int[K, K]`` counts, row = true class, column = predicted class.

    Returns:
      ``{"sensitivity": float64[K], "specificity": float64[K]}``: ``TP / (TP + FN)`` and
      ``TN / (TN + FP)`` of each class against the rest; NaN where the denominator is 0 (no
      example of the class, resp. of the other classes).
    """
    cm = np.asarray(confusion, np.float64)
    tp = np.diag(cm)
    fn = cm.sum(1) - tp
    fp = cm.sum(0) - tp
    tn = cm.sum() - tp - fn - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp)}


class ClassificationTask:
    """Data, evaluation and outputs of a classification config (see the module docstring)."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.data = pipeline.prepare_data(config)
        self.skipped = self._report_skipped()
        entries = [e for split in self.data.splits.values() for e in split]
        unlabelled = [e["id"] for e in entries if "class_index" not in e]
        if unlabelled:
            raise errors.DataError(
                f"{self.data.root}: cases without a class ({unlabelled[:5]}); task=classification "
                f"needs data.crawler='classification_folder' (got {config.data.crawler!r})."
            )
        self.class_names = self._class_names(entries)
        channels = {e["channels"] for e in entries}
        if len(channels) != 1:
            raise errors.DataError(f"Cases disagree on the number of channels: {sorted(channels)}.")
        self.channels = channels.pop()
        shapes = {tuple(e["shape"]) for e in entries}
        if len(shapes) != 1:
            raise errors.DataError(
                f"{self.data.root}: images have {len(shapes)} different shapes after "
                f"preprocessing (e.g. {sorted(shapes)[:3]}); set data.preprocess.target_size "
                "to give them one."
            )
        self.shape = shapes.pop()
        if tuple(config.data.patch_size) != self.shape:
            raise errors.ConfigError(
                f"data.patch_size={tuple(config.data.patch_size)} but the preprocessed images "
                f"are {self.shape}: classification feeds whole images, set the two equal."
            )
        k = model_spec.num_classes(config)
        n = len(self.class_names)
        if not (k == n or (k == 1 and n == 2)):
            raise errors.ConfigError(
                f"model.num_classes={k} but {self.data.root} has {n} classes "
                f"{self.class_names} (use {n}, or 1 for a sigmoid when there are 2)."
            )
        self.num_classes = k
        train = self.labels(config.data.train_split)
        if len(np.unique(train)) < 2:
            raise errors.DataError(
                f"The training split of {self.data.root} needs examples of at least two "
                f"classes; it has only {[self.class_names[c] for c in np.unique(train)]}."
            )
        cc = config.data.classification
        self.ratio = tuple(int(r) for r in cc.ratio)
        self.num_train = (cc.epoch_length if self.ratio else 0) or len(train)

    # -- data -------------------------------------------------------------------------------------

    def _report_skipped(self) -> list[dict[str, Any]]:
        path = os.path.join(self.data.store_dir, "report.json")
        with open(path) as f:
            skipped = json.load(f)["skipped"]
        for problem in skipped:
            progress.say(f"medjax: skipped {', '.join(problem['files'])}: {problem['reason']}")
        return skipped

    def _class_names(self, entries: list[dict[str, Any]]) -> list[str]:
        names = {tuple(e["class_names"]) for e in entries}
        if len(names) != 1:  # one crawl gives one list; two would mean a store mix-up
            raise errors.DataError(f"{self.data.root}: cases disagree on class names {names}.")
        return list(names.pop())

    def labels(self, split: str) -> np.ndarray:
        """``int32[N]``: the class of every case of ``split``, in source order."""
        if not self.data.splits.get(split):
            self.data.source(split)  # raises the DataError that names the empty split
        return np.asarray([e["class_index"] for e in self.data.splits[split]], np.int32)

    def input_shape(self) -> tuple[int, ...]:
        """``(1, *shape, C)``: what the model is initialised with."""
        return (1, *self.shape, self.channels)

    def describe(self) -> str:
        """What ``--mode=preprocess`` prints: the store, its fingerprint and spec, the splits."""
        return self.data.describe()

    def train_dataset(self, *, global_batch_size: int, seed: int):
        """Endless Grain dataset of this process's rows of each global batch."""
        split = self.config.data.train_split
        labels = self.labels(split)
        return pipeline.make_sample_dataset(
            _LoadClassBatch(self.data.source(split), labels),
            labels,
            global_batch_size=global_batch_size,
            seed=seed,
            num_workers=self.config.data.num_workers,
            read_threads=self.config.data.get("read_threads", 0),
            prefetch_batches=self.config.data.get("prefetch_batches", 0),
            ratio=self.ratio,
            epoch_length=self.num_train,
        )

    # -- evaluation -------------------------------------------------------------------------------

    def make_eval_fns(self, loss_fn: Callable, precision: str) -> dict[str, Callable]:
        """``step(state, batch) -> {"logits": [B, K], "loss": [B]}`` (0 on padding rows)."""
        return {"step": step_lib.make_classification_eval_step(loss_fn, precision=precision)}

    def evaluation(self, split: str, *, keep_predictions: bool = False) -> _Evaluation:
        """Accuracy, balanced accuracy, per-class rates, AUC and the confusion matrix over
        ``split``; per case the class probabilities (kept in ``predictions`` either way)."""
        del keep_predictions  # probabilities are small: always kept
        return _Evaluation(self, split)

    def baseline(self, split: str) -> dict[str, float]:
        """Zero-Rule accuracy (always the training majority class) on ``split``."""
        train = self.labels(self.config.data.train_split)
        majority = classification.zero_rule(train, max(self.num_classes, 2))
        return {"zero_rule_accuracy": float(np.mean(self.labels(split) == majority))}

    def images(self, split: str, result: base.EvalResult, num: int) -> dict[str, np.ndarray]:
        """No image summaries: the per-case probabilities say more than a grid of inputs."""
        del split, result, num
        return {}

    def write_outputs(self, split: str, result: base.EvalResult, out_dir: str) -> None:
        """``confusion.csv``: the confusion matrix with class names (rows true, columns pred)."""
        del split  # the loop writes per_case.csv
        if "confusion" not in result.extras:  # unlabelled cases: no confusion matrix
            return
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "confusion.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["true \\ predicted", *self.class_names])
            for name, row in zip(self.class_names, result.extras["confusion"], strict=True):
                w.writerow([name, *(int(v) for v in row)])


class _Evaluation:
    """``base.Evaluation`` of a classification split: whole images in batches of one shape."""

    def __init__(self, task: ClassificationTask, split: str):
        self.task, self.split = task, split
        self.source = task.data.source(split)
        self.labels = task.labels(split)
        self.inputs = base.Batches(self._batches)
        zero_rule = classification.zero_rule(
            task.labels(task.config.data.train_split), max(task.num_classes, 2)
        )
        self.scores = eval_cls.ClassScores(task.num_classes, zero_rule)

    def _batches(self, batch_size: int):
        for batch in pipeline.eval_batches(self.source, batch_size):
            valid = batch["valid"]
            labels = self.labels[np.maximum(batch["index"], 0)]
            yield {
                "image": batch["image"],
                "label": np.where(valid, labels, 0).astype(np.int32),
                "valid": valid,
                "index": batch["index"],
            }

    def accumulate(self, out: dict[str, np.ndarray], batch: dict[str, np.ndarray]) -> None:
        self.scores.add(out, batch)

    def finalize(self) -> base.EvalResult:
        task, scores = self.task, self.scores
        confusion = scores.confusion_matrix()
        metrics = scores.metrics()
        rates = per_class_rates(confusion)
        # Balanced accuracy: the mean recall over the classes present in the split.
        metrics["balanced_accuracy"] = float(np.nanmean(rates["sensitivity"]))
        for c, name in enumerate(task.class_names):
            metrics[f"sensitivity/{name}"] = float(rates["sensitivity"][c])
            metrics[f"specificity/{name}"] = float(rates["specificity"][c])
        metrics.update(scores.confusion_scalars())
        metrics.update(scores.mean_loss())
        index_all, probs_all = scores.probabilities()
        entries = task.data.splits[self.split]
        per_case = []
        for i, p in zip(index_all, probs_all, strict=True):
            entry = entries[int(i)]
            pred = int(p.argmax()) if task.num_classes > 1 else int(p[1] > scores.threshold)
            row = {
                "id": entry["id"],
                "image": ";".join(entry.get("source", {}).get("image", [])),
                "label": int(self.labels[i]),
                "class_name": task.class_names[self.labels[i]],
                "prediction": pred,
                "predicted_class": task.class_names[pred],
            }
            row.update({f"p_{name}": float(p[c]) for c, name in enumerate(task.class_names)})
            per_case.append(row)
        return base.EvalResult(
            metrics=metrics,
            per_case=per_case,
            predictions={int(i): p for i, p in zip(index_all, probs_all, strict=True)},
            extras={"confusion": confusion},
        )


@registry.register("tasks.classification")
def get_classification(config: ml_collections.ConfigDict) -> ClassificationTask:
    """Factory of ``ClassificationTask``."""
    return ClassificationTask(config)
