"""Whole-split segmentation evaluation: exact metrics over every case, baseline, sample grids.

The jitted eval step returns per-example confusion counts and predictions; everything is
accumulated on the host in float64 so the split's metrics are exact (no dropped remainder:
the last batch is padded and its padding rows are masked by ``valid``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from medjax import distributed, errors
from medjax.data import pipeline, sources
from medjax.metrics import confusion, surface


def evaluate_split(
    eval_fn: Callable[[Any, dict], dict],
    state: Any,
    source: sources.StoreSource,
    *,
    batch_size: int,
    sharding: jax.sharding.NamedSharding,
    keep_predictions: bool = False,
    spacings: list[tuple[float, ...]] | None = None,
    num_classes: int = 2,
    connectivity: str = "face",
) -> tuple[dict[str, float], list[dict[str, Any]], dict[int, np.ndarray]]:
    """Runs ``eval_fn`` over every case of ``source`` once.

    Args:
      spacings: per case, the mm spacing of the stored grid (None: 1 per axis).
      num_classes: ``K`` of the model (1 or 2: binary), for the per-class surface metrics.
      connectivity: the surface's neighbours (``eval.surface_connectivity``).

    Returns:
      ``(metrics, per_case, predictions)``: split metrics (``dice``, ``iou``, ``sensitivity``,
      ``specificity``, ``precision`` from the pooled voxel counts of the whole split, plus
      ``dice_per_case`` (mean over cases, a case with empty reference and prediction scoring 1),
      ``loss``, and ``hd95_mm``, ``assd_mm``, ``hd95_empty_cases``, ``hd95_both_empty_cases``
      by the rule of ``metrics.surface``: means over the cases where both masks are non-empty,
      a case with one empty mask is NaN per case and counted, never 0); one dict per case; and,
      if asked, the predicted label maps by case index.
    """
    totals = {k: 0.0 for k in ("tp", "fp", "fn", "tn")}
    per_case: list[dict[str, Any]] = []
    predictions: dict[int, np.ndarray] = {}
    loss_sum = 0.0
    for host_batch in pipeline.eval_batches(source, batch_size):
        out = distributed.to_host(
            eval_fn(state, distributed.global_from_host(host_batch, sharding))
        )
        valid = host_batch["valid"]
        counts = {k: np.asarray(out[k], np.float64)[valid] for k in totals}  # [n, K']
        for k in totals:
            totals[k] += counts[k].sum()
        loss_sum += float(np.asarray(out["loss"], np.float64)[valid].sum())
        case_metrics = confusion.from_counts(counts)
        indices = host_batch["index"][valid]
        surfaces = surface.surface_metrics_for_batch(
            np.asarray(out["pred"])[valid],
            host_batch["label"][valid],
            [spacings[int(i)] if spacings else (1.0,) * (out["pred"].ndim - 1) for i in indices],
            num_classes=num_classes,
            connectivity=connectivity,
        )
        for row, index in enumerate(indices):
            entry = {"id": source.ids[int(index)], "index": int(index)}
            entry.update({k: float(np.mean(v[row])) for k, v in case_metrics.items()})
            entry.update(surfaces[row])
            per_case.append(entry)
            if keep_predictions:
                predictions[int(index)] = np.asarray(out["pred"])[valid][row].astype(np.uint8)
    pooled = {
        k: float(np.mean(v))
        for k, v in confusion.from_counts({k: np.array([v]) for k, v in totals.items()}).items()
    }
    pooled["dice_per_case"] = float(np.mean([c["dice"] for c in per_case]))
    pooled["loss"] = loss_sum / max(len(per_case), 1)
    pooled.update(surface.summarize(per_case))
    return pooled, per_case, predictions


def threshold_baseline(source: sources.StoreSource, num_thresholds: int = 200) -> dict[str, float]:
    """The best Dice any global intensity threshold reaches on the split (a floor for a model).

    Both polarities (``image > t`` and ``image < t``) are tried on the first channel, with
    thresholds at quantiles of the split's intensities; the Dice is pooled over the split.
    """
    images = np.concatenate(
        [np.asarray(source[i]["image"][..., 0]).ravel() for i in range(len(source))]
    )
    labels = np.concatenate(
        [(np.asarray(source[i]["label"]) > 0).ravel() for i in range(len(source))]
    )
    thresholds = np.unique(np.quantile(images, np.linspace(0.0, 1.0, num_thresholds)))
    order = np.argsort(images)
    sorted_labels = labels[order]
    sorted_images = images[order]
    # Foreground counts above each threshold, by cumulative sums (one pass for all thresholds).
    cum_fg = np.concatenate([[0], np.cumsum(sorted_labels)])
    n, total_fg = len(images), cum_fg[-1]
    best, best_t, best_pol = 0.0, 0.0, ">"
    for t in thresholds:
        k = np.searchsorted(sorted_images, t, side="right")  # voxels <= t
        tp_below, below = cum_fg[k], k
        for pol, tp, pred in ((">", total_fg - tp_below, n - below), ("<=", tp_below, below)):
            dice = 2 * tp / max(pred + total_fg, 1)
            if dice > best:
                best, best_t, best_pol = float(dice), float(t), pol
    return {
        "baseline_threshold_dice": best,
        "baseline_threshold": best_t,
        "baseline_polarity": 1.0 if best_pol == ">" else -1.0,
    }


def sample_grid(
    source: sources.StoreSource, predictions: dict[int, np.ndarray], num: int
) -> np.ndarray | None:
    """Rows of (input | ground truth | prediction) for the first ``num`` predicted cases.

    3D cases show their middle slice. Returns ``uint8[rows*H, 3*W, 3]`` or None.
    """
    rows = []
    for index in sorted(predictions)[:num]:
        record = source[index]
        image = np.asarray(record["image"][..., 0], np.float32)
        label = np.asarray(record.get("label", np.zeros(image.shape)), np.float32)
        pred = predictions[index].astype(np.float32)
        if image.ndim == 3:
            mid = image.shape[0] // 2
            image, label, pred = image[mid], label[mid], pred[mid]
        lo, hi = np.percentile(image, [0.5, 99.5])
        image = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
        k = max(label.max(), pred.max(), 1.0)
        rows.append(np.concatenate([image, label / k, pred / k], axis=1))
    if not rows:
        return None
    grid = (np.concatenate(rows, axis=0) * 255).astype(np.uint8)
    return np.repeat(grid[..., None], 3, axis=-1)


def check_blend(blend: str) -> None:
    """Raises a ConfigError naming ``eval.blend`` unless it is one of ``sliding_window.BLENDS``."""
    from medjax.evaluate import sliding_window

    if blend not in sliding_window.BLENDS:
        raise errors.ConfigError(
            f"eval.blend={blend!r} is unknown; expected one of {sliding_window.BLENDS}."
        )


def evaluate_volumes(
    logits_fn: Callable[[Any, jax.Array], jax.Array],
    state: Any,
    source: sources.StoreSource,
    spacings: list[tuple[float, ...]],
    *,
    tile_size: tuple[int, ...],
    num_classes: int,
    batch_size: int,
    mesh: jax.sharding.Mesh,
    step_fraction: float = 0.5,
    mirror_axes: tuple[int, ...] = (),
    blend: str = "auto",
    keep_predictions: bool = False,
    connectivity: str = "face",
) -> tuple[dict[str, float], list[dict[str, Any]], dict[int, np.ndarray]]:
    """Sliding-window evaluation of cases of any size, with distance metrics in millimetres.

    Each case is predicted whole (Gaussian-blended windows of ``tile_size``), then scored on
    the host: pooled voxel counts give the split's Dice/IoU/sensitivity/specificity/precision,
    and per-case Dice, HD95 and ASSD (spacing-aware) are averaged over cases. HD95/ASSD follow
    ``metrics.surface``: the mean over cases where both masks are non-empty; a case with one
    empty mask is NaN per case and counted in ``hd95_empty_cases`` (both empty:
    ``hd95_both_empty_cases``), never 0.

    Args:
      logits_fn: jitted ``(state, windows float32[b, *tile, C]) -> logits [b, *tile, K]``.
      spacings: per case, the mm spacing of the stored (preprocessed) grid.
      blend: where windows are blended, see ``sliding_window.sliding_window_predict``.
      connectivity: the surface's neighbours (``eval.surface_connectivity``).

    Raises:
      ConfigError: ``blend`` is unknown (named as ``eval.blend``).
    """
    from medjax.evaluate import sliding_window

    check_blend(blend)
    from medjax.metrics import segmentation as seg_metrics

    totals = {k: 0.0 for k in ("tp", "fp", "fn", "tn")}
    per_case, predictions = [], {}
    for index in range(len(source)):
        record = source[index]
        logits = sliding_window.sliding_window_predict(
            lambda w: logits_fn(state, w),
            np.asarray(record["image"], np.float32),
            tile_size=tile_size,
            num_classes=num_classes,
            step_fraction=step_fraction,
            batch_size=batch_size,
            mirror_axes=mirror_axes,
            mesh=mesh,
            blend=blend,
        )
        pred = (logits[..., 0] > 0) if num_classes == 1 else np.argmax(logits, axis=-1)
        pred = pred.astype(np.uint8)
        ref = np.asarray(record.get("label", np.zeros(pred.shape)), np.uint8)
        m = seg_metrics.case_metrics(
            pred,
            ref,
            num_classes=max(num_classes, 2),
            spacing=spacings[index],
            connectivity=connectivity,
        )
        fg_p, fg_r = pred != 0, ref != 0
        tp = float(np.count_nonzero(fg_p & fg_r))
        counts = {
            "tp": tp,
            "fp": float(np.count_nonzero(fg_p)) - tp,
            "fn": float(np.count_nonzero(fg_r)) - tp,
        }
        counts["tn"] = float(pred.size) - counts["tp"] - counts["fp"] - counts["fn"]
        for k in totals:
            totals[k] += counts[k]
        entry = {"id": source.ids[index], "index": index}
        overlap = {k: v for k, v in m.items() if k not in seg_metrics.DISTANCE_METRICS}
        entry.update({k: float(np.nanmean(v)) for k, v in overlap.items()})
        entry.update(surface.case_surface_from_classes(m["hd95"], m["assd"]))
        per_case.append(entry)
        if keep_predictions:
            predictions[index] = pred
    pooled = {
        k: float(np.mean(v))
        for k, v in confusion.from_counts({k: np.array([v]) for k, v in totals.items()}).items()
    }
    pooled["dice_per_case"] = float(np.mean([c["dice"] for c in per_case]))
    pooled.update(surface.summarize(per_case))
    return pooled, per_case, predictions
