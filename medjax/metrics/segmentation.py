"""Per-case segmentation metrics on the host (numpy/scipy, float64), spacing-aware.

For each foreground class of a full-resolution case: Dice, IoU, sensitivity, specificity,
precision (from voxel counts, with the conventions of ``confusion.from_counts``) and the
surface metrics HD95 and ASSD in millimetres.

Surface metrics (HD95, ASSD): ``medjax.metrics.surface`` (face-connected surface by default,
as MONAI; ``connectivity="full"`` for the 26/8-neighbour one).

Empty masks (conventions, tested): both empty -> dice = iou = 1, hd95 = assd = NaN (undefined,
skipped by the summary, as MONAI); exactly one empty -> dice = iou = 0, hd95 = assd = ``inf``
(a missed or hallucinated structure must not vanish from a mean; a summary mean that contains
one is ``inf``, the median stays finite).
Sensitivity, specificity and precision are NaN where undefined (see ``confusion.from_counts``).
``SegmentationMetrics(max_distance_mm=...)`` replaces ``inf`` by a fixed worst case instead,
as several challenges do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from medjax import errors, registry
from medjax.metrics import confusion, surface
from medjax.metrics import regions as regions_lib

OVERLAP_METRICS = ("dice", "iou", "sensitivity", "specificity", "precision")
DISTANCE_METRICS = ("hd95", "assd")
METRICS = OVERLAP_METRICS + DISTANCE_METRICS


def _foreground_classes(num_classes: int) -> list[int]:
    # num_classes counts background, as the model's K does; K == 1 (sigmoid) means binary.
    return [1] if num_classes <= 2 else list(range(1, num_classes))


def case_metrics(
    pred: npt.ArrayLike,
    ref: npt.ArrayLike,
    *,
    num_classes: int,
    spacing: Sequence[float],
    percentile: float = 95.0,
    connectivity: str = "face",
    regions: regions_lib.Regions = (),
) -> dict[str, np.ndarray]:
    """All metrics of one case, per foreground class (or per label region).

    Args:
      pred: ``int[*spatial]`` predicted label map (class indices; for ``num_classes <= 2``
        any non-zero value is foreground) or a bool mask.
      ref: same shape and meaning, the reference.
      num_classes: ``K`` including background (1 or 2 for binary).
      spacing: mm per voxel along each array axis.
      percentile: the Hausdorff percentile.
      connectivity: surface neighbours, ``"face"`` or ``"full"`` (``surface.surface_voxels``).
      regions: ``data.regions`` (``metrics.regions``): score these label regions instead.

    Returns:
      ``{metric: float64[K']}`` for every name in ``METRICS``, ``K'`` the foreground classes
      (1 for binary, ``K - 1`` otherwise, in class order) or the regions.

    Raises:
      ValueError: shapes differ or ``spacing`` does not match the number of axes.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not fit a {pred.ndim}-D case")
    pred_masks = regions_lib.class_masks(pred, num_classes=num_classes, regions=regions)
    ref_masks = regions_lib.class_masks(ref, num_classes=num_classes, regions=regions)
    out: dict[str, list[float]] = {m: [] for m in METRICS}
    counts = {k: [] for k in confusion.COUNT_KEYS}
    for c in range(pred_masks.shape[-1]):
        p, r = pred_masks[..., c], ref_masks[..., c]
        tp = np.count_nonzero(p & r)
        fp = np.count_nonzero(p) - tp
        fn = np.count_nonzero(r) - tp
        tn = p.size - tp - fp - fn
        for key, value in zip(confusion.COUNT_KEYS, (tp, fp, fn, tn), strict=True):
            counts[key].append(value)
        distances = surface.distance_metrics(
            p, r, spacing, percentile=percentile, connectivity=connectivity
        )
        for key, value in distances.items():
            out[key].append(value)
    overlap = confusion.from_counts({k: np.asarray(v, np.float64) for k, v in counts.items()})
    result = {m: np.asarray(out[m], np.float64) for m in DISTANCE_METRICS}
    result.update({m: overlap[m] for m in OVERLAP_METRICS})
    return {m: result[m] for m in METRICS}


@registry.register("metrics.segmentation", "metrics.SegmentationMetrics")
class SegmentationMetrics:
    """Accumulates per-case metrics over a split and summarises them.

    ``update`` computes one case at a time (full resolution, host), so memory stays flat.
    """

    def __init__(
        self,
        num_classes: int,
        spacing: Sequence[float] | None = None,
        *,
        class_names: Sequence[str] | None = None,
        percentile: float = 95.0,
        max_distance_mm: float | None = None,
        connectivity: str = "face",
    ) -> None:
        """Initialises an empty accumulator.

        Args:
          num_classes: ``K`` including background (1 or 2 for binary).
          spacing: default mm spacing in array axis order, used when ``update`` gets none.
          class_names: optional names of the foreground classes (``K'`` of them) used in
            result keys and rows; default the class indices ``"1"``, ``"2"``, ...
          percentile: the Hausdorff percentile.
          max_distance_mm: if set, an ``inf`` distance (one mask empty) is recorded as this
            value instead.
          connectivity: surface neighbours, ``"face"`` (MONAI's) or ``"full"``.
        """
        surface.check_connectivity(connectivity)
        self.connectivity = connectivity
        self.num_classes = num_classes
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.classes = _foreground_classes(num_classes)
        if class_names is None:
            class_names = [str(c) for c in self.classes]
        if len(class_names) != len(self.classes):
            raise errors.ConfigError(
                f"class_names has {len(class_names)} entries; num_classes={num_classes} has "
                f"{len(self.classes)} foreground classes."
            )
        self.class_names = [str(n) for n in class_names]
        self.percentile = percentile
        self.max_distance_mm = max_distance_mm
        self.reset()

    def reset(self) -> None:
        """Forgets every case."""
        self._cases: list[tuple[str, dict[str, np.ndarray]]] = []

    def update(
        self,
        pred: npt.ArrayLike,
        ref: npt.ArrayLike,
        case_id: str,
        spacing: Sequence[float] | None = None,
    ) -> dict[str, np.ndarray]:
        """Adds one case.

        Args:
          pred: ``int[*spatial]`` predicted label map (2D or 3D, array axis order).
          ref: ``int[*spatial]`` reference label map.
          case_id: identifies the case in ``per_case`` rows and error messages.
          spacing: this case's mm spacing in array axis order; default the constructor's.

        Returns:
          The case's metrics, ``{metric: float64[K']}``.

        Raises:
          DataError: the shapes disagree, or no spacing fits the case.
        """
        spacing = self.spacing if spacing is None else tuple(float(s) for s in spacing)
        if spacing is None:
            raise errors.DataError(f"case {case_id!r}: no spacing given and no default set.")
        try:
            metrics = case_metrics(
                pred,
                ref,
                num_classes=self.num_classes,
                spacing=spacing,
                percentile=self.percentile,
                connectivity=self.connectivity,
            )
        except ValueError as e:
            raise errors.DataError(f"case {case_id!r}: {e}") from e
        if self.max_distance_mm is not None:
            for m in DISTANCE_METRICS:
                metrics[m] = np.where(np.isinf(metrics[m]), self.max_distance_mm, metrics[m])
        self._cases.append((str(case_id), metrics))
        return metrics

    def per_case(self) -> list[dict[str, Any]]:
        """One row per (case, class) for a CSV: ``case_id``, ``class`` and every metric."""
        rows = []
        for case_id, metrics in self._cases:
            for i, name in enumerate(self.class_names):
                row: dict[str, Any] = {"case_id": case_id, "class": name}
                row.update({m: float(metrics[m][i]) for m in METRICS})
                rows.append(row)
        return rows

    def result(self) -> dict[str, float]:
        """Summary over cases, NaN-aware.

        Returns:
          A flat dict: ``"<metric>/<class>/mean"``, ``".../median"``, ``".../std"`` (population
          std) and ``".../count"`` (cases with a defined value) per metric and class;
          ``"<metric>/mean"``, the mean over classes of the per-class means (nnU-Net's
          "foreground mean"); and ``"num_cases"``. NaN values (undefined cases) are skipped;
          an ``inf`` distance makes its mean ``inf``. With no defined value a statistic is NaN.
        """
        out: dict[str, float] = {"num_cases": float(len(self._cases))}
        if not self._cases:
            return out
        for m in METRICS:
            values = np.stack([metrics[m] for _, metrics in self._cases])  # [cases, K']
            class_means = []
            for i, name in enumerate(self.class_names):
                column = values[:, i]
                column = column[~np.isnan(column)]
                defined = column.size > 0
                mean = float(np.mean(column)) if defined else float("nan")
                out[f"{m}/{name}/mean"] = mean
                out[f"{m}/{name}/median"] = float(np.median(column)) if defined else float("nan")
                with np.errstate(invalid="ignore"):  # std of an inf column is NaN, say so.
                    out[f"{m}/{name}/std"] = float(np.std(column)) if defined else float("nan")
                out[f"{m}/{name}/count"] = float(column.size)
                class_means.append(mean)
            class_means = np.asarray(class_means)
            defined_means = class_means[~np.isnan(class_means)]
            out[f"{m}/mean"] = float(np.mean(defined_means)) if defined_means.size else np.nan
        return out
