"""Geometry of the built-in 3D volumes (``synthetic.lesion3d``): an oblique axial slab placed
in the world, and some cases stored with their voxel order flipped (the affine saying so), as
real scanners write them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# World (LPS) unit vectors of the generation frame's array axes (D, H, W): D -> superior (+z),
# H -> posterior (+y), W -> patient left (+x). Columns are array axes (Volume convention).
_GENERATION_DIRECTION = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def _rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def random_geometry(
    rng: np.random.Generator,
    shape: Sequence[int],
    spacing_mm: Sequence[float],
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """The generation frame's placement in the world, and the axes stored reversed.

    The axial slab is tilted 5-15 degrees about the left-right axis (angled to the cord, as
    spine protocols do), up to 5 degrees about the superior axis, and centred near the origin.

    Args:
      rng: the case's generator.
      shape: ``(D, H, W)`` voxels.
      spacing_mm: ``(D, H, W)`` mm.

    Returns:
      ``(direction float64[3, 3], origin float64[3], flip_axes)``: the LPS direction (columns
      are array axes) and origin of the *generation-frame* array, and the array axes to reverse
      before writing (``stored_geometry`` turns these into the stored affine).
    """
    tilt = rng.choice([-1.0, 1.0]) * rng.uniform(5.0, 15.0)
    direction = _rotation(2, rng.uniform(-5.0, 5.0)) @ _rotation(0, tilt) @ _GENERATION_DIRECTION
    centre = rng.uniform(-20.0, 20.0, 3)
    half_extent = np.asarray(spacing_mm, float) * (np.asarray(shape, float) - 1) / 2
    origin = centre - direction @ half_extent
    # Scanners differ in which way they store rows, columns and slices; the affine says which.
    patterns = ((), (2,), (1, 2), (0,), (0, 1, 2))
    flip_axes = patterns[rng.choice(len(patterns), p=[0.4, 0.2, 0.2, 0.1, 0.1])]
    return direction, origin, flip_axes


def stored_geometry(
    direction: np.ndarray,
    origin: np.ndarray,
    shape: Sequence[int],
    spacing_mm: Sequence[float],
    flip_axes: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """Direction and origin of the array after reversing ``flip_axes``.

    The world position of every voxel is unchanged: index ``i`` along a reversed axis is old
    index ``n - 1 - i``, so that axis' direction column changes sign and the origin moves to the
    old last voxel.

    Returns:
      ``(direction float64[3, 3], origin float64[3])``.
    """
    direction = np.array(direction, float)
    origin = np.array(origin, float)
    for axis in flip_axes:
        origin = origin + direction[:, axis] * spacing_mm[axis] * (shape[axis] - 1)
        direction[:, axis] = -direction[:, axis]
    return direction, origin
