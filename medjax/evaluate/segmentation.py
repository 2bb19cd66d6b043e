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
from medjax.metrics import regions as regions_lib
from medjax.tasks import base

PER_CLASS = ("dice", "iou")  # overlap metrics also reported per class/region (and hd95/assd)


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN values; NaN (no warning) when there is none."""
    values = np.asarray(values, np.float64)
    kept = values[~np.isnan(values)]
    return float(np.mean(kept)) if kept.size else float("nan")


class _PerClass:
    """What both evaluations share: per-case rows and split metrics, per class or region.

    Per class (``K'`` of them, named by ``regions.names``) the voxel counts of the split are
    pooled, and the split's ``dice`` (``iou``, ...) is the **foreground mean**: the mean over
    classes of each class's pooled Dice (nnU-Net's "foreground mean"; for binary it is the
    pooled Dice). With more than one class or region the split also reports ``dice/<name>``,
    ``iou/<name>``, ``hd95_mm/<name>``, ``assd_mm/<name>`` (mean over the cases where both of
    that class's masks are non-empty) and ``hd95_empty_cases/<name>``; each case's row has
    ``dice/<name>``, ``iou/<name>``, ``hd95/<name>``, ``assd/<name>`` (NaN where undefined).
    """

    def _setup(
        self, num_classes: int, regions: regions_lib.Regions, class_names: tuple[str, ...]
    ) -> None:
        self.num_classes, self.regions = num_classes, tuple(regions)
        self.names = regions_lib.names(num_classes, self.regions, tuple(class_names or ()))
        self.totals = {k: 0.0 for k in confusion.COUNT_KEYS}  # float64[K'] after a case
        self.class_hd95: list[np.ndarray] = []  # per case, float64[K'] (NaN / inf: empty)
        self.unlabelled: list[int] = []  # cases without a reference (a Decathlon imagesTs)
        self.result = base.EvalResult()

    def _skip_unlabelled(self, index: int, pred: np.ndarray) -> bool:
        """True (and the prediction kept) when case ``index`` has no reference to score."""
        # A source without ``has_label`` (cases in memory) has a label for every case.
        has_label = getattr(self.source, "has_label", None)
        if has_label is None or has_label[index]:
            return False
        self.unlabelled.append(index)
        if self.keep_predictions:
            self.result.predictions[index] = np.asarray(pred).astype(np.uint8)
        return True

    def _masks(self, labels: np.ndarray) -> np.ndarray:
        return regions_lib.class_masks(
            np.asarray(labels), num_classes=self.num_classes, regions=self.regions
        )

    def _add_case(
        self,
        index: int,
        counts: dict[str, np.ndarray],
        distances: dict[str, np.ndarray],
    ) -> dict[str, Any]:
        """Adds one case's per-class counts ``float[K']`` and ``class_distances``; its row."""
        for k in self.totals:
            self.totals[k] = self.totals[k] + np.asarray(counts[k], np.float64)
        overlap = confusion.from_counts(counts)
        entry = {"id": self.source.ids[index], "index": index}
        entry.update({k: _nanmean(v) for k, v in overlap.items()})
        entry.update(surface.case_surface_from_classes(distances["hd95"], distances["assd"]))
        self.class_hd95.append(np.asarray(distances["hd95"], np.float64))
        if len(self.names) > 1:
            for i, name in enumerate(self.names):
                for m in PER_CLASS:
                    entry[f"{m}/{name}"] = float(overlap[m][i])
                for m in ("hd95", "assd"):
                    value = float(distances[m][i])
                    entry[f"{m}/{name}"] = value if np.isfinite(value) else float("nan")
        self.result.per_case.append(entry)
        return entry

    def _split_metrics(self) -> dict[str, float]:
        """The split's metrics over its labelled cases; ``unlabelled_cases`` counts the others
        (predicted, never scored: no metric at all when no case has a reference)."""
        per_case = self.result.per_case
        if not per_case:
            return {"unlabelled_cases": float(len(self.unlabelled))}
        pooled = confusion.from_counts({k: np.atleast_1d(v) for k, v in self.totals.items()})
        out = {k: _nanmean(v) for k, v in pooled.items()}
        out["dice_per_case"] = float(np.mean([c["dice"] for c in per_case]))
        out.update(surface.summarize(per_case))
        if len(self.names) > 1 and per_case:
            hd95 = np.stack(self.class_hd95)  # [cases, K']
            for i, name in enumerate(self.names):
                for m in PER_CLASS:
                    out[f"{m}/{name}"] = float(pooled[m][i])
                both = np.isfinite(hd95[:, i])  # both masks non-empty
                for m in ("hd95", "assd"):
                    values = np.array([c[f"{m}/{name}"] for c in per_case])[both]
                    out[f"{m}_mm/{name}"] = float(np.mean(values)) if values.size else float("nan")
                out[f"hd95_empty_cases/{name}"] = float(np.isinf(hd95[:, i]).sum())
        if self.unlabelled:
            out["unlabelled_cases"] = float(len(self.unlabelled))
        return out


class SplitEvaluation(_PerClass):
    """Whole-image evaluation of a split whose cases all have the patch's shape.

    Metrics: ``dice``, ``iou``, ``sensitivity``, ``specificity``, ``precision`` from the pooled
    voxel counts of the whole split (per class, then their foreground mean: ``_PerClass``),
    ``dice_per_case`` (mean over cases, a case with empty reference and prediction scoring 1),
    ``loss``, and ``hd95_mm``, ``assd_mm``, ``hd95_empty_cases``, ``hd95_both_empty_cases`` by
    the rule of ``metrics.surface`` (means over the cases where both masks are non-empty; a case
    with one empty mask is NaN per case and counted, never 0); one row per case; per-class keys
    for multi-class and region runs; and, if asked, the predicted label maps by case index.
    Inputs: the eval step over ``pipeline.eval_batches``.

    Args:
      source: the split's cases.
      spacings: per case, the mm spacing of the stored grid (None: 1 per axis).
      num_classes: ``K`` of the model (1 or 2: binary).
      connectivity: the surface's neighbours (``eval.surface_connectivity``).
      regions: ``data.regions`` (``metrics.regions``), or ``()`` for plain classes.
      class_names: ``data.class_names`` (default names: ``metrics.regions.names``).
    """

    def __init__(
        self,
        source: sources.StoreSource,
        *,
        keep_predictions: bool = False,
        spacings: list[tuple[float, ...]] | None = None,
        num_classes: int = 2,
        connectivity: str = "face",
        regions: regions_lib.Regions = (),
        class_names: tuple[str, ...] = (),
    ):
        self.source, self.keep_predictions = source, keep_predictions
        self.spacings, self.connectivity = spacings, connectivity
        self.inputs = base.Batches(lambda batch_size: pipeline.eval_batches(source, batch_size))
        self._setup(num_classes, regions, class_names)
        self.loss_sum = 0.0

    def accumulate(self, out: dict[str, np.ndarray], batch: dict[str, np.ndarray]) -> None:
        """Adds one batch: ``out`` holds per-example ``tp/fp/fn/tn [B, K']``, ``loss [B]`` and
        ``pred [B, *spatial]``; rows with ``batch["valid"]`` False are padding."""
        valid = batch["valid"]
        counts = {k: np.asarray(out[k], np.float64)[valid] for k in self.totals}  # [n, K']
        indices = batch["index"][valid]
        pred = np.asarray(out["pred"])[valid]
        labels = np.asarray(batch["label"])[valid]
        losses = np.asarray(out["loss"], np.float64)[valid]
        for row, index in enumerate(indices):
            if self._skip_unlabelled(int(index), pred[row]):
                continue
            self.loss_sum += float(losses[row])
            distances = surface.class_distances(
                self._masks(pred[row]),
                self._masks(labels[row]),
                self._spacing(int(index), pred.ndim - 1),
                connectivity=self.connectivity,
            )
            self._add_case(int(index), {k: v[row] for k, v in counts.items()}, distances)
            if self.keep_predictions:
                self.result.predictions[int(index)] = pred[row].astype(np.uint8)

    def _spacing(self, index: int, ndim: int) -> tuple[float, ...]:
        return tuple(self.spacings[index]) if self.spacings else (1.0,) * ndim

    def finalize(self) -> base.EvalResult:
        """The split's ``EvalResult``."""
        self.result.metrics = self._split_metrics()
        if self.result.per_case:
            self.result.metrics["loss"] = self.loss_sum / len(self.result.per_case)
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


# Label colours of the sample grids (RGB), label value i -> PALETTE[i % len]; 0 is black.
PALETTE = np.array(
    [
        (0, 0, 0),
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
    ],
    np.uint8,
)


def colour_labels(labels: np.ndarray) -> np.ndarray:
    """``int[H, W]`` label map -> ``uint8[H, W, 3]``: each label value in its own colour.

    Values beyond the palette reuse it cyclically (never as background).
    """
    labels = np.asarray(labels).astype(np.int64)
    index = np.where(labels > 0, (labels - 1) % (len(PALETTE) - 1) + 1, 0)
    return PALETTE[index]


def sample_grid(
    source: sources.StoreSource, predictions: dict[int, np.ndarray], num: int
) -> np.ndarray | None:
    """Rows of (input | ground truth | prediction) for the first ``num`` predicted cases.

    3D cases show their middle slice. The input is grey; truth and prediction show each label
    value in its own colour (``colour_labels``). Cases of different sizes are padded with black
    to the widest row. Returns ``uint8[sum(H), 3*max(W), 3]`` or None.
    """
    rows = []
    for index in sorted(predictions)[:num]:
        record = source[index]
        image = np.asarray(record["image"][..., 0], np.float32)
        label = np.asarray(record.get("label", np.zeros(image.shape)))
        pred = np.asarray(predictions[index])
        if image.ndim == 3:
            mid = image.shape[0] // 2
            image, label, pred = image[mid], label[mid], pred[mid]
        lo, hi = np.percentile(image, [0.5, 99.5])
        grey = (np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
        grey = np.repeat(grey[..., None], 3, axis=-1)
        rows.append(np.concatenate([grey, colour_labels(label), colour_labels(pred)], axis=1))
    if not rows:
        return None
    width = max(row.shape[1] for row in rows)
    rows = [np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0))) for row in rows]
    return np.concatenate(rows, axis=0)


def check_blend(blend: str) -> None:
    """Raises a ConfigError naming ``eval.blend`` unless it is one of ``sliding_window.BLENDS``."""
    from medjax.evaluate import sliding_window

    if blend not in sliding_window.BLENDS:
        raise errors.ConfigError(
            f"eval.blend={blend!r} is unknown; expected one of {sliding_window.BLENDS}."
        )


class VolumeEvaluation(_PerClass):
    """Sliding-window evaluation of cases of any size, with distance metrics in millimetres.

    Each case is predicted whole (Gaussian-blended windows of ``tile_size``), then scored on
    the host: pooled voxel counts give the split's Dice/IoU/sensitivity/specificity/precision
    (per class, then their foreground mean: ``_PerClass``), and per-case Dice, HD95 and ASSD
    (spacing-aware) are averaged over cases. HD95/ASSD follow ``metrics.surface``: the mean
    over cases where both masks are non-empty; a case with one empty mask is NaN per case and
    counted in ``hd95_empty_cases`` (both empty: ``hd95_both_empty_cases``), never 0.

    Args:
      source: the split's cases.
      spacings: per case, the mm spacing of the stored (preprocessed) grid.
      tile_size, num_classes, step_fraction, mirror_axes, blend: the sliding window, see
        ``sliding_window.sliding_window_predict``.
      connectivity: the surface's neighbours (``eval.surface_connectivity``).
      regions: ``data.regions`` (``metrics.regions``), or ``()`` for plain classes.
      class_names: ``data.class_names`` (default names: ``metrics.regions.names``).

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
        regions: regions_lib.Regions = (),
        class_names: tuple[str, ...] = (),
    ):
        check_blend(blend)
        self.source, self.spacings, self.connectivity = source, spacings, connectivity
        self.keep_predictions = keep_predictions
        self.inputs = base.Windows(
            lambda: ((i, source[i]["image"]) for i in range(len(source))),
            tile_size=tuple(tile_size),
            num_classes=num_classes,
            step_fraction=step_fraction,
            mirror_axes=tuple(mirror_axes),
            blend=blend,
        )
        self._setup(num_classes, regions, class_names)

    def accumulate(self, out: dict[str, np.ndarray], batch: dict[str, np.ndarray]) -> None:
        """Scores one case: ``out["logits"] float32[1, *spatial, K]``, ``batch["index"] [1]``."""
        index = int(batch["index"][0])
        pred = regions_lib.labels_from_logits(np.asarray(out["logits"][0]), self.regions)
        pred = pred.astype(np.uint8)
        if self._skip_unlabelled(index, pred):
            return
        ref = np.asarray(self.source[index]["label"], np.uint8)
        pred_masks, ref_masks = self._masks(pred), self._masks(ref)
        axes = tuple(range(pred.ndim))
        tp = np.count_nonzero(pred_masks & ref_masks, axis=axes).astype(np.float64)
        fp = np.count_nonzero(pred_masks, axis=axes) - tp
        fn = np.count_nonzero(ref_masks, axis=axes) - tp
        counts = {"tp": tp, "fp": fp, "fn": fn, "tn": pred.size - tp - fp - fn}
        distances = surface.class_distances(
            pred_masks, ref_masks, self.spacings[index], connectivity=self.connectivity
        )
        self._add_case(index, counts, distances)
        if self.keep_predictions:
            self.result.predictions[index] = pred

    def finalize(self) -> base.EvalResult:
        """The split's ``EvalResult``."""
        self.result.metrics = self._split_metrics()
        return self.result
