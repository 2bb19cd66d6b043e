"""nnU-Net v2's network topology rules: pooling and kernels per axis, patch sizes (pure numpy).

Written from nnU-Net v2's ``get_pool_and_conv_props`` and ``ExperimentPlanner.
get_plans_for_configuration`` (``nnunetv2/experiment_planning``): an axis is pooled only while
its current spacing is within 2x of the finest one and its feature map stays at least
``2 * min_feature_map_size`` voxels; kernels are 1 along an axis until its spacing comes within
2x of the finest (so thick slices get 1x3x3 kernels first); the patch starts at the aspect ratio
of ``1 / spacing`` scaled to 256^3 (2048^2 in 2D) voxels, clipped to the median shape, and is
shrunk along the axis largest relative to the median shape until it fits the memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

# nnU-Net: the bottleneck's feature maps keep at least this edge length.
MIN_FEATURE_MAP_SIZE = 4
# nnU-Net's initial patch volume, before it is clipped to the median shape and shrunk.
INITIAL_PATCH_VOXELS = {2: 2048**2, 3: 256**3}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A UNet's shape for one patch size.

    Attributes:
      patch_size: the patch, rounded up to a multiple of ``divisor`` on every axis.
      pool_strides: per level transition (depth - 1 of them) the pooling factor per axis.
      kernel_sizes: per level (depth of them) the convolution kernel per axis.
      num_pool_per_axis: poolings along each axis.
      divisor: ``2 ** num_pool_per_axis``: what every patch axis must be a multiple of.
    """

    patch_size: tuple[int, ...]
    pool_strides: tuple[tuple[int, ...], ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    num_pool_per_axis: tuple[int, ...]
    divisor: tuple[int, ...]

    @property
    def depth(self) -> int:
        """Resolution levels of the UNet (poolings + 1)."""
        return len(self.kernel_sizes)


def round_up(shape: Sequence[int], divisor: Sequence[int]) -> tuple[int, ...]:
    """Each axis rounded up to a multiple of its divisor (nnU-Net's ``pad_shape``)."""
    return tuple(int(-(-int(s) // int(d)) * int(d)) for s, d in zip(shape, divisor, strict=True))


def pool_and_conv_props(
    spacing: Sequence[float],
    patch_size: Sequence[int],
    min_feature_map_size: int = MIN_FEATURE_MAP_SIZE,
    max_num_pool: int = 999,
) -> Topology:
    """Pooling and kernel sizes per axis for a patch at a spacing (nnU-Net's rule).

    At each level the axes that may pool are those whose feature map is at least
    ``2 * min_feature_map_size`` and whose current spacing is < 2x the finest current spacing
    among them; a single such axis pools only if it has at least ``3 * min_feature_map_size``.
    Pooling doubles an axis's spacing. A kernel along an axis becomes 3 once its current
    spacing is < 2x the finest, and stays 3; the bottleneck's kernel is 3 on every axis.

    Args:
      spacing: mm per voxel, one per spatial axis (array axis order).
      patch_size: voxels per spatial axis.
      min_feature_map_size: smallest edge length of the bottleneck's feature maps.
      max_num_pool: most poolings along any axis.

    Returns:
      The ``Topology``; its ``patch_size`` is ``patch_size`` rounded up to the divisor.
    """
    dim = len(spacing)
    current_spacing = [float(s) for s in spacing]
    current_size = [float(s) for s in patch_size]
    num_pool = [0] * dim
    kernel = [1] * dim
    pools: list[tuple[int, ...]] = []
    kernels: list[tuple[int, ...]] = []
    while True:
        valid = [a for a in range(dim) if current_size[a] >= 2 * min_feature_map_size]
        if not valid:
            break
        finest = min(current_spacing[a] for a in valid)
        valid = [a for a in valid if current_spacing[a] / finest < 2]
        valid = [a for a in valid if num_pool[a] < max_num_pool]
        if len(valid) == 1 and current_size[valid[0]] < 3 * min_feature_map_size:
            break
        if not valid:
            break
        # nnU-Net indexes the valid axes' spacings here; the intent (and its result on every
        # dataset where the finest axes are the valid ones) is each axis against the finest.
        finest_all = min(current_spacing)
        for a in range(dim):
            if kernel[a] != 3 and current_spacing[a] / finest_all < 2:
                kernel[a] = 3
        pool = [1] * dim
        for a in valid:
            pool[a] = 2
            num_pool[a] += 1
            current_spacing[a] *= 2
            current_size[a] = np.ceil(current_size[a] / 2)
        pools.append(tuple(pool))
        kernels.append(tuple(kernel))
    kernels.append((3,) * dim)  # the bottleneck
    divisor = tuple(2**n for n in num_pool)
    return Topology(
        patch_size=round_up(patch_size, divisor),
        pool_strides=tuple(pools),
        kernel_sizes=tuple(kernels),
        num_pool_per_axis=tuple(num_pool),
        divisor=divisor,
    )


def initial_patch_size(spacing: Sequence[float], median_shape: Sequence[float]) -> tuple[int, ...]:
    """nnU-Net's starting patch: ``1 / spacing`` (isotropic in mm) scaled to 256^3 voxels in 3D
    (2048^2 in 2D), then clipped to the median shape (a patch larger than the typical image
    only pads)."""
    inverse = 1.0 / np.asarray(spacing, np.float64)
    volume = INITIAL_PATCH_VOXELS[len(inverse)]
    scaled = inverse * (volume / np.prod(inverse)) ** (1.0 / len(inverse))
    pairs = zip(scaled, median_shape, strict=True)
    return tuple(int(min(round(float(s)), round(float(m)))) for s, m in pairs)


def shrink(
    topology: Topology,
    spacing: Sequence[float],
    median_shape: Sequence[float],
    min_feature_map_size: int = MIN_FEATURE_MAP_SIZE,
) -> Topology:
    """One nnU-Net shrinking step: the axis largest relative to the median shape loses one
    multiple of its divisor (recomputed after the cut, so no valid size is skipped), and the
    topology is replanned for the new patch.

    Returns:
      The topology of the smaller patch; the same patch when no axis can shrink any further.
    """
    patch = np.asarray(topology.patch_size, np.int64)
    ratio = patch / np.asarray(median_shape, np.float64)
    for axis in np.argsort(ratio, kind="stable")[::-1]:
        trial = patch.copy()
        trial[axis] -= topology.divisor[axis]
        if trial[axis] < 1:
            continue
        divisor = pool_and_conv_props(spacing, trial, min_feature_map_size).divisor
        smaller = patch.copy()
        smaller[axis] -= divisor[axis]
        if smaller[axis] < 1:
            continue
        return pool_and_conv_props(spacing, smaller, min_feature_map_size)
    return topology
