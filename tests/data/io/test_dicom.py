"""Tests of ``medjax.data.io.dicom`` on real DICOM files and on series written here with pydicom.

Reference values come from ``shared/data/FACTS.json`` (computed independently with pydicom,
nibabel and SimpleITK) and are copied below as constants, or are recomputed in numpy float64 from
the raw tags of the files under test.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pydicom
import pydicom.pixels
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLSLossless, generate_uid

from medjax import errors
from medjax.data.io import dicom

DATA = os.path.join(os.path.dirname(__file__), os.pardir, "dicom")
CT_SMALL = os.path.join(DATA, "ct_single", "CT_small.dcm")
CT5N = os.path.join(DATA, "ct_series_reduced_CT5N")
MR700 = os.path.join(DATA, "mr_nonparallel_MR700")
ENHANCED_CT = os.path.join(DATA, "enhanced_ct_multiframe", "eCT_Supplemental.dcm")
MR_SMALL = os.path.join(DATA, "mr_single", "MR_small.dcm")
MR_SMALL_RLE = os.path.join(DATA, "mr_single", "MR_small_RLE.dcm")


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _expected_geometry(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple, np.ndarray]:
    """(row, col, normal, pixel spacing, IPP) in float64 straight from one file's raw tags."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    iop = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    row, col = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row, col)
    ipp = np.array([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
    return row, col, normal, tuple(float(v) for v in ds.PixelSpacing), ipp


def _check_voxels_land_on_their_file(vol, atol: float = 1e-4) -> None:
    """Every slice's voxel (k, j, i) must map to IPP_k + j*dr*col + i*dc*row of its own file."""
    depth, height, width = vol.spatial_shape
    for k, path in enumerate(vol.meta["files"]):
        row, col, _, (d_row, d_col), ipp = _expected_geometry(path)
        for j, i in [(0, 0), (height - 1, 0), (0, width - 1), (height - 1, width - 1)]:
            expected = ipp + j * d_row * col + i * d_col * row
            np.testing.assert_allclose(vol.index_to_world([k, j, i]), expected, atol=atol)


def _write_slice(
    path: str,
    pixels: np.ndarray,
    *,
    ipp: np.ndarray,
    iop: np.ndarray,
    pixel_spacing: tuple[float, float],
    slope: float,
    intercept: float,
    series_uid: str,
    instance: int,
    preamble: bool = True,
) -> None:
    """Writes a real single-frame CT file (explicit VR little endian, int16)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128 if preamble else None)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PatientID = "SYNTH01"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.5f}" for v in ipp]
    ds.ImageOrientationPatient = [f"{v:.7f}" for v in iop]
    ds.PixelSpacing = [f"{v:.5f}" for v in pixel_spacing]
    ds.SliceThickness = "9.9"  # deliberately wrong: the step must come from positions
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.PixelData = pixels.astype("<i2").tobytes()
    ds.save_as(path, enforce_file_format=preamble)


def _oblique_axes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An orthonormal, clearly oblique (row, col, normal) triple."""
    a, b, c = np.deg2rad([20.0, -35.0, 10.0])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    rot = rz @ ry @ rx
    return rot[:, 0], rot[:, 1], rot[:, 2]


def _write_series(
    folder: str,
    offsets_mm: list[float],
    *,
    shapes: list[tuple[int, int]] | None = None,
    in_plane_drift_mm: float = 0.0,
    seed: int = 0,
) -> dict:
    """Writes an oblique series, file names and InstanceNumbers shuffled against position.

    Returns the ground truth: per written slice its offset, stored pixels, slope and intercept.
    """
    rng = np.random.default_rng(seed)
    row, col, normal = _oblique_axes()
    origin = np.array([-40.0, 25.0, 110.0])
    uid = generate_uid()
    order = rng.permutation(len(offsets_mm))  # file name / instance number of each slice
    truth = {"slices": [], "row": row, "col": col, "normal": normal, "origin": origin}
    os.makedirs(folder, exist_ok=True)
    for k, offset in enumerate(offsets_mm):
        shape = shapes[k] if shapes else (6, 7)
        pixels = rng.integers(-200, 1500, size=shape).astype(np.int16)
        slope, intercept = [(1.0, -1024.0), (0.5, -1000.0), (2.0, -3000.0)][k % 3]
        ipp = origin + offset * normal + k * in_plane_drift_mm * row
        _write_slice(
            os.path.join(folder, f"IM{order[k]:04d}"),
            pixels,
            ipp=ipp,
            iop=np.concatenate([row, col]),
            pixel_spacing=(0.7, 0.9),
            slope=slope,
            intercept=intercept,
            series_uid=uid,
            instance=int(order[::-1][k]) + 1,
        )
        truth["slices"].append({"offset": offset, "pixels": pixels, "rescale": (slope, intercept)})
    return truth


# ---------------------------------------------------------------------------------------------
# Real files against FACTS.json
# ---------------------------------------------------------------------------------------------


def test_ct_small_geometry_and_hu_match_facts():
    vol = dicom.read_dicom_series(CT_SMALL)
    assert vol.array.shape == (1, 128, 128) and vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.spacing[1:], [0.661468, 0.661468])
    np.testing.assert_allclose(vol.origin, [-158.135803, -179.035797, -75.699997])
    # IOP (1,0,0, 0,1,0): D along +z, H along +y (col cosine), W along +x (row cosine).
    np.testing.assert_allclose(vol.direction, [[0, 0, 1], [0, 1, 0], [1, 0, 0]], atol=1e-12)
    hu = vol.array.astype(np.float64)
    # FACTS rescaled_stats (pydicom stored * 1 - 1024).
    assert hu.min() == -896.0 and hu.max() == 1167.0
    np.testing.assert_allclose(hu.mean(), -119.073853, atol=1e-5)
    np.testing.assert_allclose(hu.std(), 379.757, atol=1e-3)
    np.testing.assert_allclose(np.percentile(hu, 50), 2.0)
    assert vol.meta["modality"] == "CT" and vol.meta["rescale_applied"] is True
    assert vol.meta["series_uid"] == "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322"
    assert vol.meta["patient_id"] == "1CT1"
    # One slice: the D step can only come from a tag, and meta must say which.
    assert vol.meta["slice_step_source"] in ("SpacingBetweenSlices", "SliceThickness")


def test_ct5n_series_stacks_by_position_not_instance_number():
    vol = dicom.read_dicom_series(CT5N)
    assert vol.array.shape == (5, 16, 16)
    np.testing.assert_allclose(vol.spacing, [2.5, 0.488281, 0.488281], atol=1e-6)
    np.testing.assert_allclose(vol.origin, [-72.199997, -143.0, -1.2375], atol=1e-6)
    np.testing.assert_allclose(vol.direction, [[0, 0, 1], [0, 1, 0], [1, 0, 0]], atol=1e-12)
    # FACTS sorted_file_names / sorted_instance_numbers: InstanceNumber runs against position.
    assert [os.path.basename(p) for p in vol.meta["files"]] == [
        "3353",
        "3023",
        "2693",
        "2392",
        "2062",
    ]
    numbers = [
        int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in vol.meta["files"]
    ]
    assert numbers == [10, 9, 8, 7, 6]
    hu = vol.array.astype(np.float64)
    assert hu.sum() == -177320.0 and hu.min() == -888.0 and hu.max() == 85.0
    np.testing.assert_allclose(
        hu.mean(axis=(1, 2)), [-68.727, -37.895, -42.828, -188.922, -354.285], atol=1e-3
    )
    for kji, value in [
        ((0, 0, 0), -33.0),
        ((2, 8, 8), 44.0),
        ((2, 3, 12), -76.0),
        ((4, 15, 15), -729.0),
    ]:
        assert hu[kji] == value
    assert vol.meta["slice_step_source"] == "positions"
    _check_voxels_land_on_their_file(vol)


def test_shuffled_file_names_stack_identically(tmp_path):
    reference = dicom.read_dicom_series(CT5N)
    names = sorted(os.listdir(CT5N))
    # Reverse the name order so that name sort, position sort and instance sort all disagree.
    for src, dst in zip(names, ["e.dcm", "c.dcm", "a.dcm", "d.dcm", "b.dcm"], strict=True):
        shutil.copy(os.path.join(CT5N, src), tmp_path / dst)
    vol = dicom.read_dicom_series(str(tmp_path))
    np.testing.assert_array_equal(vol.array, reference.array)
    assert vol.spacing == reference.spacing and vol.origin == reference.origin
    np.testing.assert_array_equal(vol.direction, reference.direction)


def test_direction_matches_raw_iop_tags():
    for path in [CT_SMALL, os.path.join(CT5N, "2062")]:
        row, col, normal, _, _ = _expected_geometry(path)
        vol = dicom.read_dicom_series(path)
        np.testing.assert_allclose(vol.direction[:, 0], normal, atol=1e-12)
        np.testing.assert_allclose(vol.direction[:, 1], col, atol=1e-12)
        np.testing.assert_allclose(vol.direction[:, 2], row, atol=1e-12)


def test_nonparallel_mr_set_is_refused():
    with pytest.raises(errors.DataError, match=r"7 different ImageOrientationPatient") as info:
        dicom.read_dicom_series(MR700)
    assert "cannot be stacked" in str(info.value)


def test_enhanced_multiframe_ct_geometry_and_frames():
    vol = dicom.read_dicom_series(ENHANCED_CT)
    assert vol.array.shape == (2, 512, 512)
    np.testing.assert_allclose(vol.spacing, [10.0, 0.388672, 0.388672], atol=1e-6)
    # IOP (-1,0,0, 0,1,0): normal = (-1,0,0) x (0,1,0) = (0,0,-1). Frames at z=-159 and -149
    # project to 159 and 149, so the z=-149 frame (index 1) comes first and is the origin.
    np.testing.assert_allclose(vol.origin, [99.5, -301.5, -149.0])
    np.testing.assert_allclose(vol.direction, [[0, 0, -1], [0, 1, 0], [-1, 0, 0]], atol=1e-12)
    assert vol.meta["frame_indices"] == [1, 0]
    stored = pydicom.dcmread(ENHANCED_CT).pixel_array.astype(np.float64)
    np.testing.assert_array_equal(vol.array, stored[::-1] * 1.0 - 1024.0)
    np.testing.assert_allclose(stored.mean(), 380.038086, atol=1e-5)  # FACTS stored_stats
    assert vol.meta["rescale_type"] == "US" and vol.meta["rescale_applied"] is True
    np.testing.assert_allclose(vol.index_to_world([1, 0, 0]), [99.5, -301.5, -159.0])


def test_rle_pixels_equal_uncompressed():
    plain = dicom.read_dicom_series(MR_SMALL)
    rle = dicom.read_dicom_series(MR_SMALL_RLE)
    assert rle.meta["transfer_syntaxes"] == ["RLE Lossless"]
    np.testing.assert_array_equal(rle.array, plain.array)
    assert plain.meta["rescale_applied"] is False  # MR without RescaleSlope: stored values.
    np.testing.assert_allclose(plain.array.astype(np.float64).mean(), 518.881348, atol=1e-5)


def test_pydicom_bundled_file_reads():
    vol = dicom.read_dicom_series(get_testdata_file("CT_small.dcm"))
    np.testing.assert_array_equal(vol.array, dicom.read_dicom_series(CT_SMALL).array)


@pytest.mark.skipif(
    pydicom.pixels.get_decoder(JPEGLSLossless).is_available, reason="a JPEG-LS decoder is installed"
)
def test_missing_decoder_says_what_to_install():
    with pytest.raises(errors.DataError, match=r"pydicom\[pixeldata\]") as info:
        dicom.read_dicom_series(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    assert "JPEG-LS" in str(info.value) and "MR_small_jpeg_ls_lossless.dcm" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Broken series
# ---------------------------------------------------------------------------------------------


def test_missing_slice_names_the_gap(tmp_path):
    shutil.copytree(CT5N, tmp_path / "s")
    os.remove(tmp_path / "s" / "2693")  # the middle slice, z = 3.7625
    with pytest.raises(errors.DataError, match=r"missing slice.*1\.2625 and 6\.2625"):
        dicom.read_dicom_series(str(tmp_path / "s"))


def test_truncated_pixel_data_names_the_file(tmp_path):
    shutil.copytree(CT5N, tmp_path / "s")
    victim = tmp_path / "s" / "2392"
    data = victim.read_bytes()
    victim.write_bytes(data[:-100])  # cut into the pixel data
    with pytest.raises(errors.DataError, match=r"2392.*truncated or corrupt"):
        dicom.read_dicom_series(str(tmp_path / "s"))
    with pytest.raises(errors.DataError, match=r"2392"):
        dicom.read_dicom_series(str(victim))


def test_corrupt_header_in_folder_is_an_error(tmp_path):
    shutil.copytree(CT5N, tmp_path / "s")
    victim = tmp_path / "s" / "3023"
    victim.write_bytes(victim.read_bytes()[:-600])  # cut inside the last header element
    with pytest.raises(errors.DataError, match=r"corrupt DICOM.*3023"):
        dicom.read_dicom_series(str(tmp_path / "s"))


def test_duplicate_positions_are_refused(tmp_path):
    shutil.copytree(CT5N, tmp_path / "s")
    shutil.copy(tmp_path / "s" / "2392", tmp_path / "s" / "copy_of_2392")
    with pytest.raises(errors.DataError, match=r"duplicate slice position 6\.2625"):
        dicom.read_dicom_series(str(tmp_path / "s"))


def test_uneven_spacing_is_refused(tmp_path):
    _write_series(str(tmp_path), [0.0, 2.5, 5.0, 8.2])
    with pytest.raises(errors.DataError, match=r"uneven slice spacing"):
        dicom.read_dicom_series(str(tmp_path))
    # The same series is accepted when the caller allows that much misplacement.
    vol = dicom.read_dicom_series(str(tmp_path), spacing_rtol=0.2)
    np.testing.assert_allclose(vol.spacing[0], 8.2 / 3, atol=1e-4)


def test_mixed_rows_columns_are_refused(tmp_path):
    _write_series(str(tmp_path), [0.0, 2.0, 4.0], shapes=[(6, 7), (6, 7), (6, 8)])
    with pytest.raises(errors.DataError, match=r"mixed Rows/Columns"):
        dicom.read_dicom_series(str(tmp_path))


def test_in_plane_drift_is_refused(tmp_path):
    _write_series(str(tmp_path), [0.0, 2.0, 4.0, 6.0], in_plane_drift_mm=0.5)
    with pytest.raises(errors.DataError, match=r"do not lie along the slice normal"):
        dicom.read_dicom_series(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Synthetic oblique series and discovery
# ---------------------------------------------------------------------------------------------


def test_synthetic_oblique_series_geometry_and_per_slice_rescale(tmp_path):
    offsets = [0.0, 1.6, 3.2, 4.8, 6.4]
    truth = _write_series(str(tmp_path), offsets)
    vol = dicom.read_dicom_series(str(tmp_path))
    assert vol.array.shape == (5, 6, 7) and vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.spacing, [1.6, 0.7, 0.9], atol=1e-5)
    np.testing.assert_allclose(vol.origin, truth["origin"], atol=1e-4)
    expected = np.stack([truth["normal"], truth["col"], truth["row"]], axis=1)
    np.testing.assert_allclose(vol.direction, expected, atol=1e-6)
    # The direction is orthonormal and its first column is row x col, so D follows the normal.
    np.testing.assert_allclose(vol.direction.T @ vol.direction, np.eye(3), atol=1e-6)
    for k, s in enumerate(truth["slices"]):  # slices were written in offset order
        slope, intercept = s["rescale"]
        np.testing.assert_allclose(vol.array[k], s["pixels"].astype(np.float64) * slope + intercept)
    _check_voxels_land_on_their_file(vol)
    assert vol.meta["slice_step_source"] == "positions"  # not the 9.9 mm SliceThickness


def test_synthetic_series_written_in_reverse_normal_order(tmp_path):
    # Offsets that decrease with k: sorting must still put the lowest projection first.
    truth = _write_series(str(tmp_path), [4.0, 2.0, 0.0, -2.0])
    vol = dicom.read_dicom_series(str(tmp_path))
    np.testing.assert_allclose(vol.origin, truth["origin"] - 2.0 * truth["normal"], atol=1e-4)
    slope, intercept = truth["slices"][3]["rescale"]
    np.testing.assert_allclose(vol.array[0], truth["slices"][3]["pixels"] * slope + intercept)
    _check_voxels_land_on_their_file(vol)


def test_find_series_groups_by_uid_and_reports_skipped(tmp_path):
    shutil.copytree(CT5N, tmp_path / "a" / "ct5n")
    shutil.copy(CT_SMALL, tmp_path / "b.dcm")
    (tmp_path / "a" / "notes.txt").write_text("not a DICOM file\n")
    (tmp_path / "empty").write_bytes(b"")
    # A dataset without the 128-byte preamble + "DICM": needs force=True, must still be found.
    _write_slice(
        str(tmp_path / "raw_no_preamble"),
        np.zeros((4, 5), np.int16),
        ipp=np.zeros(3),
        iop=np.array([1.0, 0, 0, 0, 1, 0]),
        pixel_spacing=(1.0, 1.0),
        slope=1.0,
        intercept=0.0,
        series_uid="1.2.826.0.1.3680043.8.498.77",
        instance=1,
        preamble=False,
    )
    assert not (tmp_path / "raw_no_preamble").read_bytes()[128:132] == b"DICM"

    scan = dicom.scan_series(str(tmp_path))
    series = dicom.find_series(str(tmp_path))
    assert series == scan.series
    ct5n_uid = "1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.6"
    ct_small_uid = "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322"
    assert set(series) == {ct5n_uid, ct_small_uid, "1.2.826.0.1.3680043.8.498.77"}
    assert [os.path.basename(p) for p in series[ct5n_uid]] == sorted(os.listdir(CT5N))
    assert series[ct_small_uid] == [str(tmp_path / "b.dcm")]
    assert set(scan.skipped) == {str(tmp_path / "a" / "notes.txt"), str(tmp_path / "empty")}
    assert all(reason == "not DICOM" for reason in scan.skipped.values())
    assert scan.corrupt == []

    with pytest.raises(errors.DataError, match=r"holds 3 series.*" + ct5n_uid.replace(".", r"\.")):
        dicom.read_dicom_series(str(tmp_path))
    vol = dicom.read_dicom_series(str(tmp_path), series_uid=ct5n_uid)
    np.testing.assert_array_equal(vol.array, dicom.read_dicom_series(CT5N).array)
    raw = dicom.read_dicom_series(str(tmp_path), series_uid="1.2.826.0.1.3680043.8.498.77")
    assert raw.array.shape == (1, 4, 5)
    with pytest.raises(errors.DataError, match=r"no series 9\.9\.9"):
        dicom.read_dicom_series(str(tmp_path), series_uid="9.9.9")


def test_meta_is_json_able_and_complete():
    import json

    vol = dicom.read_dicom_series(CT5N)
    meta = json.loads(json.dumps(vol.meta))
    assert meta["study_uid"] == "1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.1"
    assert meta["patient_id"] == "98890234" and len(meta["files"]) == 5
    assert json.loads(json.dumps(vol.geometry()))["shape"] == [5, 16, 16]


def test_not_a_folder_or_file(tmp_path):
    with pytest.raises(errors.DataError, match=r"does not exist"):
        dicom.read_dicom_series(str(tmp_path / "nope"))
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(errors.DataError, match=r"not a DICOM image"):
        dicom.read_dicom_series(str(tmp_path / "x.txt"))
    with pytest.raises(errors.DataError, match=r"no DICOM image series"):
        dicom.read_dicom_series(str(tmp_path))


def test_read_dicom_files_sorts_an_explicit_file_list():
    reference = dicom.read_dicom_series(CT5N)
    files = [os.path.join(CT5N, n) for n in ["2693", "2062", "3353", "3023", "2392"]]
    vol = dicom.read_dicom_files(files)
    np.testing.assert_array_equal(vol.array, reference.array)
    assert vol.origin == reference.origin and vol.spacing == reference.spacing
    with pytest.raises(errors.DataError, match=r"belong to 2 series"):
        dicom.read_dicom_files([files[0], CT_SMALL])


def _write_enhanced(path: str, frames: list[dict], shape=(5, 6)) -> None:
    """Writes a real Enhanced CT multi-frame file; per-frame IPP, per-frame rescale optional."""
    from pydicom.dataset import Dataset
    from pydicom.uid import EnhancedCTImageStorage

    row, col, _ = _oblique_axes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", generate_uid(), generate_uid()
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    shared = Dataset()
    orientation, measures, rescale = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = [f"{v:.7f}" for v in np.concatenate([row, col])]
    measures.PixelSpacing, measures.SliceThickness = ["0.8", "0.6"], "7.0"
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = "1", "-1024", "HU"
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelMeasuresSequence = [measures]
    shared.PixelValueTransformationSequence = [rescale]  # fallback for frames without their own
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for f in frames:
        group, position = Dataset(), Dataset()
        position.ImagePositionPatient = [f"{v:.5f}" for v in f["ipp"]]
        group.PlanePositionSequence = [position]
        if f.get("rescale"):
            own = Dataset()
            own.RescaleSlope, own.RescaleIntercept = (f"{v:g}" for v in f["rescale"])
            own.RescaleType = "HU"
            group.PixelValueTransformationSequence = [own]
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = np.stack([f["pixels"] for f in frames]).astype("<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_synthetic_enhanced_per_frame_rescale_with_shared_fallback(tmp_path):
    rng = np.random.default_rng(3)
    _, _, normal = _oblique_axes()
    origin = np.array([10.0, -20.0, 30.0])
    # Frames stored out of position order; frame 1 has its own rescale, the others the shared.
    offsets, rescales = [3.0, 0.0, 6.0], [None, (2.0, -500.0), None]
    frames = [
        {"ipp": origin + o * normal, "pixels": rng.integers(0, 900, (5, 6)), "rescale": r}
        for o, r in zip(offsets, rescales, strict=True)
    ]
    path = str(tmp_path / "enhanced.dcm")
    _write_enhanced(path, frames)
    vol = dicom.read_dicom_series(path)
    assert vol.meta["frame_indices"] == [1, 0, 2]
    np.testing.assert_allclose(vol.spacing, [3.0, 0.8, 0.6], atol=1e-4)  # (step, row, col)
    np.testing.assert_allclose(vol.origin, origin, atol=1e-4)
    np.testing.assert_allclose(vol.direction[:, 0], normal, atol=1e-6)
    np.testing.assert_allclose(vol.array[0], frames[1]["pixels"] * 2.0 - 500.0)
    np.testing.assert_allclose(vol.array[1], frames[0]["pixels"] - 1024.0)
    np.testing.assert_allclose(vol.array[2], frames[2]["pixels"] - 1024.0)
    assert vol.meta["rescale_type"] == "HU"
    np.testing.assert_allclose(vol.index_to_world([2, 0, 0]), origin + 6.0 * normal, atol=1e-4)
    # PixelSpacing is (between rows, between columns): H steps 0.8 along col, W 0.6 along row.
    row, col, _ = _oblique_axes()
    expected = origin + 4 * 0.8 * col + 5 * 0.6 * row
    np.testing.assert_allclose(vol.index_to_world([0, 4, 5]), expected, atol=1e-4)


# FACTS.json ct_series_reduced_CT5N affine_ijk_to_ras (i = column, j = row, k = sorted slice).
CT5N_AFFINE_IJK_RAS = np.array(
    [
        [-0.488281, 0.0, 0.0, 72.199997],
        [0.0, -0.488281, 0.0, 143.0],
        [0.0, 0.0, 2.5, -1.2375],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def test_lps_geometry_gives_the_nifti_affine():
    vol = dicom.read_dicom_series(CT5N)
    # Volume.affine acts on (k, j, i); NIfTI wants (i, j, k) -> RAS: reverse axes, flip x and y.
    reverse = np.eye(4)[[2, 1, 0, 3]]
    ras_ijk = np.diag([-1.0, -1.0, 1.0, 1.0]) @ vol.affine @ reverse
    np.testing.assert_allclose(ras_ijk, CT5N_AFFINE_IJK_RAS, atol=1e-6)


def test_dicom_volume_writes_to_nifti_with_its_geometry(tmp_path):
    pytest.importorskip("medjax.data.io.nifti")
    nib = pytest.importorskip("nibabel")
    from medjax.data import io as io_lib

    vol = dicom.read_dicom_series(CT5N)
    io_lib.write_volume(vol, str(tmp_path / "ct5n.nii.gz"))
    img = nib.load(str(tmp_path / "ct5n.nii.gz"))
    np.testing.assert_allclose(img.affine, CT5N_AFFINE_IJK_RAS, atol=1e-5)
    np.testing.assert_allclose(np.asarray(img.dataobj).transpose(2, 1, 0), vol.array)


# ---------------------------------------------------------------------------------------------
# One parse per file, one file's pixels at a time
# ---------------------------------------------------------------------------------------------


def test_each_file_is_parsed_once_and_values_match(tmp_path, monkeypatch):
    truth = _write_series(str(tmp_path / "s"), [0.0, 1.5, 3.0, 4.5, 6.0])
    calls = []
    real = pydicom.dcmread

    def counting_dcmread(path, *args, **kwargs):
        calls.append(os.path.basename(os.fspath(path)))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(dicom.pydicom, "dcmread", counting_dcmread)
    vol = dicom.read_dicom_series(str(tmp_path / "s"))
    assert sorted(calls) == sorted(os.listdir(tmp_path / "s"))  # the header scan only
    expected = [
        s["pixels"].astype(np.float64) * s["rescale"][0] + s["rescale"][1] for s in truth["slices"]
    ]
    np.testing.assert_array_equal(vol.array, np.stack(expected).astype(np.float32))


def test_peak_memory_is_about_the_output_volume(tmp_path):
    # 24 slices of 128 x 128: a 1.5 MB float32 volume from 0.75 MB of int16 pixel data. Holding
    # every file's pixels (and a float64 copy of each slice) until the end would peak at ~3.5x
    # the output; decoding one file at a time into the output stays near 1x.
    import tracemalloc

    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 2000, size=(24, 128, 128)).astype(np.int16)
    uid = generate_uid()
    os.makedirs(tmp_path / "s")
    for k, pixels in enumerate(hu):
        _write_slice(
            str(tmp_path / "s" / f"IM{k:03d}"),
            pixels,
            ipp=np.array([0.0, 0.0, 2.0 * k]),
            iop=np.array([1.0, 0, 0, 0, 1.0, 0]),
            pixel_spacing=(0.7, 0.7),
            slope=1.0,
            intercept=0.0,
            series_uid=uid,
            instance=k + 1,
        )
    dicom.read_dicom_series(str(tmp_path / "s"))  # imports and caches outside the measurement
    tracemalloc.start()
    try:
        vol = dicom.read_dicom_series(str(tmp_path / "s"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(vol.array, hu.astype(np.float32))
    assert peak < 1.6 * vol.array.nbytes, (peak, vol.array.nbytes)
