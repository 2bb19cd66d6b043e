"""Per-case segmentation metrics on the host (numpy/scipy, float64), spacing-aware.

For each foreground class of a full-resolution case: Dice, IoU, sensitivity, specificity,
precision (from voxel counts, with the conventions of ``confusion.from_counts``) and the
surface metrics HD95 and ASSD in millimetres.

Surface metrics. The surface of a mask is its boundary voxels, ``mask XOR erode(mask)`` with
full connectivity (a voxel is inside only if all its ``3**n - 1`` neighbours are; voxels on the
array border count as surface, as if the outside were background). The distance from a voxel
to a surface is ``scipy.ndimage.distance_transform_edt(~surface, sampling=spacing)``, i.e.
between voxel centres in mm with anisotropic spacing. With ``d(P->R)`` the distances of the
prediction's surface voxels to the reference surface and ``d(R->P)`` the other way round:

* ``hd95 = max(percentile_95(d(P->R)), percentile_95(d(R->P)))`` (MONAI's and DeepMind's
  ``surface-distance`` "robust Hausdorff", unweighted voxels, numpy's linear percentile);
* ``assd = (sum d(P->R) + sum d(R->P)) / (|P| + |R|)`` over surface voxels.

Empty masks (conventions, tested): both empty -> dice = iou = 1, hd95 = assd = 0; exactly one
empty -> dice = iou = 0, hd95 = assd = ``inf`` (a missed or hallucinated structure must not
vanish from a mean; a summary mean that contains one is ``inf``, the median stays finite).
Sensitivity, specificity and precision are NaN where undefined (see ``confusion.from_counts``).
``SegmentationMetrics(max_distance_mm=...)`` replaces ``inf`` by a fixed worst case instead,
as several challenges do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from medjax import errors, registry
from medjax.metrics import confusion

OVERLAP_METRICS = ("dice", "iou", "sensitivity", "specificity", "precision")
DISTANCE_METRICS = ("hd95", "assd")
METRICS = OVERLAP_METRICS + DISTANCE_METRICS


def surface_voxels(mask: npt.ArrayLike) -> np.ndarray:
    """Boundary voxels of a binary mask: ``mask XOR erode(mask)``, full connectivity.

    Args:
      mask: ``bool[*spatial]`` (2D or 3D).

    Returns:
      ``bool[*spatial]``, True on the mask's surface.
    """
    mask = np.asarray(mask, bool)
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    # border_value=0: voxels on the array border are surface, as if the outside were empty.
    eroded = ndimage.binary_erosion(mask, structure=structure, border_value=0)
    return mask ^ eroded


def _crop_to_union(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to their joint bounding box plus a 1-voxel empty margin.

    Distances between surfaces inside the box are unchanged, and the zero margin reproduces
    the array-border rule of ``surface_voxels``, so results are identical while the distance
    transforms run on a small box instead of a whole CT.
    """
    union = pred | ref
    box = tuple(slice(s.start, s.stop) for s in ndimage.find_objects(union.astype(np.uint8))[0])
    return np.pad(pred[box], 1), np.pad(ref[box], 1)


def directed_surface_distances(
    pred: npt.ArrayLike, ref: npt.ArrayLike, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of one mask to the other mask's surface.

    Args:
      pred: ``bool[*spatial]``, non-empty.
      ref: ``bool[*spatial]``, non-empty, same shape.
      spacing: mm per voxel along each array axis (``len == ndim``).

    Returns:
      ``(d_pred_to_ref, d_ref_to_pred)``: float64 vectors with one entry per surface voxel of
      ``pred`` and of ``ref``, respectively.
    """
    pred, ref = _crop_to_union(np.asarray(pred, bool), np.asarray(ref, bool))
    pred_surface, ref_surface = surface_voxels(pred), surface_voxels(ref)
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    return to_ref[pred_surface].astype(np.float64), to_pred[ref_surface].astype(np.float64)


def distance_metrics(
    pred: npt.ArrayLike,
    ref: npt.ArrayLike,
    spacing: Sequence[float],
    *,
    percentile: float = 95.0,
) -> dict[str, float]:
    """HD95 and ASSD in mm of two binary masks, with the empty-mask conventions above.

    Args:
      pred: ``bool[*spatial]``.
      ref: ``bool[*spatial]``, same shape.
      spacing: mm per voxel along each array axis.
      percentile: the Hausdorff percentile (the key stays ``hd95``).

    Returns:
      ``{"hd95": float, "assd": float}``.
    """
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    pred_any, ref_any = pred.any(), ref.any()
    if not pred_any and not ref_any:
        return {"hd95": 0.0, "assd": 0.0}
    if not pred_any or not ref_any:
        return {"hd95": float("inf"), "assd": float("inf")}
    d_pr, d_rp = directed_surface_distances(pred, ref, spacing)
    hd = max(np.percentile(d_pr, percentile), np.percentile(d_rp, percentile))
    assd = (d_pr.sum() + d_rp.sum()) / (d_pr.size + d_rp.size)
    return {"hd95": float(hd), "assd": float(assd)}


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
) -> dict[str, np.ndarray]:
    """All metrics of one case, per foreground class.

    Args:
      pred: ``int[*spatial]`` predicted label map (class indices; for ``num_classes <= 2``
        any non-zero value is foreground) or a bool mask.
      ref: same shape and meaning, the reference.
      num_classes: ``K`` including background (1 or 2 for binary).
      spacing: mm per voxel along each array axis.
      percentile: the Hausdorff percentile.

    Returns:
      ``{metric: float64[K']}`` for every name in ``METRICS``, ``K'`` the foreground classes
      (1 for binary, ``K - 1`` otherwise, in class order).

    Raises:
      ValueError: shapes differ or ``spacing`` does not match the number of axes.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not fit a {pred.ndim}-D case")
    classes = _foreground_classes(num_classes)
    out: dict[str, list[float]] = {m: [] for m in METRICS}
    counts = {k: [] for k in confusion.COUNT_KEYS}
    for c in classes:
        p = pred != 0 if num_classes <= 2 else pred == c
        r = ref != 0 if num_classes <= 2 else ref == c
        tp = np.count_nonzero(p & r)
        fp = np.count_nonzero(p) - tp
        fn = np.count_nonzero(r) - tp
        tn = p.size - tp - fp - fn
        for key, value in zip(confusion.COUNT_KEYS, (tp, fp, fn, tn), strict=True):
            counts[key].append(value)
        for key, value in distance_metrics(p, r, spacing, percentile=percentile).items():
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
        """
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
