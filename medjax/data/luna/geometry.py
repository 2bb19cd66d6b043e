"""World millimetres <-> voxel indices for LUNA16 coordinates.

LUNA16's ``coordX, coordY, coordZ`` are ITK physical points, i.e. LPS millimetres in ``x, y, z``
order. A ``medjax.data.io.volume.Volume`` keeps its world coordinates in the same LPS ``x, y, z``
order (the DICOM and ITK readers store the ImagePositionPatient / ITK origin as is), while its
``spacing`` and the *columns* of ``direction`` follow the array axis order ``(D, H, W)``:

    world_xyz = origin + direction @ (spacing * index_dhw)

so ``index_dhw = (direction^-1 @ (world_xyz - origin)) / spacing``. For an ITK image this is
``TransformPhysicalPointToContinuousIndex`` with its ``(i, j, k)`` result reversed. The direction
is inverted (not transposed) so a slightly non-orthonormal matrix from a real header still maps
back exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from medjax.data.io import volume as volume_lib

GeometryLike = volume_lib.Volume | Mapping[str, Any]


def _geometry(geometry: GeometryLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(origin[3], spacing[3], direction[3, 3])`` from a Volume or a props dict."""
    if isinstance(geometry, volume_lib.Volume):
        origin, spacing, direction = geometry.origin, geometry.spacing, geometry.direction
    else:
        origin, spacing = geometry["origin"], geometry["spacing_mm"]
        direction = geometry["direction"]
    origin = np.asarray(origin, dtype=np.float64)
    spacing = np.asarray(spacing, dtype=np.float64)
    direction = np.asarray(direction, dtype=np.float64)
    if origin.shape != (3,) or spacing.shape != (3,) or direction.shape != (3, 3):
        raise ValueError(
            f"Need 3D geometry, got origin {origin.shape}, spacing {spacing.shape}, "
            f"direction {direction.shape}."
        )
    return origin, spacing, direction


def world_to_voxel(world_xyz: np.ndarray, volume: GeometryLike) -> np.ndarray:
    """Maps LPS world points (LUNA's ``coordX, coordY, coordZ``) to continuous voxel indices.

    Args:
      world_xyz: ``float[..., 3]`` LPS millimetres in ``x, y, z`` order.
      volume: a 3D ``Volume`` or its ``geometry()`` dict (``origin``, ``spacing_mm``,
        ``direction`` in the Volume convention).

    Returns:
      ``float64[..., 3]`` continuous indices in array axis order ``(D, H, W)``; integer values
      are voxel centres, so the nearest voxel is ``np.rint`` of the result.
    """
    origin, spacing, direction = _geometry(volume)
    offset = np.asarray(world_xyz, dtype=np.float64) - origin
    return np.linalg.solve(direction, offset[..., None])[..., 0] / spacing


def voxel_to_world(index_dhw: np.ndarray, volume: GeometryLike) -> np.ndarray:
    """Maps continuous voxel indices ``(D, H, W)`` to LPS world points ``(x, y, z)``.

    Args:
      index_dhw: ``float[..., 3]`` indices in array axis order.
      volume: a 3D ``Volume`` or its ``geometry()`` dict.

    Returns:
      ``float64[..., 3]`` LPS millimetres (LUNA's ``coordX, coordY, coordZ``).
    """
    origin, spacing, direction = _geometry(volume)
    index = np.asarray(index_dhw, dtype=np.float64)
    return origin + (index * spacing) @ direction.T


def nearest_voxel(index_dhw: np.ndarray) -> np.ndarray:
    """``int64[..., 3]``: the voxel whose centre is nearest (halves round up)."""
    index = np.asarray(index_dhw, dtype=np.float64)
    # np.rint rounds half to even, which would move a point at exactly .5 by a parity rule;
    # floor(x + 0.5) is the usual "voxel containing the point" rule.
    return np.floor(index + 0.5).astype(np.int64)


def inside(index_dhw: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``bool[...]``: whether the nearest voxel of each index lies in an array of ``shape``."""
    voxel = nearest_voxel(index_dhw)
    return np.all((voxel >= 0) & (voxel < np.asarray(shape[:3])), axis=-1)
