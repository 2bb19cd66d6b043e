"""Whole-split segmentation evaluation: exact metrics over every case, baseline, sample grids.

Two ``tasks.base.Evaluation`` accumulators, driven by ``evaluate.runner``: whole images in
batches (the jitted eval step returns per-example confusion counts and predictions) and whole
volumes by sliding windows. Everything is accumulated on the host in float64 so the split's
metrics are exact (no dropped remainder: the last batch is padded and masked by ``valid``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medjax import errors
from medjax.data import pipeline, sources
from medjax.metrics import confusion, surface
from medjax.tasks import base


def _pooled(totals: dict[str, float], per_case: list[dict[str, Any]]) -> dict[str, float]:
    """Split metrics from the pooled voxel counts, plus the mean per-case Dice."""
    pooled = {
        k: float(np.mean(v))
        for k, v in confusion.from_counts({k: np.array([v]) for k, v in totals.items()}).items()
    }
    pooled["dice_per_case"] = float(np.mean([c["dice"] for c in per_case]))
    return pooled


class SplitEvaluation:
    """Whole-image evaluation of a split whose cases all have the patch's shape.

    Metrics: ``dice``, ``iou``, ``sensitivity``, ``specificity``, ``precision`` from the pooled
    voxel counts of the whole split, ``dice_per_case`` (mean over cases, a case with empty
    reference and prediction scoring 1), ``loss``, and ``hd95_mm``, ``assd_mm``,
    ``hd95_empty_cases``, ``hd95_both_empty_cases`` by the rule of ``metrics.surface`` (means over
    the cases where both masks are non-empty; a case with one empty mask is NaN per case and
    counted, never 0); one row per case; and, if asked, the predicted label maps by case index.
    Inputs: the eval step over ``pipeline.eval_batches``.

    Args:
      source: the split's cases.
      spacings: per case, the mm spacing of the stored grid (None: 1 per axis).
      num_classes: ``K`` of the model (1 or 2: binary), for the per-class surface metrics.
      connectivity: the surface's neighbours (``eval.surface_connectivity``).
    """

    def __init__(
        self,
        source: sources.StoreSource,
        *,
        keep_predictions: bool = False,
        spacings: list[tuple[float, ...]] | None = None,
        num_classes: int = 2,
        connectivity: str = "face",
    ):
        self.source, self.keep_predictions = source, keep_predictions
        self.spacings, self.num_classes, self.connectivity = spacings, num_classes, connectivity
        self.inputs = base.Batches(lambda batch_size: pipeline.eval_batches(source, batch_size))
        self.totals = {k: 0.0 for k in ("tp", "fp", "fn", "tn")}
        self.loss_sum = 0.0
        self.result = base.EvalResult()

    def accumulate(self, out: dict[str, np.ndarray], batch: dict[str, np.ndarray]) -> None:
        """Adds one batch: ``out`` holds per-example ``tp/fp/fn/tn [B, K']``, ``loss [B]`` and
        ``pred [B, *spatial]``; rows with ``batch["valid"]`` False are padding."""
        valid = batch["valid"]
        counts = {k: np.asarray(out[k], np.float64)[valid] for k in self.totals}  # [n, K']
        for k in self.totals:
            self.totals[k] += counts[k].sum()
        self.loss_sum += float(np.asarray(out["loss"], np.float64)[valid].sum())
        case_metrics = confusion.from_counts(counts)
        indices = batch["index"][valid]
        pred = np.asarray(out["pred"])[valid]
        surfaces = surface.surface_metrics_for_batch(
            pred,
            batch["label"][valid],
            [self._spacing(int(i), pred.ndim - 1) for i in indices],
            num_classes=self.num_classes,
            connectivity=self.connectivity,
        )
        for row, index in enumerate(indices):
            entry = {"id": self.source.ids[int(index)], "index": int(index)}
            entry.update({k: float(np.mean(v[row])) for k, v in case_metrics.items()})
            entry.update(surfaces[row])
            self.result.per_case.append(entry)
            if self.keep_predictions:
                self.result.predictions[int(index)] = pred[row].astype(np.uint8)

    def _spacing(self, index: int, ndim: int) -> tuple[float, ...]:
        return tuple(self.spacings[index]) if self.spacings else (1.0,) * ndim

    def finalize(self) -> base.EvalResult:
        """The split's ``EvalResult``."""
        self.result.metrics = _pooled(self.totals, self.result.per_case)
        self.result.metrics["loss"] = self.loss_sum / max(len(self.result.per_case), 1)
        self.result.metrics.update(surface.summarize(self.result.per_case))
        return self.result


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


class VolumeEvaluation:
    """Sliding-window evaluation of cases of any size, with distance metrics in millimetres.

    Each case is predicted whole (Gaussian-blended windows of ``tile_size``), then scored on
    the host: pooled voxel counts give the split's Dice/IoU/sensitivity/specificity/precision,
    and per-case Dice, HD95 and ASSD (spacing-aware) are averaged over cases. HD95/ASSD follow
    ``metrics.surface``: the mean over cases where both masks are non-empty; a case with one
    empty mask is NaN per case and counted in ``hd95_empty_cases`` (both empty:
    ``hd95_both_empty_cases``), never 0.

    Args:
      source: the split's cases.
      spacings: per case, the mm spacing of the stored (preprocessed) grid.
      tile_size, num_classes, step_fraction, mirror_axes, blend: the sliding window, see
        ``sliding_window.sliding_window_predict``.
      connectivity: the surface's neighbours (``eval.surface_connectivity``).

    Raises:
      ConfigError: ``blend`` is unknown (named as ``eval.blend``).
    """

    def __init__(
        self,
        source: sources.StoreSource,
        spacings: list[tuple[float, ...]],
        *,
        tile_size: tuple[int, ...],
        num_classes: int,
        step_fraction: float = 0.5,
        mirror_axes: tuple[int, ...] = (),
        blend: str = "auto",
        keep_predictions: bool = False,
        connectivity: str = "face",
    ):
        check_blend(blend)
        self.source, self.spacings, self.connectivity = source, spacings, connectivity
        self.num_classes, self.keep_predictions = num_classes, keep_predictions
        self.inputs = base.Windows(
            lambda: ((i, source[i]["image"]) for i in range(len(source))),
            tile_size=tuple(tile_size),
            num_classes=num_classes,
            step_fraction=step_fraction,
            mirror_axes=tuple(mirror_axes),
            blend=blend,
        )
        self.totals = {k: 0.0 for k in ("tp", "fp", "fn", "tn")}
        self.result = base.EvalResult()

    def accumulate(self, out: dict[str, np.ndarray], batch: dict[str, np.ndarray]) -> None:
        """Scores one case: ``out["logits"] float32[1, *spatial, K]``, ``batch["index"] [1]``."""
        from medjax.metrics import segmentation as seg_metrics

        index = int(batch["index"][0])
        logits = out["logits"][0]
        pred = (logits[..., 0] > 0) if self.num_classes == 1 else np.argmax(logits, axis=-1)
        pred = pred.astype(np.uint8)
        record = self.source[index]
        ref = np.asarray(record.get("label", np.zeros(pred.shape)), np.uint8)
        m = seg_metrics.case_metrics(
            pred,
            ref,
            num_classes=max(self.num_classes, 2),
            spacing=self.spacings[index],
            connectivity=self.connectivity,
        )
        fg_p, fg_r = pred != 0, ref != 0
        tp = float(np.count_nonzero(fg_p & fg_r))
        counts = {
            "tp": tp,
            "fp": float(np.count_nonzero(fg_p)) - tp,
            "fn": float(np.count_nonzero(fg_r)) - tp,
        }
        counts["tn"] = float(pred.size) - counts["tp"] - counts["fp"] - counts["fn"]
        for k in self.totals:
            self.totals[k] += counts[k]
        entry = {"id": self.source.ids[index], "index": index}
        overlap = {k: v for k, v in m.items() if k not in seg_metrics.DISTANCE_METRICS}
        entry.update({k: float(np.nanmean(v)) for k, v in overlap.items()})
        entry.update(surface.case_surface_from_classes(m["hd95"], m["assd"]))
        self.result.per_case.append(entry)
        if self.keep_predictions:
            self.result.predictions[index] = pred

    def finalize(self) -> base.EvalResult:
        """The split's ``EvalResult``."""
        per_case = self.result.per_case
        self.result.metrics = _pooled(self.totals, per_case)
        self.result.metrics.update(surface.summarize(per_case))
        return self.result
