"""Post-processing chosen on validation (nnU-Net style): per class, keep the largest connected
component or remove components below a size, only where that raises the validation Dice.

The choice is stored with the run as ``<workdir>/postprocessing.json`` and applied to label
maps by ``apply`` (eval and predict read it with ``load``). Format (version 1)::

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
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from medjax import distributed, errors

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
        print(describe(doc), file=sys.stderr)
