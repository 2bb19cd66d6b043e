"""Confusion counts inside the train/eval step (jnp, jit-safe) and the ratios made from them.

The step returns raw counts (sums over valid voxels), which add up exactly across batches and
devices; ratios such as Dice are formed once, on the host, by ``from_counts``. Following
docs/CONVENTIONS.md, ``K == 1`` logits are a sigmoid foreground probability thresholded at
``threshold``, and ``K > 1`` logits are argmaxed, with counts kept for the ``K - 1``
foreground classes (class 0, background, is left out as nnU-Net does). The same functions
serve segmentation (``[B, *spatial, K]``) and classification (``[B, K]``, labels ``[B]``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt

from medjax.metrics import regions as regions_lib

COUNT_KEYS = ("tp", "fp", "fn", "tn")


def _check_shapes(logits: jax.Array, labels: jax.Array) -> None:
    if logits.ndim != labels.ndim + 1 or logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"Expected logits [B, *spatial, K] and labels [B, *spatial]; got logits "
            f"{logits.shape} and labels {labels.shape}."
        )


def per_example_counts(
    logits: jax.Array,
    labels: jax.Array,
    *,
    valid: jax.typing.ArrayLike | None = None,
    threshold: float = 0.5,
    regions: regions_lib.Regions = (),
) -> dict[str, jax.Array]:
    """Per-example, per-class confusion counts over the voxels that ``valid`` keeps.

    Args:
      logits: ``float[B, *spatial, K]`` (``[B, K]`` for classification).
      labels: ``int[B, *spatial]`` class indices (``[B]`` for classification); for ``K == 1``
        any non-zero label is foreground.
      valid: optional ``bool[B]`` (e.g. the batch's padding flags) or ``bool[B, *spatial]``;
        voxels where it is False are not counted.
      threshold: foreground probability threshold for ``K == 1`` (``sigmoid(logit) >
        threshold``); unused for ``K > 1``.
      regions: ``data.regions`` (``metrics.regions``): the logits are one sigmoid per region;
        the prediction is the label map they paint (as written out), scored per region.

    Returns:
      ``{"tp", "fp", "fn", "tn"}``, each ``float32[B, K']``; ``K' = 1`` for ``K == 1``,
      ``K - 1`` (foreground classes 1..K-1) for ``K > 1``, ``len(regions)`` with regions.
      Sums are exact integers up to 2**24 per entry (float32); they are accumulated in int32
      first.
    """
    _check_shapes(logits, labels)
    num_classes = logits.shape[-1]
    if regions:
        pred_labels = regions_lib.labels_from_logits(logits, regions)
        pred = regions_lib.class_masks(pred_labels, num_classes=num_classes, regions=regions)
        ref = regions_lib.class_masks(labels, num_classes=num_classes, regions=regions)
    elif num_classes == 1:
        # Comparing probabilities rather than logits keeps threshold in probability units.
        pred = (jax.nn.sigmoid(logits.astype(jnp.float32)) > threshold)[..., :1]
        ref = (labels != 0)[..., None]
    else:
        classes = jnp.arange(1, num_classes)
        pred = jnp.argmax(logits, axis=-1)[..., None] == classes
        ref = labels[..., None] == classes
    if valid is None:
        keep = jnp.ones(labels.shape, bool)
    else:
        keep = jnp.asarray(valid).astype(bool)
        if keep.shape == labels.shape[:1]:
            keep = keep.reshape(keep.shape + (1,) * (labels.ndim - 1))
        elif keep.shape != labels.shape:
            raise ValueError(
                f"valid must have shape [B] {labels.shape[:1]} or [B, *spatial] "
                f"{labels.shape}; got {keep.shape}."
            )
        keep = jnp.broadcast_to(keep, labels.shape)
    keep = keep[..., None]
    axes = tuple(range(1, labels.ndim))

    def count(condition: jax.Array) -> jax.Array:
        return jnp.sum(condition & keep, axis=axes, dtype=jnp.int32).astype(jnp.float32)

    return {
        "tp": count(pred & ref),
        "fp": count(pred & ~ref),
        "fn": count(~pred & ref),
        "tn": count(~pred & ~ref),
    }


def confusion_counts(
    logits: jax.Array,
    labels: jax.Array,
    *,
    valid: jax.typing.ArrayLike | None = None,
    threshold: float = 0.5,
) -> dict[str, jax.Array]:
    """Confusion counts summed over the batch and all valid voxels.

    Args: as ``per_example_counts``.

    Returns:
      ``{"tp", "fp", "fn", "tn"}``, each ``float32[K']`` (see ``per_example_counts``).
    """
    counts = per_example_counts(logits, labels, valid=valid, threshold=threshold)
    return {name: jnp.sum(value, axis=0) for name, value in counts.items()}


def _ratio(numerator: np.ndarray, denominator: np.ndarray, if_empty: float) -> np.ndarray:
    """``numerator / denominator`` elementwise, ``if_empty`` where the denominator is 0."""
    empty = denominator == 0
    return np.where(empty, if_empty, numerator / np.where(empty, 1.0, denominator))


def from_counts(counts: dict[str, npt.ArrayLike]) -> dict[str, np.ndarray]:
    """Overlap metrics from confusion counts, on the host in float64.

    Works elementwise on counts of any shape (``[K']`` pooled, or ``[B, K']`` per case so that
    per-case Dice can be averaged over a split). Conventions when a denominator is 0:

    * ``dice = 2TP / (2TP + FP + FN)`` and ``iou = TP / (TP + FP + FN)`` are 1 when prediction
      and reference are both empty (perfect agreement).
    * ``sensitivity = TP / (TP + FN)``, ``specificity = TN / (TN + FP)`` and
      ``precision = TP / (TP + FP)`` are NaN when undefined (no positives in the reference,
      no negatives, no positive predictions), so that a NaN-aware mean skips them.

    Args:
      counts: dict with ``tp``, ``fp``, ``fn``, ``tn`` arrays of one shape (device arrays are
        fetched).

    Returns:
      ``{"dice", "iou", "sensitivity", "specificity", "precision"}``, float64 arrays of the
      counts' shape.
    """
    tp, fp, fn, tn = (np.asarray(jax.device_get(counts[k]), np.float64) for k in COUNT_KEYS)
    return {
        "dice": _ratio(2.0 * tp, 2.0 * tp + fp + fn, 1.0),
        "iou": _ratio(tp, tp + fp + fn, 1.0),
        "sensitivity": _ratio(tp, tp + fn, np.nan),
        "specificity": _ratio(tn, tn + fp, np.nan),
        "precision": _ratio(tp, tp + fp, np.nan),
    }
