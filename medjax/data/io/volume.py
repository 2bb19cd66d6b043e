"""``Volume``: an image array plus the geometry that places it in the patient.

Conventions (stated once, here, for all of medjax):

* **Array axis order** is ``(D, H, W)`` for 3D and ``(H, W)`` for 2D, with an optional trailing
  channel axis ``C``. For a DICOM series or an ITK/MetaImage volume, ``D`` runs along the slice
  normal, ``H`` along the image rows (DICOM's column direction cosine) and ``W`` along the columns;
  i.e. ``array[k, j, i]`` is ITK's voxel index ``(i, j, k)``.
* **World coordinates** are patient **LPS** in millimetres (DICOM and ITK's convention). NIfTI's
  RAS is converted on read and back on write.
* ``spacing``, ``origin`` and ``direction`` are **in array axis order**: ``spacing[a]`` is the
  step in mm along array axis ``a``; ``direction[:, a]`` is the unit world (LPS) vector of array
  axis ``a``; ``origin`` is the world position of the centre of voxel index ``(0, 0, 0)``.
  Then ``world = origin + direction @ (spacing * index)``, which ``affine`` packs as a
  ``(n+1) x (n+1)`` homogeneous matrix acting on indices in array axis order.

Geometry never enters jitted code: it travels as numpy on the host.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class Volume:
    """An image (or label map) with its geometry.

    Attributes:
      array: ``[D, H, W]`` / ``[D, H, W, C]`` (3D) or ``[H, W]`` / ``[H, W, C]`` (2D) voxels.
      spacing: millimetres per voxel along each spatial array axis.
      origin: LPS world position (mm) of the centre of the first voxel.
      direction: ``[n, n]`` matrix whose column ``a`` is the LPS unit vector of array axis ``a``.
      meta: source metadata (file path, modality, series uid, ...): plain JSON-able values.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: np.ndarray
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=np.float64)
        n = len(self.spacing)
        if len(self.origin) != n or self.direction.shape != (n, n):
            raise ValueError(
                f"Volume geometry disagrees: spacing {self.spacing}, origin {self.origin}, "
                f"direction shape {self.direction.shape}."
            )
        if self.array.ndim not in (n, n + 1):
            raise ValueError(
                f"Volume array of shape {self.array.shape} does not fit {n} spatial axes."
            )

    @property
    def ndim_spatial(self) -> int:
        """Number of spatial axes (2 or 3)."""
        return len(self.spacing)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The array's shape without a channel axis."""
        return tuple(self.array.shape[: self.ndim_spatial])

    @property
    def affine(self) -> np.ndarray:
        """``float64[n+1, n+1]``: array index (array axis order) -> LPS world mm."""
        n = self.ndim_spatial
        affine = np.eye(n + 1)
        affine[:n, :n] = self.direction * np.asarray(self.spacing)[None, :]
        affine[:n, n] = self.origin
        return affine

    def index_to_world(self, index: np.ndarray) -> np.ndarray:
        """Maps ``[..., n]`` (continuous) indices in array axis order to LPS world mm."""
        index = np.asarray(index, dtype=np.float64)
        return np.asarray(self.origin) + (index * np.asarray(self.spacing)) @ self.direction.T

    def world_to_index(self, world: np.ndarray) -> np.ndarray:
        """Maps ``[..., n]`` LPS world mm to continuous indices in array axis order."""
        world = np.asarray(world, dtype=np.float64) - np.asarray(self.origin)
        return (world @ np.linalg.inv(self.direction).T) / np.asarray(self.spacing)

    def geometry(self) -> dict[str, Any]:
        """The geometry as JSON-able lists (what the preprocessing store keeps as ``props``)."""
        return {
            "spacing_mm": list(self.spacing),
            "origin": list(self.origin),
            "direction": self.direction.tolist(),
            "shape": list(self.spatial_shape),
        }

    def with_array(self, array: np.ndarray, **meta: Any) -> Volume:
        """A copy on the same grid with another array (a prediction, a mask)."""
        return Volume(
            array, self.spacing, self.origin, self.direction.copy(), {**self.meta, **meta}
        )
