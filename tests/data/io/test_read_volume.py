"""Tests for medjax.data.io.read_volume / write_volume dispatch on real files."""

import os

import numpy as np
import pytest

from medjax import errors
from medjax.data import io as io_lib

DATA = os.path.join(os.path.dirname(__file__), "..")


def _vol3d():
    direction = np.array([[0.0, 0, 1], [0, -1, 0], [1, 0, 0]])
    array = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    return io_lib.Volume(array, (3.0, 0.5, 0.7), (1.0, 2.0, 3.0), direction)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".mhd", ".mha", ".nrrd"])
def test_write_then_read_3d(tmp_path, ext):
    vol = _vol3d()
    path = tmp_path / f"case{ext}"
    io_lib.write_volume(vol, path)
    back = io_lib.read_volume(path)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)  # NIfTI stores float32


def test_png_dispatch_and_label_kwarg(tmp_path):
    vol = io_lib.Volume(np.eye(5, dtype=np.uint8) * 3, (1.0, 1.0), (0.0, 0.0), np.eye(2))
    io_lib.write_volume(vol, tmp_path / "m.png")
    back = io_lib.read_volume(tmp_path / "m.png", label=True)
    np.testing.assert_array_equal(back.array, vol.array)


def test_shared_files_dispatch():
    nii = io_lib.read_volume(os.path.join(DATA, "nifti", "anatomical.nii"))
    assert nii.array.shape == (25, 41, 33)
    nrrd = io_lib.read_volume(os.path.join(DATA, "seg", "breast1_label.nrrd"))
    assert nrrd.array.shape == (21, 120, 45)


def test_dicom_folder_and_file_dispatch():
    dicom = pytest.importorskip("medjax.data.io.dicom")
    folder = os.path.join(DATA, "dicom", "ct_series_reduced_CT5N")
    if not os.path.isdir(folder):
        pytest.skip("DICOM test data not present")
    vol = io_lib.read_volume(folder)
    ref = dicom.read_dicom_series(folder)
    np.testing.assert_array_equal(vol.array, ref.array)
    assert vol.array.shape[0] == 5
    single = io_lib.read_volume(os.path.join(DATA, "dicom", "ct_single", "CT_small.dcm"))
    assert single.array.shape[-2:] == (128, 128)


def test_format_helpers():
    assert io_lib.format_of("a/b/x.NII.GZ") == "nifti"
    assert io_lib.format_of("x.tar.gz") is None
    assert io_lib.strip_extension("/d/case_0001.nii.gz") == "case_0001"
    assert io_lib.strip_extension("img.v2.png") == "img.v2"


def test_errors(tmp_path):
    with pytest.raises(errors.DataError, match="missing.nii"):
        io_lib.read_volume(tmp_path / "missing.nii")
    (tmp_path / "table.csv").write_text("a,b\n")
    with pytest.raises(errors.DataError, match="table.csv"):
        io_lib.read_volume(tmp_path / "table.csv")
    with pytest.raises(errors.DataError, match="out.jpg"):
        io_lib.write_volume(_vol3d(), tmp_path / "out.jpg")
    with pytest.raises(errors.DataError, match="out.dcm"):
        io_lib.write_volume(_vol3d(), tmp_path / "out.dcm")
