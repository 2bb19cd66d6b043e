"""Tests for medjax.data.io.itk on real NRRD files and MetaImage/NRRD written in tmp_path.

Expected geometry, array hashes and label centroids are copied from shared/data/FACTS.json
(computed independently with SimpleITK/numpy); pynrrd serves as a second, independent reader.
"""

import hashlib
import os

import nrrd
import numpy as np
import pytest

from medjax import errors
from medjax.data.io import itk
from medjax.data.io import volume as volume_lib

DATA = os.path.join(os.path.dirname(__file__), "..")

FACTS = {
    "seg/brain1": {
        "shape": (25, 256, 256),
        "spacing_xyz": (0.78125, 0.78125, 6.5),
        "origin": (-99.609375, 99.609375, -78.0),
        "direction_rowmajor": (1, 0, 0, 0, -1, 0, 0, 0, 1),
        "sha_image": "cb06e37c791479070b5adbc2c5d69614acd43d39996405e98b55ec7ede0ecfad",
        "sha_label": "0520768c9cf204666f79d5d9f02d4cc3aa19c048433db6323cc19c2eb08cf02f",
        "fg_voxels": 4137,
        "centroid_lps": (46.473, 16.5185, 15.5296),
    },
    "seg/breast1": {
        "shape": (21, 120, 45),
        "spacing_xyz": (0.664062, 0.664062, 2.1),
        "origin": (-116.54304, -48.144654, 9.45),
        "direction_rowmajor": (1, 0, 0, 0, 1, 0, 0, 0, 1),
        "sha_image": "20a637f5b022536d7851961863d57c76a7511553cfb63b9b29aab1330ff87289",
        "sha_label": "5b485b8c5c5fa474806e13bf41a6f51fc1da181bbf53dd8834321211128a00e8",
        "fg_voxels": 143,
        "centroid_lps": (-100.2201, -2.1433, 28.629),
    },
    "ct_nodule/lung2_crop": {
        "shape": (17, 128, 128),
        "spacing_xyz": (0.6269531, 0.6269531, 5.0),
        "origin": (15.0781176, -135.1601638, -300.0),
        "direction_rowmajor": (1, 0, 0, 0, 1, 0, 0, 0, 1),
        "sha_image": "efb23290a6399164e23b0e57b618dcd673f0e8ed6f99dd04f1436a352584a7ee",
        "sha_label": "7aecbd5b599cb7e367f0bffd6cea15c94d749d3f02e7d54556e1fc68b4fe7939",
        "fg_voxels": 24644,
        "centroid_lps": (52.6088, -95.8685, -256.4953),
    },
}


def _sha(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


@pytest.mark.parametrize("case", sorted(FACTS))
def test_shared_nrrd_match_facts(case):
    facts = FACTS[case]
    image = itk.read_itk(os.path.join(DATA, case + "_image.nrrd"))
    label = itk.read_itk(os.path.join(DATA, case + "_label.nrrd"))
    assert image.array.shape == facts["shape"]
    assert _sha(image.array) == facts["sha_image"]
    assert _sha(label.array) == facts["sha_label"]
    np.testing.assert_allclose(image.spacing, facts["spacing_xyz"][::-1], rtol=1e-6)
    np.testing.assert_allclose(image.origin, facts["origin"], atol=1e-5)
    itk_dir = np.reshape(facts["direction_rowmajor"], (3, 3))
    np.testing.assert_allclose(image.direction, itk_dir[:, ::-1])
    # The label centroid in world mm checks the whole index -> LPS mapping.
    idx = np.argwhere(label.array > 0)
    assert len(idx) == facts["fg_voxels"]
    np.testing.assert_allclose(label.index_to_world(idx.mean(0)), facts["centroid_lps"], atol=2e-3)
    np.testing.assert_allclose(label.affine, image.affine)


def _odd_volume(dtype=np.int16, channels=None):
    # Permuted axes with a flip: D runs along -x, H along +z, W along -y (LPS).
    direction = np.array([[-1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])
    shape = (3, 4, 5) + ((channels,) if channels else ())
    array = np.arange(np.prod(shape)).reshape(shape).astype(dtype)
    return volume_lib.Volume(array, (2.5, 0.5, 0.75), (1.0, -2.0, 3.0), direction)


@pytest.mark.parametrize("ext", [".mhd", ".mha", ".nrrd"])
@pytest.mark.parametrize("channels", [None, 3])
def test_roundtrip_flipped_permuted(tmp_path, ext, channels):
    vol = _odd_volume(channels=channels)
    path = tmp_path / f"v{ext}"
    itk.write_itk(vol, path)
    back = itk.read_itk(path)
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.array.dtype == vol.array.dtype
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-12)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_nrrd_agrees_with_pynrrd(tmp_path):
    vol = _odd_volume()
    itk.write_itk(vol, tmp_path / "v.nrrd")
    data, header = nrrd.read(str(tmp_path / "v.nrrd"))  # data[i, j, k] (Fortran order)
    np.testing.assert_array_equal(data.transpose(2, 1, 0), vol.array)
    assert header["space"] == "left-posterior-superior"
    dirs = np.asarray(header["space directions"], np.float64)  # row r: world step of axis r
    for r in range(3):  # nrrd axis r (i, j, k) is our array axis 2 - r
        np.testing.assert_allclose(dirs[r], vol.direction[:, 2 - r] * vol.spacing[2 - r])
    np.testing.assert_allclose(header["space origin"], vol.origin)


def test_2d_mha_roundtrip(tmp_path):
    vol = volume_lib.Volume(
        np.arange(20, dtype=np.uint8).reshape(4, 5),
        (0.3, 0.6),
        (5.0, 6.0),
        np.array([[0, 1], [1, 0.0]]),
    )
    itk.write_itk(vol, tmp_path / "s.mha")
    back = itk.read_itk(tmp_path / "s.mha")
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine)


def test_truncated_raw_and_missing_files(tmp_path):
    vol = _odd_volume(dtype=np.float32)
    itk.write_itk(vol, tmp_path / "v.mhd", compress=False)
    raw = tmp_path / "v.raw"
    assert raw.exists()
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(errors.DataError, match=r"v\.mhd.*v\.raw"):
        itk.read_itk(tmp_path / "v.mhd")
    raw.unlink()
    with pytest.raises(errors.DataError, match="v.mhd"):
        itk.read_itk(tmp_path / "v.mhd")
    itk.write_itk(vol, tmp_path / "c.nrrd")
    data = (tmp_path / "c.nrrd").read_bytes()
    (tmp_path / "c.nrrd").write_bytes(data[: len(data) - 40])
    with pytest.raises(errors.DataError, match="c.nrrd"):
        itk.read_itk(tmp_path / "c.nrrd")
    with pytest.raises(errors.DataError, match="none.nrrd"):
        itk.read_itk(tmp_path / "none.nrrd")
    with pytest.raises(errors.DataError, match="write_itk"):
        itk.write_itk(vol, tmp_path / "v.nii")
