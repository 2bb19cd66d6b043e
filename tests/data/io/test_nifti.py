"""Tests for medjax.data.io.nifti on real NIfTI files (tests/data/nifti, nibabel's test data).

Expected values come from shared/data/FACTS.json (computed independently with nibabel and
SimpleITK) and from nibabel / SimpleITK reading the same files here.
"""

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medjax import errors
from medjax.data.io import itk, nifti
from medjax.data.io import volume as volume_lib

DATA = os.path.join(os.path.dirname(__file__), "..", "nifti")
NIB_DATA = os.path.join(os.path.dirname(nib.__file__), "tests", "data")
F = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS


def _check_against_nibabel(vol, path):
    """Every voxel: our index (k, j, i) maps to the LPS of nibabel's (i, j, k)."""
    img = nib.load(path)
    rng = np.random.default_rng(0)
    ijk = rng.integers(0, img.shape[:3], size=(20, 3)).astype(float)
    ras = ijk @ img.affine[:3, :3].T + img.affine[:3, 3]
    np.testing.assert_allclose(vol.index_to_world(ijk[:, ::-1]), ras @ F.T, atol=1e-6)


def test_anatomical_las_int16_big_endian():
    path = os.path.join(DATA, "anatomical.nii")
    vol = nifti.read_nifti(path)
    assert vol.array.shape == (25, 41, 33)  # nibabel (33, 41, 25) reversed
    assert vol.array.dtype == np.int16 and vol.array.dtype.byteorder in ("=", "|", "<")
    np.testing.assert_allclose(vol.spacing, (2.0, 2.0, 2.0))
    # FACTS: world RAS of voxel 000 = (32, -40, -16) -> LPS (-32, 40, -16).
    np.testing.assert_allclose(vol.origin, (-32.0, 40.0, -16.0))
    np.testing.assert_allclose(vol.array.mean(), 8401.066726, rtol=1e-8)
    np.testing.assert_array_equal(vol.array, np.asarray(nib.load(path).dataobj).transpose(2, 1, 0))
    _check_against_nibabel(vol, path)
    # SimpleITK read of the same file, converted by the ITK module, gives the same Volume.
    ref = itk.from_sitk(sitk.ReadImage(path))
    np.testing.assert_array_equal(vol.array, ref.array)
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-6)


def test_functional_4d_scaled_to_channels():
    vol = nifti.read_nifti(os.path.join(DATA, "functional.nii"))
    assert vol.array.shape == (3, 21, 17, 20) and vol.ndim_spatial == 3
    assert vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.array.mean(dtype=np.float64), 3637.408514, rtol=1e-6)
    np.testing.assert_allclose(vol.array[..., 0].mean(dtype=np.float64), 3626.280628, rtol=1e-6)
    np.testing.assert_allclose(vol.spacing, (8.0, 4.0, 4.0))


def test_oblique_anisotropic_roundtrip(tmp_path):
    path = os.path.join(DATA, "aniso_vox.nii.gz")
    vol = nifti.read_nifti(path)
    assert vol.array.shape == (24, 58, 58)
    np.testing.assert_allclose(vol.spacing, (5.0, 4.0, 4.0), atol=1e-5)  # FACTS zooms, reversed
    np.testing.assert_allclose(vol.direction.T @ vol.direction, np.eye(3), atol=1e-5)
    _check_against_nibabel(vol, path)
    out = tmp_path / "out.nii.gz"
    nifti.write_nifti(vol, out)
    written = nib.load(out)
    np.testing.assert_allclose(written.affine, nib.load(path).affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(nib.load(path).dataobj))
    back = nifti.read_nifti(out)
    np.testing.assert_array_equal(back.array, vol.array)
    # The written sform is float32 read back: a second round trip is exact.
    nifti.write_nifti(back, tmp_path / "again.nii")
    np.testing.assert_array_equal(nifti.read_nifti(tmp_path / "again.nii").affine, back.affine)


@pytest.mark.parametrize(
    "name",
    ["example4d.nii.gz", "example_nifti2.nii.gz", "standard.nii.gz", "reoriented_anat_moved.nii"],
)
def test_nibabel_test_files_geometry_and_roundtrip(tmp_path, name):
    path = os.path.join(NIB_DATA, name)
    if not os.path.exists(path):
        pytest.skip(f"{name} not shipped with this nibabel")
    vol = nifti.read_nifti(path)
    _check_against_nibabel(vol, path)
    nifti.write_nifti(vol, tmp_path / "x.nii.gz")
    back = nib.load(tmp_path / "x.nii.gz")
    np.testing.assert_allclose(back.affine, nib.load(path).affine, atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(back.dataobj, np.float64), nib.load(path).get_fdata(), rtol=1e-6
    )


def test_canonical_flips_las_to_ras():
    path = os.path.join(DATA, "anatomical.nii")
    raw = nifti.read_nifti(path)
    can = nifti.read_nifti(path, canonical=True)
    # LAS -> RAS flips nibabel's i axis, our W axis.
    np.testing.assert_array_equal(can.array, raw.array[:, :, ::-1])
    np.testing.assert_allclose(can.direction, [[0, 0, -1], [0, -1, 0], [1, 0, 0]], atol=1e-12)
    # Same voxel, same world position.
    np.testing.assert_allclose(can.index_to_world([0, 0, 0]), raw.index_to_world([0, 0, 32]))


def test_2d_volume_written_as_one_slice(tmp_path):
    array = np.arange(12, dtype=np.int64).reshape(3, 4)
    direction = np.array([[0.0, -1.0], [1.0, 0.0]])
    vol = volume_lib.Volume(array, (0.5, 2.0), (10.0, -3.0), direction)
    nifti.write_nifti(vol, tmp_path / "s.nii")
    back = nifti.read_nifti(tmp_path / "s.nii")
    assert back.array.shape == (1, 3, 4) and back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array[0], array)
    np.testing.assert_allclose(back.spacing[1:], (0.5, 2.0))
    np.testing.assert_allclose(back.origin, (10.0, -3.0, 0.0))
    np.testing.assert_allclose(back.direction[:2, 1:], direction)


def test_truncated_and_missing_files(tmp_path):
    src = os.path.join(DATA, "aniso_vox.nii.gz")
    data = open(src, "rb").read()
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(errors.DataError, match="cut.nii.gz"):
        nifti.read_nifti(bad)
    raw = gzip.decompress(data)
    bad = tmp_path / "cut.nii"
    bad.write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(errors.DataError, match="cut.nii"):
        nifti.read_nifti(bad)
    (tmp_path / "junk.nii").write_bytes(b"\x00" * 100)
    with pytest.raises(errors.DataError, match="junk.nii"):
        nifti.read_nifti(tmp_path / "junk.nii")
    with pytest.raises(errors.DataError, match="absent.nii"):
        nifti.read_nifti(tmp_path / "absent.nii")
