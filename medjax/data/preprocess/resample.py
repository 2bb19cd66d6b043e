"""Resampling of images and label maps to a new spacing or shape (scipy.ndimage, host side).

All resampling uses scipy's ``grid_mode=True``: a voxel is a cell of ``spacing`` mm, and the
physical extent of the grid (edge to edge) is kept. Then the new spacing is exactly
``spacing * old_shape / new_shape`` and the first voxel centre moves by half the spacing change,
which ``resampled_geometry`` returns, so resampling composes with the ``Volume`` geometry and
can be undone by resampling back to the old shape.

Arrays are ``[*spatial]`` or ``[*spatial, C]`` (channels-last); ``spacing`` has one entry per
spatial axis, which tells the two apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medjax import errors

LABEL_MODES = ("nearest", "linear_per_label")


def shape_for_spacing(
    shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]
) -> tuple[int, ...]:
    """Voxel counts that cover the same extent at ``new_spacing`` (at least 1 per axis)."""
    if len(shape) != len(spacing) or len(spacing) != len(new_spacing):
        raise errors.DataError(f"shape {shape}, spacing {spacing}, new {new_spacing} disagree.")
    return tuple(
        max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, new_spacing, strict=True)
    )


def resampled_geometry(
    shape: Sequence[int],
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: np.ndarray,
    new_shape: Sequence[int],
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Spacing and origin of the grid after resampling ``shape`` -> ``new_shape`` (grid mode).

    Returns:
      ``(new_spacing, new_origin)``, both in array axis order; the direction is unchanged.
    """
    spacing_arr = np.asarray(spacing, np.float64)
    new_spacing = spacing_arr * np.asarray(shape, np.float64) / np.asarray(new_shape, np.float64)
    # The grid's outer edge stays put: the first centre sits half a (new) voxel inside it.
    shift = np.asarray(direction, np.float64) @ ((new_spacing - spacing_arr) / 2.0)
    return tuple(new_spacing.tolist()), tuple((np.asarray(origin, np.float64) + shift).tolist())


def _target_shape(
    spatial: tuple[int, ...],
    spacing: Sequence[float] | None,
    new_spacing: Sequence[float] | None,
    shape: Sequence[int] | None,
) -> tuple[int, ...]:
    if shape is not None:
        if len(shape) != len(spatial):
            raise errors.DataError(f"target shape {tuple(shape)} does not fit {spatial}.")
        return tuple(int(s) for s in shape)
    if spacing is None or new_spacing is None:
        raise errors.DataError("resampling needs spacing and new_spacing, or shape.")
    return shape_for_spacing(spatial, spacing, new_spacing)


def _zoom(array: np.ndarray, new_shape: tuple[int, ...], order: int) -> np.ndarray:
    if array.shape == new_shape:
        return array
    factors = [n / o for n, o in zip(new_shape, array.shape, strict=True)]
    out = ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True)
    assert out.shape == new_shape, (out.shape, new_shape)  # scipy rounds shape * factor
    return out


def resample_image(
    array: np.ndarray,
    spacing: Sequence[float] | None,
    new_spacing: Sequence[float] | None,
    order: int = 3,
    *,
    shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Resamples an image with a spline of ``order`` (per channel).

    Args:
      array: ``[*spatial]`` or ``[*spatial, C]``.
      spacing: current mm spacing per spatial axis (array axis order).
      new_spacing: wanted mm spacing; the output shape is ``round(shape * spacing / new)``.
      order: spline order (0 nearest, 1 linear, 3 cubic).
      shape: exact output spatial shape instead of ``new_spacing`` (resize, inversion).

    Returns:
      float32 ``[*new_spatial]`` or ``[*new_spatial, C]``.
    """
    reference = shape if shape is not None else spacing
    if reference is None:
        raise errors.DataError("resample_image needs spacing and new_spacing, or shape.")
    n = len(reference)
    has_channels = array.ndim == n + 1
    spatial = tuple(array.shape[:n])
    new_shape = _target_shape(spatial, spacing, new_spacing, shape)
    array = np.asarray(array, np.float32)
    if not has_channels:
        return _zoom(array, new_shape, order)
    return np.stack([_zoom(array[..., c], new_shape, order) for c in range(array.shape[-1])], -1)


def resample_label(
    label: np.ndarray,
    spacing: Sequence[float] | None,
    new_spacing: Sequence[float] | None,
    mode: str = "nearest",
    *,
    shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Resamples a label map without ever blending label values.

    Args:
      label: integer ``[*spatial]``.
      spacing: current mm spacing per axis.
      new_spacing: wanted mm spacing.
      mode: ``"nearest"`` (order 0) or ``"linear_per_label"``: each label's indicator is
        resampled linearly and every output voxel takes the label with the highest value (ties go
        to the smaller label), as nnU-Net does; smoother boundaries than nearest.
      shape: exact output shape instead of ``new_spacing``.

    Returns:
      ``[*new_spatial]`` with ``label``'s dtype, holding only values present in ``label``.
    """
    if mode not in LABEL_MODES:
        raise errors.ConfigError(f"label resampling mode {mode!r}; allowed: {LABEL_MODES}.")
    new_shape = _target_shape(tuple(label.shape), spacing, new_spacing, shape)
    if mode == "nearest":
        return _zoom(label, new_shape, 0).astype(label.dtype)
    values = np.unique(label)
    out = np.full(new_shape, values[0], label.dtype)
    best = np.full(new_shape, -np.inf, np.float32)
    # One label at a time keeps memory at two output-sized arrays instead of K.
    for value in values:
        score = _zoom((label == value).astype(np.float32), new_shape, 1)
        better = score > best
        out[better] = value
        best[better] = score[better]
    return out
