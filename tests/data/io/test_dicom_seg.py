"""Tests of ``medjax.data.io.dicom_seg`` on the real CT series and enhanced CT in tests/data.

The references are independent of the code under test: the source files' own tags read with
pydicom (positions, SOPInstanceUIDs, FrameOfReferenceUID), a slice order computed here from
ImagePositionPatient, the SEG read back with pydicom and with highdicom's reader, and for the
segmentation task's output the NIfTI read with nibabel and compared in world coordinates.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import types

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import SegmentationStorage

from configs import common
from medjax import errors, registry
from medjax.data import store
from medjax.data.io import dicom, dicom_seg
from medjax.data.io import volume as volume_lib
from medjax.tasks import segmentation as seg_task
from medjax.tasks.base import EvalResult

hd = pytest.importorskip("highdicom")

DATA = os.path.join(os.path.dirname(__file__), os.pardir, "dicom")
CT5N = os.path.join(DATA, "ct_series_reduced_CT5N")
CT_SMALL = os.path.join(DATA, "ct_single", "CT_small.dcm")
ENHANCED_CT = os.path.join(DATA, "enhanced_ct_multiframe", "eCT_Supplemental.dcm")


def _sources_by_position(folder: str) -> list[pydicom.Dataset]:
    """The series' headers sorted along the slice normal, computed here from the raw tags."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in glob.glob(f"{folder}/*")]
    iop = np.array([float(v) for v in headers[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    return sorted(
        headers, key=lambda ds: float(np.dot([float(v) for v in ds.ImagePositionPatient], normal))
    )


def _blob_label_map() -> np.ndarray:
    """uint8[5, 16, 16]: on sorted slice k a class-1 square at (k, k) and, on odd slices, a
    class-2 square at (10, 10 - k); slice 2 is empty, so every slice's label differs."""
    label = np.zeros((5, 16, 16), np.uint8)
    for k in range(5):
        if k == 2:
            continue
        label[k, k : k + 3, k : k + 2] = 1
        if k % 2:
            label[k, 10:13, 10 - k : 13 - k] = 2
    return label


def _frame_info(seg: pydicom.Dataset) -> list[tuple[int, str, np.ndarray]]:
    """(segment number, referenced SOPInstanceUID, ImagePositionPatient) of each SEG frame."""
    out = []
    for item in seg.PerFrameFunctionalGroupsSequence:
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        ipp = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        out.append((number, str(ref.ReferencedSOPInstanceUID), ipp))
    return out


def _frames(seg: pydicom.Dataset) -> np.ndarray:
    return seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))


# ---------------------------------------------------------------------------------------------
# The SEG object
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["folder", "shuffled_files", "volume"])
def test_frames_reference_the_slice_they_segment(tmp_path, given):
    sources = _sources_by_position(CT5N)
    label = _blob_label_map()
    files = sorted(glob.glob(f"{CT5N}/*"))
    if given == "folder":
        label_map, source = label, CT5N
    elif given == "shuffled_files":
        label_map, source = label, [files[i] for i in np.random.default_rng(0).permutation(5)]
    else:
        # The reader's Volume carries the geometry that is checked against the series.
        label_map, source = dicom.read_dicom_series(CT5N).with_array(label), CT5N
    out = dicom_seg.write_dicom_seg(
        label_map, source, tmp_path / "case.seg.dcm", num_classes=3, model_name="unet3d"
    )
    seg = pydicom.dcmread(out)

    by_uid = {str(ds.SOPInstanceUID): k for k, ds in enumerate(sources)}
    frames = _frames(seg)
    rebuilt = np.zeros_like(label)
    seen = set()
    for (number, uid, ipp), pixels in zip(_frame_info(seg), frames, strict=True):
        k = by_uid[uid]  # the referenced instance is one of the series' slices
        # ... and it is the slice that lies where the frame lies.
        np.testing.assert_allclose(ipp, [float(v) for v in sources[k].ImagePositionPatient])
        np.testing.assert_array_equal(pixels, label[k] == number)
        rebuilt[k][pixels.astype(bool)] = number
        seen.add((k, number))
    np.testing.assert_array_equal(rebuilt, label)
    # Empty (slice, segment) pairs are omitted; every non-empty one is there exactly once.
    expected = {(k, s) for k in range(5) for s in (1, 2) if (label[k] == s).any()}
    assert seen == expected and len(frames) == len(expected)

    assert seg.SOPClassUID == SegmentationStorage and seg.Modality == "SEG"
    assert seg.SegmentationType == "BINARY"
    assert (int(seg.Rows), int(seg.Columns)) == (16, 16)
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.PatientID == sources[0].PatientID
    assert seg.SeriesInstanceUID != sources[0].SeriesInstanceUID
    (ref_series,) = seg.ReferencedSeriesSequence
    assert ref_series.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {str(r.ReferencedSOPInstanceUID) for r in ref_series.ReferencedInstanceSequence} == set(
        by_uid
    )
    segments = seg.SegmentSequence
    assert [int(s.SegmentNumber) for s in segments] == [1, 2]
    assert [s.SegmentLabel for s in segments] == ["class 1", "class 2"]
    for s in segments:
        assert s.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = s.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "medjax unet3d"
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
        assert s.SegmentedPropertyCategoryCodeSequence[0].CodingSchemeDesignator == "SCT"

    # highdicom's own reader, asked per source instance in position order, gives the label map.
    read = hd.seg.segread(out)
    pixels = read.get_pixels_by_source_instance(
        [str(ds.SOPInstanceUID) for ds in sources], combine_segments=True
    )
    np.testing.assert_array_equal(pixels, label)


def test_instance_numbers_run_against_position():
    # The premise of the slice-order test: sorting by InstanceNumber would pair the label map
    # with the slices in reverse.
    sources = _sources_by_position(CT5N)
    numbers = [int(ds.InstanceNumber) for ds in sources]
    assert numbers == sorted(numbers, reverse=True)


def test_enhanced_multiframe_source(tmp_path):
    vol = dicom.read_dicom_series(ENHANCED_CT)
    label = np.zeros(vol.spatial_shape, np.uint8)
    label[0, 100:110, 200:205] = 1  # only the first slice along the normal
    seg = pydicom.dcmread(
        dicom_seg.write_dicom_seg(vol.with_array(label), ENHANCED_CT, tmp_path / "e.seg.dcm")
    )
    src = pydicom.dcmread(ENHANCED_CT, stop_before_pixels=True)
    iop = np.array(
        [
            float(v)
            for v in src.SharedFunctionalGroupsSequence[0]
            .PlaneOrientationSequence[0]
            .ImageOrientationPatient
        ]
    )
    normal = np.cross(iop[:3], iop[3:])
    positions = [
        np.array([float(v) for v in g.PlanePositionSequence[0].ImagePositionPatient])
        for g in src.PerFrameFunctionalGroupsSequence
    ]
    first = int(np.argmin([p @ normal for p in positions]))  # 0-based source frame index
    (item,) = seg.PerFrameFunctionalGroupsSequence
    ref = item.DerivationImageSequence[0].SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert int(ref.ReferencedFrameNumber) == first + 1
    np.testing.assert_allclose(
        [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient], positions[first]
    )
    np.testing.assert_array_equal(_frames(seg)[0], label[0])


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_wrong_shape_names_the_series(tmp_path):
    uid = str(pydicom.dcmread(glob.glob(f"{CT5N}/*")[0]).SeriesInstanceUID)
    with pytest.raises(errors.DataError, match=rf"series {uid}.*\(4, 16, 16\).*\(5, 16, 16\)"):
        dicom_seg.write_dicom_seg(np.zeros((4, 16, 16), np.uint8), CT5N, tmp_path / "x.seg.dcm")
    with pytest.raises(errors.DataError, match=rf"series {uid}.*\(5, 16, 15\)"):
        dicom_seg.write_dicom_seg(np.zeros((5, 16, 15), np.uint8), CT5N, tmp_path / "x.seg.dcm")
    assert not os.listdir(tmp_path)


def test_volume_off_the_series_grid(tmp_path):
    vol = dicom.read_dicom_series(CT5N)
    label = _blob_label_map()
    shifted = volume_lib.Volume(label, vol.spacing, np.add(vol.origin, (0, 0, 2.5)), vol.direction)
    with pytest.raises(errors.DataError, match="origin.*not on this series' grid"):
        dicom_seg.write_dicom_seg(shifted, CT5N, tmp_path / "x.seg.dcm")
    flipped = volume_lib.Volume(label, vol.spacing, vol.origin, vol.direction * [1, -1, 1])
    with pytest.raises(errors.DataError, match="direction"):
        dicom_seg.write_dicom_seg(flipped, CT5N, tmp_path / "x.seg.dcm")
    coarse = volume_lib.Volume(label, (2.5, 1.0, 1.0), vol.origin, vol.direction)
    with pytest.raises(errors.DataError, match="spacing"):
        dicom_seg.write_dicom_seg(coarse, CT5N, tmp_path / "x.seg.dcm")


def test_bad_values(tmp_path):
    label = _blob_label_map()
    with pytest.raises(errors.DataError, match="value 2 is not a class of 2"):
        dicom_seg.write_dicom_seg(label, CT5N, tmp_path / "x.seg.dcm", num_classes=2)
    with pytest.raises(errors.DataError, match="float32 is not an integer"):
        dicom_seg.write_dicom_seg(label.astype(np.float32), CT5N, tmp_path / "x.seg.dcm")
    with pytest.raises(errors.DataError, match="negative"):
        dicom_seg.write_dicom_seg(label.astype(np.int16) - 1, CT5N, tmp_path / "x.seg.dcm")


def test_folder_with_two_series_needs_a_uid(tmp_path):
    shutil.copytree(CT5N, tmp_path / "both")
    shutil.copy(CT_SMALL, tmp_path / "both")
    with pytest.raises(errors.DataError, match="holds 2 DICOM series; pass series_uid"):
        dicom_seg.write_dicom_seg(_blob_label_map(), tmp_path / "both", tmp_path / "x.seg.dcm")
    uid = str(pydicom.dcmread(CT_SMALL).SeriesInstanceUID)
    out = dicom_seg.write_dicom_seg(
        np.ones((1, 128, 128), np.uint8), tmp_path / "both", tmp_path / "x.seg.dcm", series_uid=uid
    )
    assert pydicom.dcmread(out).ReferencedSeriesSequence[0].SeriesInstanceUID == uid


def test_without_highdicom_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "highdicom", None)  # makes `import highdicom` fail
    assert not dicom_seg.available()
    with pytest.raises(errors.MedjaxError, match=r"pip install 'medjax\[dicom_seg\]'"):
        dicom_seg.write_dicom_seg(_blob_label_map(), CT5N, tmp_path / "x.seg.dcm")


# ---------------------------------------------------------------------------------------------
# The segmentation task's outputs
# ---------------------------------------------------------------------------------------------


def _seg_in_nifti_voxels(seg: pydicom.Dataset, nifti: nib.Nifti1Image) -> np.ndarray:
    """The SEG's labels placed, by world position, into the NIfTI's voxel grid."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    iop = np.array([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient])
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    to_voxel = np.linalg.inv(nifti.affine)
    out = np.zeros(nifti.shape, np.uint8)
    for (number, _, ipp), pixels in zip(_frame_info(seg), _frames(seg), strict=True):
        rows, cols = np.nonzero(pixels)
        lps = ipp + np.outer(cols * spacing[1], iop[:3]) + np.outer(rows * spacing[0], iop[3:])
        ras = lps * [-1, -1, 1]
        ijk = (np.c_[ras, np.ones(len(ras))] @ to_voxel.T)[:, :3]
        np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-3)  # on the NIfTI's voxel grid
        i, j, k = np.round(ijk).astype(int).T
        out[i, j, k] = number
    return out


def test_write_outputs_writes_seg_beside_nifti_for_dicom_cases(tmp_path):
    root = tmp_path / "dicom"
    shutil.copytree(CT5N, root / "ct5n")
    shutil.copy(CT_SMALL, root / "ct5n")  # a second series in the same folder
    cases = registry.lookup("crawlers", "dicom_series")(str(root))
    # Reorientation and resampling, so the prediction has to travel back to the series' grid.
    spec = {"reorient": "RAS", "target_spacing_mm": (2.5, 0.976562, 0.976562)}
    manifest = store.build_store(cases, str(tmp_path / "store"), spec, fingerprint=False)
    entries = manifest["cases"]
    assert len(entries) == 2

    config = common.base_config()
    config.model.name = "unet"
    config.model.num_classes = 3
    task = seg_task.SegmentationTask.__new__(seg_task.SegmentationTask)
    task.config = config
    task.regions = ()  # plain classes (what __init__ parses from data.regions)
    task.data = types.SimpleNamespace(splits={"test": entries})
    predictions = {}
    for index, entry in enumerate(entries):
        # A different blob on each slice, so a slice mix-up cannot go unnoticed.
        pred = np.zeros(entry["props"]["shape"], np.uint8)
        for k in range(pred.shape[0]):
            pred[k, 1 + k : 3 + k, 2:5] = 1
            pred[k, 5:7, k : k + 2] = 2
        predictions[index] = pred
    task.write_outputs("test", EvalResult(predictions=predictions), str(tmp_path / "eval"))

    out_dir = tmp_path / "eval" / "predictions"
    for entry in entries:
        seg = pydicom.dcmread(out_dir / f"{entry['id']}.seg.dcm")
        nifti = nib.load(out_dir / f"{entry['id']}.nii.gz")
        expected = np.asarray(nifti.dataobj).astype(np.uint8)
        assert set(np.unique(expected)) == {0, 1, 2}
        # The SEG references this case's series, and agrees with the NIfTI voxel for voxel.
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == entry["id"]
        np.testing.assert_array_equal(_seg_in_nifti_voxels(seg, nifti), expected)
        sources = {
            str(ds.SOPInstanceUID): ds
            for ds in map(pydicom.dcmread, glob.glob(f"{root}/ct5n/*"))
            if ds.SeriesInstanceUID == entry["id"]
        }
        for _, uid, ipp in _frame_info(seg):
            np.testing.assert_allclose(ipp, [float(v) for v in sources[uid].ImagePositionPatient])
    assert not (out_dir / "dicom_seg_skipped.txt").exists()

    # Switched off, or a case whose series has gone: no SEG, and the reason is recorded.
    for f in out_dir.glob("*.seg.dcm"):
        f.unlink()
    config.eval.write_dicom_seg = False
    task.write_outputs("test", EvalResult(predictions=predictions), str(tmp_path / "eval"))
    assert not list(out_dir.glob("*.seg.dcm"))
    config.eval.write_dicom_seg = True
    shutil.rmtree(root)
    task.write_outputs("test", EvalResult(predictions=predictions), str(tmp_path / "eval"))
    assert not list(out_dir.glob("*.seg.dcm"))
    report = (out_dir / "dicom_seg_skipped.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in report) == sorted(e["id"] for e in entries)
