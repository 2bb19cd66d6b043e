"""Planning against hand-computed nnU-Net cases (pure functions, hand-made memory functions)."""

from __future__ import annotations

import math

import pytest

from medjax import errors
from medjax.plan import planner
from medjax.plan import topology as topo_lib


def test_anisotropic_spacing_pools_in_plane_first_with_1x3x3_kernels():
    # Spacing (5, 0.8, 0.8): D is > 2x the finest, so it is neither pooled nor convolved until
    # pooling H and W twice brings them to 3.2 mm (5 / 3.2 < 2). Hand-traced level by level:
    # sizes (20,256,256) -> (20,128,128) -> (20,64,64) -> (10,32,32) -> (5,16,16) -> (5,8,8)
    # -> (5,4,4) (D stops at 5 < 2 * 4).
    t = topo_lib.pool_and_conv_props((5.0, 0.8, 0.8), (20, 256, 256))
    assert t.pool_strides == (
        (1, 2, 2),
        (1, 2, 2),
        (2, 2, 2),
        (2, 2, 2),
        (1, 2, 2),
        (1, 2, 2),
    )
    assert t.kernel_sizes == ((1, 3, 3), (1, 3, 3)) + ((3, 3, 3),) * 5
    assert t.num_pool_per_axis == (2, 6, 6)
    assert t.divisor == (4, 64, 64)
    assert t.patch_size == (20, 256, 256)
    assert t.depth == 7


def test_initial_patch_follows_inverse_spacing_clipped_to_median_shape():
    # 1/spacing = (0.2, 1.25, 1.25) scaled to 256^3 voxels: 256 / 0.3125^(1/3) = 377.24 ->
    # (75.4, 471.6, 471.6) -> rounded (75, 472, 472), clipped to the median (20, 300, 400).
    assert topo_lib.initial_patch_size((5.0, 0.8, 0.8), (20, 300, 400)) == (20, 300, 400)
    assert topo_lib.initial_patch_size((5.0, 0.8, 0.8), (200, 900, 900)) == (75, 472, 472)


def test_isotropic_pools_every_axis_to_the_minimum_feature_map():
    t = topo_lib.pool_and_conv_props((1.0, 1.0, 1.0), (128, 128, 128))
    assert t.pool_strides == ((2, 2, 2),) * 5  # 128 -> 4 in five halvings
    assert t.kernel_sizes == ((3, 3, 3),) * 6
    assert t.divisor == (32, 32, 32)
    # A size that does not divide is rounded up (nnU-Net's pad_shape): 100 -> 4 poolings
    # (100, 50, 25, 13 >= 8; then 7), divisor 16, 100 -> 112.
    t = topo_lib.pool_and_conv_props((1.0, 1.0), (100, 64))
    assert t.num_pool_per_axis == (4, 4) and t.patch_size == (112, 64)


def _voxel_measure(per_voxel: float, fixed: float = 0.0):
    return lambda t, batch: fixed + per_voxel * batch * math.prod(t.patch_size)


def test_memory_budget_shrinks_the_largest_relative_axis_nnunet_order():
    # Hand-traced: 128^3 does not fit 2 * 112^3 units. nnU-Net cuts the last of the equally
    # large axes first, by the divisor recomputed after the cut (128 - 32 = 96 pools 4 times
    # -> divisor 16 -> 112): (128,128,112) -> (128,112,112) -> (112,112,112), which fits.
    plan = planner.plan_experiment(
        (1.0, 1.0, 1.0),
        (128, 128, 128),
        num_cases=100,
        measure=_voxel_measure(1.0),
        budget_bytes=2 * 112**3,
    )
    assert plan["patch_size"] == [112, 112, 112]
    assert plan["batch_size"] == 2
    assert plan["pool_strides"] == [[2, 2, 2]] * 4  # 112 -> 7: four poolings
    # Memory here is proportional to voxels, so the predicted shrink is exact: one measurement
    # of 128^3 and one of 112^3.
    assert plan["compilations"] == 2
    # The sequence itself, step by step.
    t = topo_lib.pool_and_conv_props((1.0,) * 3, (128,) * 3)
    sizes = []
    for _ in range(3):
        t = topo_lib.shrink(t, (1.0,) * 3, (128,) * 3)
        sizes.append(t.patch_size)
    assert sizes == [(128, 128, 112), (128, 112, 112), (112, 112, 112)]


def test_fixed_memory_part_is_confirmed_by_measuring_again():
    # With a fixed part the proportional prediction is too optimistic; measuring again must
    # continue to the first patch that really fits: budget fits 2 * 112^3 + fixed only.
    fixed = 0.5 * 112**3
    plan = planner.plan_experiment(
        (1.0, 1.0, 1.0),
        (128, 128, 128),
        num_cases=100,
        measure=_voxel_measure(1.0, fixed),
        budget_bytes=2 * 112**3 + fixed,
    )
    assert plan["patch_size"] == [112, 112, 112]
    assert plan["memory_bytes"] <= plan["budget_bytes"]


def test_headroom_goes_to_the_batch_capped_at_five_percent_of_the_dataset():
    # 128^3 at batch 2 uses a tenth of the budget -> batch 20 by headroom; 100 cases of 128^3:
    # 5 % of the voxels is 5 patches -> batch 5 (then measured: 5 * 128^3 fits).
    plan = planner.plan_experiment(
        (1.0, 1.0, 1.0),
        (128, 128, 128),
        num_cases=100,
        measure=_voxel_measure(1.0),
        budget_bytes=20 * 128**3,
    )
    assert plan["patch_size"] == [128, 128, 128]
    assert plan["batch_size"] == 5 and plan["global_batch_size"] == 5
    plan = planner.plan_experiment(
        (1.0, 1.0, 1.0),
        (128, 128, 128),
        num_cases=1000,
        measure=_voxel_measure(1.0),
        budget_bytes=20 * 128**3,
        num_devices=4,
    )
    assert plan["batch_size"] == 12 and plan["global_batch_size"] == 48  # cap 50 // 4 = 12


def test_anisotropic_plan_keeps_thick_axis_and_fixed_patch_is_kept():
    plan = planner.plan_experiment(
        (5.0, 0.8, 0.8),
        (20, 256, 256),
        num_cases=10,
        measure=_voxel_measure(1.0),
        budget_bytes=2 * 20 * 256 * 256,
    )
    assert plan["patch_size"] == [20, 256, 256]
    assert plan["pool_strides"][0] == [1, 2, 2] and plan["kernel_sizes"][0] == [1, 3, 3]
    fixed = planner.plan_experiment(
        (5.0, 0.8, 0.8),
        (20, 256, 256),
        num_cases=10,
        measure=_voxel_measure(1.0),
        budget_bytes=10**9,
        patch_size=(8, 64, 64),
        batch_size=3,
    )
    assert fixed["patch_size"] == [8, 64, 64] and fixed["batch_size"] == 3
    # (8, 64, 64) at (5, .8, .8): H, W pool twice alone, then all three once more (D: 8 -> 4).
    assert fixed["pool_strides"][:3] == [[1, 2, 2], [1, 2, 2], [2, 2, 2]]


def test_budget_nothing_fits_is_a_config_error():
    with pytest.raises(errors.ConfigError, match="plan.memory_gb"):
        planner.plan_experiment(
            (1.0, 1.0), (64, 64), num_cases=4, measure=_voxel_measure(1.0), budget_bytes=1
        )
