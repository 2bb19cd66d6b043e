"""Post-processing chosen on validation (nnU-Net style): per class, keep the largest connected
component or remove components below a size, only where that raises the validation Dice.

The choice is stored with the run as ``<workdir>/postprocessing.json`` and applied to label
maps by ``apply``: ``--mode=eval`` scores the post-processed predictions (``evaluation_task``,
``eval.postprocess``), ``--mode=predict`` and exported bundles apply it on the input's grid
(``predict.postprocess.auto``). ``find`` says which file applies to a workdir: its own, else,
for a fold of a cross-validation (``<cv>/fold_<k>``), the cross-validation's. Format (version 1)::

    {"version": 1, "metric": "dice", "connectivity": "face", "num_cases": 12,
     "classes": {"1": {"keep_largest": false, "min_size_voxels": 40,
                       "dice_before": 0.71, "dice_after": 0.74}, ...}}

Class keys are label values as strings (binary runs: ``"1"``). ``keep_largest`` keeps only the
largest component of that class; ``min_size_voxels`` > 0 removes the class's components with
fewer voxels (0: none). Removed voxels become background (0). Components are face-connected
(``scipy.ndimage.label``'s default), counted in the grid the predictions were scored in.

Candidates per class: keep-largest, and removal below 10 / 25 / 50 % of the smallest true
component among the validation cases (so no true structure of those cases is below the cut).
Dice per case is averaged over the cases (a case whose prediction and truth lack the class
scores 1); a candidate is taken only when it beats no post-processing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging
from scipy import ndimage

from medjax import distributed, errors, progress
from medjax.data import splits

FILE = "postprocessing.json"
SIZE_FRACTIONS = (0.1, 0.25, 0.5)


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Face-connected component labels of ``mask`` and each component's size (index 0 = none)."""
    labels, n = ndimage.label(mask)
    return labels, np.bincount(labels.ravel(), minlength=n + 1)


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """``bool[*spatial]``: only the largest face-connected component of ``mask`` (ties: the
    first in scan order); an empty mask stays empty."""
    labels, sizes = _components(mask)
    if len(sizes) <= 1:
        return np.zeros(mask.shape, bool)
    return labels == 1 + int(np.argmax(sizes[1:]))


def remove_small_components(mask: np.ndarray, min_size_voxels: int) -> np.ndarray:
    """``bool[*spatial]``: ``mask`` without its components of fewer than ``min_size_voxels``."""
    labels, sizes = _components(mask)
    keep = sizes >= min_size_voxels
    keep[0] = False
    return keep[labels]


def process_class(mask: np.ndarray, keep_largest: bool, min_size_voxels: int) -> np.ndarray:
    """One class's option applied to its mask (largest first, then the size cut)."""
    mask = np.asarray(mask, bool)
    if keep_largest:
        mask = keep_largest_component(mask)
    if min_size_voxels > 0:
        mask = remove_small_components(mask, min_size_voxels)
    return mask


def apply(label_map: np.ndarray, choice: Mapping[str, Any] | None) -> np.ndarray:
    """A label map ``int[*spatial]`` post-processed per ``choice`` (``postprocessing.json``);
    voxels removed from a class become 0. ``None`` or no class options: unchanged."""
    out = np.array(label_map, copy=True)
    for key, option in ((choice or {}).get("classes") or {}).items():
        if not option.get("keep_largest") and not option.get("min_size_voxels"):
            continue
        mask = out == int(key)
        kept = process_class(mask, bool(option["keep_largest"]), int(option["min_size_voxels"]))
        out[mask & ~kept] = 0
    return out


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = int(pred.sum()), int(truth.sum())
    if p + t == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, truth).sum()) / (p + t)


def choose(
    predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray], classes: Sequence[int]
) -> dict[str, Any]:
    """Per class the option with the best mean validation Dice (see the module docstring).

    Args:
      predictions: predicted label maps ``int[*spatial]``, one per case.
      truths: the reference label maps, same shapes.
      classes: foreground label values to consider (``[1]`` for binary).

    Returns:
      The ``postprocessing.json`` document.
    """
    doc: dict[str, Any] = {
        "version": 1,
        "metric": "dice",
        "connectivity": "face",
        "num_cases": len(predictions),
        "classes": {},
    }
    for c in classes:
        preds = [np.asarray(p) == c for p in predictions]
        refs = [np.asarray(t) == c for t in truths]
        true_sizes = [s for r in refs for s in _components(r)[1][1:]]
        candidates = [(True, 0)]
        if true_sizes:
            smallest = min(true_sizes)
            candidates += sorted(
                {(False, int(f * smallest)) for f in SIZE_FRACTIONS} - {(False, 0)}
            )
        before = float(np.mean([_dice(p, r) for p, r in zip(preds, refs, strict=True)]))
        best = (before, False, 0)
        for keep, size in candidates:
            after = float(
                np.mean(
                    [
                        _dice(process_class(p, keep, size), r)
                        for p, r in zip(preds, refs, strict=True)
                    ]
                )
            )
            if after > best[0]:
                best = (after, keep, size)
        doc["classes"][str(int(c))] = {
            "keep_largest": bool(best[1]),
            "min_size_voxels": int(best[2]),
            "dice_before": before,
            "dice_after": best[0],
        }
    return doc


def predict_options(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The choice as ``predict.postprocess``'s keys: ``keep_largest`` (label values) and one
    ``min_size_voxels`` for every class (``medjax.predict.segment.postprocess``, same face
    connectivity and order: largest first, then the size cut).

    Raises:
      ConfigError: classes chose different size cuts, which one global cut cannot express.
    """
    classes = doc.get("classes") or {}
    keep = tuple(sorted(int(k) for k, o in classes.items() if o.get("keep_largest")))
    sizes = {int(o["min_size_voxels"]) for o in classes.values() if o.get("min_size_voxels")}
    if len(sizes) > 1:
        raise errors.ConfigError(
            f"postprocessing.json chose per-class size cuts {sorted(sizes)}; "
            "predict.postprocess.min_size_voxels holds one for all classes."
        )
    return {"keep_largest": keep, "min_size_voxels": sizes.pop() if sizes else 0}


def save(doc: Mapping[str, Any], workdir: str) -> str:
    """Writes ``<workdir>/postprocessing.json`` (process 0, atomically); returns its path."""
    path = os.path.join(workdir, FILE)
    if distributed.is_main():
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(dict(doc), f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    return path


def load(workdir: str) -> dict[str, Any] | None:
    """``<workdir>/postprocessing.json``, or None when the run has not chosen one."""
    path = os.path.join(workdir, FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def find(workdir: str) -> str | None:
    """The ``postprocessing.json`` that applies to ``workdir``: its own, else (for
    ``<cv>/fold_<k>``) the cross-validation folder's, chosen on every fold's predictions; None
    when there is none."""
    workdir = os.path.abspath(workdir)
    candidates = [workdir]
    if splits.fold_number(os.path.basename(workdir)) is not None:
        candidates.append(os.path.dirname(workdir))
    for directory in candidates:
        if os.path.isfile(os.path.join(directory, FILE)):
            return os.path.join(directory, FILE)
    return None


def for_eval(config: Any, workdir: str) -> tuple[str, dict[str, Any]] | None:
    """``(path, choice)`` that ``--mode=eval`` applies to ``workdir``'s predictions, or None:
    ``eval.postprocess=False``, a task other than segmentation, region labels (overlapping
    sigmoid regions are no label map to clean), or no file (``find``).
    """
    if not config.eval.postprocess or config.task != "segmentation":
        return None
    path = find(workdir)
    if path is None:
        return None
    if config.data.get("regions"):
        logging.warning(
            "%s not applied: data.regions (overlapping regions) are no label map.", path
        )
        return None
    return path, load_path(path)


def load_path(path: str) -> dict[str, Any]:
    """A ``postprocessing.json`` document, checked (version 1, a ``classes`` mapping).

    Raises:
      DataError: the file is not a version-1 post-processing choice (names the file).
    """
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise errors.DataError(f"{path}: unreadable ({e}); delete it or choose again.") from e
    if not isinstance(doc, dict) or doc.get("version") != 1 or "classes" not in doc:
        raise errors.DataError(
            f"{path}: not a version-1 post-processing choice (--mode=choose_postprocessing "
            "writes one); delete it or choose again."
        )
    return doc


def summary(doc: Mapping[str, Any]) -> str:
    """``"class 1: keep largest; class 2: remove < 40 voxels"`` (``"none"`` without options)."""
    parts = []
    for key, o in (doc.get("classes") or {}).items():
        what = []
        if o.get("keep_largest"):
            what.append("keep largest")
        if o.get("min_size_voxels"):
            what.append(f"remove < {int(o['min_size_voxels'])} voxels")
        if what:
            parts.append(f"class {key}: " + " + ".join(what))
    return "; ".join(parts) or "none"


def describe(doc: Mapping[str, Any]) -> str:
    """One line per class: the option taken and the validation Dice before and after."""
    lines = [f"medjax: post-processing chosen on {doc['num_cases']} validation case(s)"]
    for key, o in doc["classes"].items():
        what = (
            "keep largest component"
            if o["keep_largest"]
            else f"remove components < {o['min_size_voxels']} voxels"
            if o["min_size_voxels"]
            else "none"
        )
        lines.append(
            f"  class {key}: {what} (Dice {o['dice_before']:.4f} -> {o['dice_after']:.4f})"
        )
    return "\n".join(lines)


def print_choice(doc: Mapping[str, Any]) -> None:
    """``describe`` on stderr, process 0 only (CLI progress, not library logging)."""
    if distributed.is_main():
        progress.say(describe(doc))


# --- evaluation on post-processed predictions ---------------------------------------------------


class PostprocessedEvaluation:
    """A segmentation ``tasks.base.Evaluation`` whose scoring sees post-processed label maps.

    Each case's predicted label map goes through ``apply(., choice)`` before the task's own
    accumulator sees it, so every metric, per-case row and kept prediction is of the
    post-processed maps (the loss stays the network's). Whole-image batches: ``out["pred"]
    [B, *S]`` is replaced and the confusion counts ``tp/fp/fn/tn [B, K']`` are recounted from
    it (as ``metrics.confusion.per_example_counts`` counts them). Sliding windows: the logits
    ``[1, *S, K]`` of the removed voxels are changed so that they label background (logit -1
    for K == 1, class 0 one above the others' maximum for K > 1; docs/CONVENTIONS.md's rule).

    Args:
      inner: the task's evaluation of the split.
      choice: the ``postprocessing.json`` document (class keys are class indices).
      num_classes: ``K`` of the model.
    """

    def __init__(self, inner: Any, choice: Mapping[str, Any], num_classes: int):
        self.inner, self.choice, self.num_classes = inner, choice, int(num_classes)
        self.inputs = inner.inputs

    def __getattr__(self, name: str) -> Any:  # e.g. ``source``, read by the runner's progress
        if name == "inner":  # not set yet (copy/pickle): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def accumulate(self, out: dict[str, np.ndarray], batch: dict[str, np.ndarray]) -> None:
        """Post-processes the batch's predictions, then lets the task score them."""
        if "pred" in out:
            out = self._batch(out, batch)
        elif "logits" in out:
            out = self._window(out)
        self.inner.accumulate(out, batch)

    def finalize(self) -> Any:
        """The task's ``EvalResult`` of the post-processed predictions."""
        return self.inner.finalize()

    def _batch(self, out: dict[str, np.ndarray], batch: dict[str, np.ndarray]) -> dict:
        pred = np.array(out["pred"], copy=True)
        valid = np.asarray(batch["valid"], bool)
        for row in np.flatnonzero(valid):
            pred[row] = apply(pred[row], self.choice)
        out = dict(out, pred=pred)
        if "tp" in out and "label" in batch:
            out.update(_counts(pred, np.asarray(batch["label"]), valid, self.num_classes))
        return out

    def _window(self, out: dict[str, np.ndarray]) -> dict:
        logits = np.asarray(out["logits"])
        case = logits[0]
        labels = (case[..., 0] > 0) if case.shape[-1] == 1 else np.argmax(case, axis=-1)
        labels = labels.astype(np.uint8)
        removed = (labels != 0) & (apply(labels, self.choice) == 0)
        if not removed.any():
            return out
        case = np.array(case, copy=True)
        if case.shape[-1] == 1:
            case[removed, 0] = -1.0
        else:
            case[removed, 0] = case[removed].max(axis=-1) + 1.0
        return dict(out, logits=case[None])


def _counts(
    pred: np.ndarray, label: np.ndarray, valid: np.ndarray, num_classes: int
) -> dict[str, np.ndarray]:
    """Per-example confusion counts ``float64[B, K']`` of label maps ``[B, *S]`` (``K' = 1``
    for K == 1: any non-zero label is foreground; else the classes 1..K-1), rows not ``valid``
    zero."""
    if num_classes == 1:
        p, r = (pred != 0)[..., None], (label != 0)[..., None]
    else:
        classes = np.arange(1, num_classes)
        p, r = pred[..., None] == classes, label[..., None] == classes
    keep = valid.reshape((-1,) + (1,) * (pred.ndim))
    axes = tuple(range(1, pred.ndim))

    def count(condition: np.ndarray) -> np.ndarray:
        return np.sum(condition & keep, axis=axes, dtype=np.int64).astype(np.float64)

    return {"tp": count(p & r), "fp": count(p & ~r), "fn": count(~p & r), "tn": count(~p & ~r)}


class _PostprocessedTask:
    """A task whose ``evaluation`` is wrapped in ``PostprocessedEvaluation``; everything else
    is the task's own."""

    def __init__(self, task: Any, choice: Mapping[str, Any], num_classes: int):
        self._task, self._choice, self._num_classes = task, choice, num_classes

    def __getattr__(self, name: str) -> Any:
        if name == "_task":
            raise AttributeError(name)
        return getattr(self._task, name)

    def evaluation(self, split: str, *, keep_predictions: bool = False) -> PostprocessedEvaluation:
        inner = self._task.evaluation(split, keep_predictions=keep_predictions)
        return PostprocessedEvaluation(inner, self._choice, self._num_classes)


def evaluation_task(task: Any, choice: Mapping[str, Any], num_classes: int) -> Any:
    """``task`` (a segmentation task) evaluated on post-processed predictions, for
    ``evaluate.runner.evaluate`` (see ``PostprocessedEvaluation``)."""
    return _PostprocessedTask(task, choice, num_classes)
