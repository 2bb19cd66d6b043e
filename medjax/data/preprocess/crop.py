"""Foreground bounding boxes, cropping, and padding a crop back to the full grid.

A box is a list of half-open ``(lo, hi)`` index pairs, one per leading spatial axis; arrays may
carry trailing (channel) axes, which are never cropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

Box = list[tuple[int, int]]


def nonzero_mask(image: np.ndarray, ndim_spatial: int) -> np.ndarray:
    """The body mask: voxels where any channel is nonzero, with holes filled (nnU-Net).

    Args:
      image: ``[*spatial]`` or ``[*spatial, C]``.
      ndim_spatial: number of spatial axes.

    Returns:
      bool ``[*spatial]``.
    """
    mask = image != 0
    if image.ndim > ndim_spatial:
        mask = mask.any(axis=tuple(range(ndim_spatial, image.ndim)))
    return ndimage.binary_fill_holes(mask)


def bbox(mask: np.ndarray, margin: int = 0) -> Box:
    """Half-open bounding box of the True voxels, grown by ``margin`` and clipped to the grid.

    An empty mask gives the whole grid (nothing to crop away is better than an empty case).
    """
    if not mask.any():
        return [(0, n) for n in mask.shape]
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append((max(0, int(hit[0]) - margin), min(mask.shape[axis], int(hit[-1]) + 1 + margin)))
    return box


def crop(array: np.ndarray, box: Sequence[Sequence[int]]) -> np.ndarray:
    """``array[lo0:hi0, lo1:hi1, ...]`` over the leading ``len(box)`` axes (a view)."""
    return array[tuple(slice(lo, hi) for lo, hi in box)]


def uncrop(
    array: np.ndarray,
    box: Sequence[Sequence[int]],
    shape: Sequence[int],
    fill: float | np.ndarray = 0,
) -> np.ndarray:
    """Places a crop back into a grid of spatial ``shape`` filled with ``fill``.

    Args:
      array: ``[*crop_spatial, ...]`` (the crop, with any trailing axes).
      box: the box it was cropped with.
      shape: spatial shape of the full grid.
      fill: background value; an array broadcasts over trailing axes (e.g. a one-hot background
        for probabilities).

    Returns:
      ``[*shape, ...]`` of ``array``'s dtype.
    """
    full = np.empty(tuple(shape) + array.shape[len(box) :], array.dtype)
    full[...] = fill
    full[tuple(slice(lo, hi) for lo, hi in box)] = array
    return full


def cropped_origin(
    origin: Sequence[float], spacing: Sequence[float], direction: np.ndarray, box: Box
) -> tuple[float, ...]:
    """World position of the crop's first voxel centre."""
    lo = np.asarray([b[0] for b in box], np.float64)
    shift = np.asarray(direction, np.float64) @ (lo * np.asarray(spacing, np.float64))
    return tuple((np.asarray(origin, np.float64) + shift).tolist())
