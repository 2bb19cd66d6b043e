"""The experiment plan: patch, batch and UNet topology from the data and a memory budget.

Pure functions: the memory of a candidate comes from a ``measure(topology, batch_size) -> bytes``
callable (``medjax.plan.measure.make_measure`` compiles the real train step and reads XLA's
memory analysis; tests pass hand-made ones). The rules are nnU-Net v2's
(``ExperimentPlanner.get_plans_for_configuration``): start from the spacing's aspect ratio
clipped to the median shape, shrink the axis largest relative to the median shape until the
step fits at the smallest batch, then grow the batch into the memory left, capped so that one
batch covers at most 5 % of the dataset's voxels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from medjax import errors
from medjax.plan import topology as topo_lib

Measure = Callable[[topo_lib.Topology, int], int]

# nnU-Net: a batch covers at most this fraction of the dataset's voxels (overfitting guard).
MAX_BATCH_DATASET_FRACTION = 0.05
# nnU-Net's UNet widths: 32 at full resolution, doubled per level, capped (3D: 320, 2D: 512).
BASE_FEATURES = 32
MAX_FEATURES = {2: 512, 3: 320}


def resampled_shapes(
    shapes: Sequence[Sequence[int]], spacings: Sequence[Sequence[float]], target: Sequence[float]
) -> np.ndarray:
    """Per-case shapes after resampling to ``target`` mm (nnU-Net's ``compute_new_shape``).

    Returns:
      ``int64[N, ndim]``: ``round(shape * spacing / target)`` per case and axis.
    """
    shapes = np.asarray(shapes, np.float64)
    spacings = np.asarray(spacings, np.float64)
    return np.round(shapes * spacings / np.asarray(target, np.float64)).astype(np.int64)


def inputs_from_fingerprint(
    fingerprint: Mapping[str, Any], target_spacing: Sequence[float] | None
) -> tuple[list[float], list[float]]:
    """The spacing and median shape a plan starts from, given a dataset fingerprint.

    Args:
      fingerprint: ``medjax.data.preprocess.fingerprint.aggregate`` output (``spacings`` and
        ``shapes`` per case, array axis order).
      target_spacing: mm the cases are resampled to, or None (no resampling: the cases keep
        their own spacing, planned at the median one).

    Returns:
      ``(spacing, median_shape)``: the median of the per-case resampled shapes.
    """
    if target_spacing is None:
        return list(fingerprint["median_spacing_mm"]), list(fingerprint["median_shape"])
    new = resampled_shapes(fingerprint["shapes"], fingerprint["spacings"], target_spacing)
    return [float(t) for t in target_spacing], np.median(new, axis=0).tolist()


def level_features(depth: int, base: int, max_features: int) -> tuple[int, ...]:
    """``min(max_features, base * 2**i)`` for each level ``i`` (nnU-Net's widths)."""
    return tuple(min(max_features, base * 2**i) for i in range(depth))


def plan_experiment(
    spacing: Sequence[float],
    median_shape: Sequence[float],
    num_cases: int,
    measure: Measure,
    budget_bytes: int,
    *,
    min_batch_size: int = 2,
    num_devices: int = 1,
    min_feature_map_size: int = topo_lib.MIN_FEATURE_MAP_SIZE,
    patch_size: Sequence[int] | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Plans the patch, per-device batch and topology that fit ``budget_bytes`` per device.

    Memory is measured (``measure``), never guessed: a shrink is chosen by assuming memory
    proportional to patch voxels (an underestimate, as parameters and optimiser state do not
    shrink), then confirmed by measuring, so the result is nnU-Net's first fitting patch with
    few compilations.

    Args:
      spacing: target spacing in mm per axis (array axis order).
      median_shape: median resampled case shape in voxels.
      num_cases: training cases (the 5 % batch cap counts ``num_cases * prod(median_shape)``).
      measure: ``(topology, per_device_batch) -> bytes`` of one train step on one device.
      budget_bytes: memory per device the step may use.
      min_batch_size: smallest per-device batch (nnU-Net: 2).
      num_devices: data-parallel devices; the global batch is ``batch_size * num_devices``.
      min_feature_map_size: see ``topology.pool_and_conv_props``.
      patch_size: a fixed patch (set by the user): only the topology and batch are planned.
      batch_size: a fixed per-device batch (set by the user): the patch shrinks to fit it.

    Returns:
      ``{"patch_size", "batch_size" (per device), "global_batch_size", "depth",
      "pool_strides", "kernel_sizes", "num_pool_per_axis", "memory_bytes" (measured at the
      chosen batch), "budget_bytes", "spacing", "median_shape", "compilations"}``.

    Raises:
      ConfigError: even the smallest patch does not fit the budget at the smallest batch.
    """
    median = [float(m) for m in median_shape]
    first_batch = batch_size or min_batch_size
    calls = [0]

    def measured(topology: topo_lib.Topology, batch: int) -> int:
        calls[0] += 1
        return int(measure(topology, batch))

    if patch_size is not None:
        topology = topo_lib.pool_and_conv_props(spacing, patch_size, min_feature_map_size)
        topology = _fixed_patch(topology, patch_size)
    else:
        start = topo_lib.initial_patch_size(spacing, median)
        topology = topo_lib.pool_and_conv_props(spacing, start, min_feature_map_size)
    memory = measured(topology, first_batch)
    while memory > budget_bytes and patch_size is None:
        voxels = math.prod(topology.patch_size)
        candidate = topology
        while True:
            smaller = topo_lib.shrink(candidate, spacing, median, min_feature_map_size)
            if smaller == candidate:
                raise errors.ConfigError(
                    f"plan.memory_gb: even patch {candidate.patch_size} at batch {first_batch} "
                    f"needs {memory / 2**30:.2f} GiB, over the budget of "
                    f"{budget_bytes / 2**30:.2f} GiB; raise plan.memory_gb or lower "
                    "plan.base_features."
                )
            candidate = smaller
            if memory * math.prod(candidate.patch_size) / voxels <= budget_bytes:
                break
        topology = candidate
        memory = measured(topology, first_batch)
    if memory > budget_bytes:
        raise errors.ConfigError(
            f"data.patch_size={tuple(patch_size)} at batch {first_batch} needs "
            f"{memory / 2**30:.2f} GiB, over plan.memory_gb's {budget_bytes / 2**30:.2f} GiB."
        )
    batch = first_batch
    if batch_size is None:
        # nnU-Net: the headroom left at the smallest batch goes to the batch; proportional
        # scaling overestimates the memory of a larger batch (the fixed part does not grow).
        batch = max(min_batch_size, int(budget_bytes / memory * min_batch_size))
        dataset_voxels = float(num_cases) * math.prod(median)
        cap = round(dataset_voxels * MAX_BATCH_DATASET_FRACTION / math.prod(topology.patch_size))
        batch = max(min_batch_size, min(batch, cap // max(num_devices, 1)))
        while batch > min_batch_size:
            memory_b = measured(topology, batch)
            if memory_b <= budget_bytes:
                memory = memory_b
                break
            batch = max(min_batch_size, min(batch - 1, int(batch * budget_bytes / memory_b)))
    return {
        "patch_size": list(topology.patch_size),
        "batch_size": int(batch),
        "global_batch_size": int(batch * num_devices),
        "depth": topology.depth,
        "pool_strides": [list(p) for p in topology.pool_strides],
        "kernel_sizes": [list(k) for k in topology.kernel_sizes],
        "num_pool_per_axis": list(topology.num_pool_per_axis),
        "memory_bytes": int(memory),
        "budget_bytes": int(budget_bytes),
        "spacing": [float(s) for s in spacing],
        "median_shape": median,
        "compilations": calls[0],
    }


def _fixed_patch(topology: topo_lib.Topology, patch_size: Sequence[int]) -> topo_lib.Topology:
    """``topology`` for exactly ``patch_size`` (a user's patch is not rounded up).

    Raises:
      ConfigError: the patch is not a multiple of the pooling's divisor on some axis.
    """
    patch = tuple(int(p) for p in patch_size)
    if any(p % d for p, d in zip(patch, topology.divisor, strict=True)):
        raise errors.ConfigError(
            f"data.patch_size={patch}: the planned pooling needs multiples of "
            f"{topology.divisor} per axis."
        )
    return topo_lib.Topology(
        patch_size=patch,
        pool_strides=topology.pool_strides,
        kernel_sizes=topology.kernel_sizes,
        num_pool_per_axis=topology.num_pool_per_axis,
        divisor=topology.divisor,
    )


def describe(plan: Mapping[str, Any]) -> str:
    """A few lines for people: what was planned and what it costs."""
    gib = 2**30
    return "\n".join(
        [
            f"plan: target spacing {[round(s, 4) for s in plan['spacing']]} mm, median shape "
            f"{[round(m, 1) for m in plan['median_shape']]}",
            f"  patch {plan['patch_size']}, batch {plan['batch_size']} per device "
            f"({plan['global_batch_size']} global)",
            f"  UNet depth {plan['depth']}, features {plan.get('features')}",
            f"  pooling per level {plan['pool_strides']}",
            f"  kernels per level {plan['kernel_sizes']}",
            f"  train step memory {plan['memory_bytes'] / gib:.2f} GiB of "
            f"{plan['budget_bytes'] / gib:.2f} GiB per device ({plan['compilations']} "
            "compilation(s) measured)",
        ]
    )
