"""World <-> voxel tests against SimpleITK's own transforms, for flipped/permuted directions."""

import numpy as np
import pytest
import SimpleITK as sitk

from medjax.data.io import itk
from medjax.data.luna import geometry


def _rotation(axis, degrees):
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    r = np.eye(3)
    i, j = [k for k in range(3) if k != axis]
    r[[i, i, j, j], [i, j, i, j]] = [c, -s, s, c]
    return r


DIRECTIONS = {
    "flip_xy": np.diag([-1.0, -1.0, 1.0]),
    "flip_z": np.diag([1.0, 1.0, -1.0]),
    "permute_xy": np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
    "permute_cyclic_flip": np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
    "oblique": _rotation(2, 30) @ _rotation(0, 20),
}


def _write_scan(path, direction, shape=(10, 14, 18), spacing_xyz=(0.7, 0.8, 2.5)):
    array = np.full(shape, -1000, np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_xyz)
    image.SetOrigin((-120.5, 33.25, -310.0))
    image.SetDirection(tuple(direction.ravel()))
    sitk.WriteImage(image, str(path))
    return image


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_world_to_voxel_matches_simpleitk(tmp_path, name):
    image = _write_scan(tmp_path / "s.mhd", DIRECTIONS[name])
    volume = itk.read_itk(tmp_path / "s.mhd")
    rng = np.random.default_rng(0)
    ijk = rng.uniform(-2, 20, size=(25, 3))
    world = np.array([image.TransformContinuousIndexToPhysicalPoint(list(p)) for p in ijk])
    expected = np.array([image.TransformPhysicalPointToContinuousIndex(list(w)) for w in world])[
        :, ::-1
    ]  # ITK (i, j, k) -> array (D, H, W)
    got = geometry.world_to_voxel(world, volume)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(geometry.voxel_to_world(got, volume), world, atol=1e-6)
    # The same from the store's props dict.
    np.testing.assert_allclose(geometry.world_to_voxel(world, volume.geometry()), got, atol=1e-9)


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_bright_voxel_is_found_at_its_world_point(tmp_path, name):
    image = _write_scan(tmp_path / "s.mhd", DIRECTIONS[name])
    array = sitk.GetArrayFromImage(image)
    i, j, k = 3, 11, 7
    array[k, j, i] = 500
    bright = sitk.GetImageFromArray(array)
    bright.CopyInformation(image)
    sitk.WriteImage(bright, str(tmp_path / "b.mhd"))
    volume = itk.read_itk(tmp_path / "b.mhd")
    world = bright.TransformIndexToPhysicalPoint((i, j, k))
    voxel = geometry.nearest_voxel(geometry.world_to_voxel(world, volume))
    assert tuple(voxel) == (k, j, i)
    assert volume.array[tuple(voxel)] == 500


def test_nearest_voxel_and_inside():
    idx = np.array([[0.5, -0.5, 1.49], [-0.51, 2.0, 3.0]])
    np.testing.assert_array_equal(geometry.nearest_voxel(idx), [[1, 0, 1], [-1, 2, 3]])
    np.testing.assert_array_equal(geometry.inside(idx, (2, 3, 4)), [True, False])
