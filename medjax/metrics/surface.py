"""Surface distances (HD95, ASSD) in millimetres: per mask pair, per case and per split.

Surface. A voxel of a mask is on its surface when it is set and at least one neighbour is not:
``surface = mask XOR erode(mask)``. Which neighbours count is ``connectivity``:

* ``"face"`` (default, the field's convention): the ``2 * ndim`` face neighbours (6 in 3D,
  4 in 2D), as MONAI's ``get_mask_edges`` (``scipy.ndimage.binary_erosion`` with its default
  cross) and medpy;
* ``"full"``: all ``3**ndim - 1`` neighbours (26 / 8). Fewer voxels are surface, so on curved
  shapes HD95 reads up to ~30 % lower and ASSD 12-26 % lower than ``"face"``.

Voxels on the array border are surface (the outside counts as background), as in MONAI, whose
crop keeps a 1-voxel background margin. The distance from a voxel to a surface is
``scipy.ndimage.distance_transform_edt(~surface, sampling=spacing)``: between voxel centres in
mm, anisotropic spacing honoured. With ``d(P->R)`` the distances of the prediction's surface
voxels to the reference surface and ``d(R->P)`` the other way round:

* ``hd95 = max(percentile_95(d(P->R)), percentile_95(d(R->P)))`` (MONAI's
  ``HausdorffDistanceMetric(percentile=95)``, numpy's linear percentile as ``torch.quantile``);
* ``assd = (sum d(P->R) + sum d(R->P)) / (|P| + |R|)`` (MONAI's symmetric
  ``SurfaceDistanceMetric``).

Empty masks, per pair: both empty -> NaN (undefined, MONAI's "not nan" count excludes it);
exactly one empty -> ``inf``.

Per split (``case_surface`` and ``summarize``): the split's ``hd95_mm`` / ``assd_mm`` are the
mean over the cases where both masks are non-empty. A case with exactly one empty mask (a missed
or hallucinated structure) is reported per case as NaN, never 0, and counted in
``hd95_empty_cases``; a case with both masks empty is excluded and counted in
``hd95_both_empty_cases``. A model that predicts nothing therefore reports ``hd95_mm = NaN`` and
the number of cases it missed, never 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from medjax import errors
from medjax.metrics import regions as regions_lib

CONNECTIVITIES = ("face", "full")
# Per-case surface status, a column of per_case.csv.
OK, ONE_EMPTY, BOTH_EMPTY = "ok", "one_empty", "both_empty"


def check_connectivity(connectivity: str) -> None:
    """Raises a ConfigError naming ``eval.surface_connectivity`` unless it is known."""
    if connectivity not in CONNECTIVITIES:
        raise errors.ConfigError(
            f"eval.surface_connectivity={connectivity!r} is unknown; expected one of "
            f"{CONNECTIVITIES}."
        )


def surface_voxels(mask: npt.ArrayLike, connectivity: str = "face") -> np.ndarray:
    """Boundary voxels of a binary mask: ``mask XOR erode(mask)``.

    Args:
      mask: ``bool[*spatial]`` (2D or 3D).
      connectivity: ``"face"`` (a voxel is inside when its ``2 * ndim`` face neighbours are set)
        or ``"full"`` (all ``3**ndim - 1`` neighbours).

    Returns:
      ``bool[*spatial]``, True on the mask's surface.
    """
    check_connectivity(connectivity)
    mask = np.asarray(mask, bool)
    rank = 1 if connectivity == "face" else mask.ndim
    structure = ndimage.generate_binary_structure(mask.ndim, rank)
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
    pred: npt.ArrayLike,
    ref: npt.ArrayLike,
    spacing: Sequence[float],
    connectivity: str = "face",
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of one mask to the other mask's surface.

    Args:
      pred: ``bool[*spatial]``, non-empty.
      ref: ``bool[*spatial]``, non-empty, same shape.
      spacing: mm per voxel along each array axis (``len == ndim``).
      connectivity: see ``surface_voxels``.

    Returns:
      ``(d_pred_to_ref, d_ref_to_pred)``: float64 vectors with one entry per surface voxel of
      ``pred`` and of ``ref``, respectively.
    """
    pred, ref = _crop_to_union(np.asarray(pred, bool), np.asarray(ref, bool))
    pred_surface = surface_voxels(pred, connectivity)
    ref_surface = surface_voxels(ref, connectivity)
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    return to_ref[pred_surface].astype(np.float64), to_pred[ref_surface].astype(np.float64)


def distance_metrics(
    pred: npt.ArrayLike,
    ref: npt.ArrayLike,
    spacing: Sequence[float],
    *,
    percentile: float = 95.0,
    connectivity: str = "face",
) -> dict[str, float]:
    """HD95 and ASSD in mm of two binary masks (both empty: NaN; one empty: ``inf``).

    Args:
      pred: ``bool[*spatial]``.
      ref: ``bool[*spatial]``, same shape.
      spacing: mm per voxel along each array axis.
      percentile: the Hausdorff percentile (the key stays ``hd95``).
      connectivity: see ``surface_voxels``.

    Returns:
      ``{"hd95": float, "assd": float}``.
    """
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    pred_any, ref_any = pred.any(), ref.any()
    if not pred_any and not ref_any:
        return {"hd95": float("nan"), "assd": float("nan")}
    if not pred_any or not ref_any:
        return {"hd95": float("inf"), "assd": float("inf")}
    d_pr, d_rp = directed_surface_distances(pred, ref, spacing, connectivity)
    hd = max(np.percentile(d_pr, percentile), np.percentile(d_rp, percentile))
    assd = (d_pr.sum() + d_rp.sum()) / (d_pr.size + d_rp.size)
    return {"hd95": float(hd), "assd": float(assd)}


def class_distances(
    pred_masks: npt.ArrayLike,
    ref_masks: npt.ArrayLike,
    spacing: Sequence[float],
    *,
    connectivity: str = "face",
    percentile: float = 95.0,
) -> dict[str, np.ndarray]:
    """``distance_metrics`` of each class/region channel of one case.

    Args:
      pred_masks: ``bool[*spatial, K']`` (``regions.class_masks`` of the prediction).
      ref_masks: ``bool[*spatial, K']``, the reference's.
      spacing: mm per voxel along each spatial axis.
      connectivity: see ``surface_voxels``.
      percentile: the Hausdorff percentile.

    Returns:
      ``{"hd95": float64[K'], "assd": float64[K']}`` (NaN: both empty; inf: one empty).
    """
    pred_masks, ref_masks = np.asarray(pred_masks, bool), np.asarray(ref_masks, bool)
    values = [
        distance_metrics(
            pred_masks[..., i],
            ref_masks[..., i],
            spacing,
            percentile=percentile,
            connectivity=connectivity,
        )
        for i in range(pred_masks.shape[-1])
    ]
    return {k: np.array([v[k] for v in values], np.float64) for k in ("hd95", "assd")}


def case_surface(
    pred: npt.ArrayLike,
    ref: npt.ArrayLike,
    spacing: Sequence[float],
    *,
    num_classes: int,
    connectivity: str = "face",
    percentile: float = 95.0,
    regions: regions_lib.Regions = (),
) -> dict[str, Any]:
    """One case's per-case row entries ``hd95``, ``assd`` (mm) and ``surface`` (its status).

    Multi-class: the mean over the foreground classes where both masks are non-empty; if any
    class has exactly one empty mask, the case is ``one_empty`` and its distances are NaN; if
    every class has both masks empty it is ``both_empty`` (NaN).

    Args:
      pred: ``int[*spatial]`` predicted label map (``num_classes <= 2``: non-zero is foreground).
      ref: same shape, the reference label map.
      spacing: mm per voxel along each array axis.
      num_classes: ``K`` including background (1 or 2 for binary).
      connectivity: see ``surface_voxels``.
      percentile: the Hausdorff percentile.
      regions: ``data.regions``: score these label regions instead of classes.

    Returns:
      ``{"hd95": float, "assd": float, "surface": "ok" | "one_empty" | "both_empty"}``.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    masks = [
        regions_lib.class_masks(x, num_classes=num_classes, regions=regions) for x in (pred, ref)
    ]
    d = class_distances(*masks, spacing, connectivity=connectivity, percentile=percentile)
    return case_surface_from_classes(d["hd95"], d["assd"])


def case_surface_from_classes(hd95: npt.ArrayLike, assd: npt.ArrayLike) -> dict[str, Any]:
    """A case's row entries from its per-class distances (``distance_metrics``'s conventions).

    Args:
      hd95: ``float[K']`` per foreground class (NaN: both masks empty; inf: one empty).
      assd: ``float[K']``, same.

    Returns:
      As ``case_surface``: NaN distances and ``one_empty`` if any class has one empty mask,
      ``both_empty`` if every class has both empty, else the means over the defined classes.
    """
    hd, assd = np.asarray(hd95, np.float64), np.asarray(assd, np.float64)
    if np.isinf(hd).any():
        return {"hd95": float("nan"), "assd": float("nan"), "surface": ONE_EMPTY}
    if np.isnan(hd).all():
        return {"hd95": float("nan"), "assd": float("nan"), "surface": BOTH_EMPTY}
    return {"hd95": float(np.nanmean(hd)), "assd": float(np.nanmean(assd)), "surface": OK}


def surface_metrics_for_batch(
    preds: npt.ArrayLike,
    refs: npt.ArrayLike,
    spacings: Sequence[Sequence[float]],
    *,
    num_classes: int,
    connectivity: str = "face",
) -> list[dict[str, Any]]:
    """``case_surface`` of each row of a batch (e.g. the whole-image eval step's ``pred``).

    Args:
      preds: ``int[n, *spatial]`` predicted label maps.
      refs: ``int[n, *spatial]`` reference label maps.
      spacings: ``n`` mm spacings in array axis order.
      num_classes: ``K`` including background.
      connectivity: see ``surface_voxels``.

    Returns:
      ``n`` dicts as ``case_surface`` returns.
    """
    preds, refs = np.asarray(preds), np.asarray(refs)
    return [
        case_surface(p, r, s, num_classes=num_classes, connectivity=connectivity)
        for p, r, s in zip(preds, refs, spacings, strict=True)
    ]


def summarize(per_case: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Split-level surface metrics from per-case rows holding ``case_surface``'s entries.

    Returns:
      ``hd95_mm`` and ``assd_mm`` (mean over ``ok`` cases; NaN when there is none),
      ``hd95_empty_cases`` (cases with exactly one empty mask) and ``hd95_both_empty_cases``.
    """
    ok = [c for c in per_case if c["surface"] == OK]
    out = {
        f"{k}_mm": float(np.mean([c[k] for c in ok])) if ok else float("nan")
        for k in ("hd95", "assd")
    }
    out["hd95_empty_cases"] = float(sum(c["surface"] == ONE_EMPTY for c in per_case))
    out["hd95_both_empty_cases"] = float(sum(c["surface"] == BOTH_EMPTY for c in per_case))
    return out
