"""--mode=predict with a tiny 3D run (sliding windows): eval's masks reproduced on the oblique,
anisotropic test NIfTIs; every format family written back in its input's geometry; a DICOM
series whose instance numbers run against position; bad cases skipped with reasons."""

import csv
import glob
import os
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest

import medjax
from medjax.data import synthetic
from medjax.predict import inputs as inputs_lib
from medjax.predict import model as model_lib
from medjax.predict import run_config, runner, segment
from medjax.testing import configs
from medjax.train import loop

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
CT5N = os.path.join(DATA, "dicom", "ct_series_reduced_CT5N")


@pytest.fixture(scope="module")
def run3d(tmp_path_factory):
    config = configs.load_config("unet3d", "tiny")
    config.data.patch_size = (8, 16, 16)  # smaller than the 16x32x32 volumes: sliding windows
    config.train.epochs = 1
    workdir = str(tmp_path_factory.mktemp("run3d"))
    loop.train_and_evaluate(config, workdir)
    result = loop.evaluate(config, workdir)
    root = synthetic.ensure_dataset(config.data.synthetic, **config.data.synthetic_kwargs.to_dict())
    return {"workdir": workdir, "eval_dir": result["dir"], "root": root}


def _by_position(folder):
    files = sorted(glob.glob(os.path.join(folder, "*")))
    normal = None
    keyed = []
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        iop = np.asarray(ds.ImageOrientationPatient, float)
        normal = np.cross(iop[:3], iop[3:])
        keyed.append((float(np.dot(np.asarray(ds.ImagePositionPatient, float), normal)), f, ds))
    return [k[1:] for k in sorted(keyed)]


@pytest.fixture(scope="module")
def predicted(run3d, tmp_path_factory):
    """One predict run over a folder holding every kind of input, good and bad."""
    folder = tmp_path_factory.mktemp("new")
    ts = sorted(glob.glob(os.path.join(run3d["root"], "imagesTs", "*.nii.gz")))
    for path in ts:
        shutil.copy(path, folder)
    shutil.copy(os.path.join(DATA, "nifti", "aniso_vox.nii.gz"), folder)
    shutil.copy(os.path.join(DATA, "seg", "breast1_image.nrrd"), folder)
    medjax.write_volume(medjax.read_volume(ts[0]), str(folder / "as_mha.mha"))
    shutil.copytree(CT5N, folder / "ct_series")
    series = medjax.read_volume(CT5N)
    medjax.write_volume(series, str(folder / "ct_as_nifti.nii.gz"))
    gap = folder / "ct_gap"
    gap.mkdir()
    uid = pydicom.uid.generate_uid()  # another series, so it is not part of ct_series
    for i, (f, _) in enumerate(_by_position(CT5N)):
        if i != 2:  # the middle slice by position is missing
            ds = pydicom.dcmread(f)
            ds.SeriesInstanceUID = uid
            ds.save_as(str(gap / os.path.basename(f)))
    shutil.copy(os.path.join(DATA, "nifti", "functional.nii"), folder)  # 20 channels
    from PIL import Image

    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "slice2d.png")
    config = run_config.get_config(run3d["workdir"])
    config.predict.input = str(folder)
    config.predict.output = str(folder.parent / "out")
    result = runner.predict(config, run3d["workdir"])
    with open(result["csv"]) as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    return {
        "folder": folder,
        "out": folder.parent / "out",
        "rows": rows,
        "ts": ts,
        "result": result,
    }


def test_predict_reproduces_eval_on_the_oblique_test_volumes(run3d, predicted):
    for path in predicted["ts"]:
        name = os.path.basename(path)
        ours = nib.load(predicted["out"] / name)
        theirs = nib.load(os.path.join(run3d["eval_dir"], "predictions", name))
        source = nib.load(path)
        assert ours.shape == source.shape
        np.testing.assert_allclose(ours.affine, source.affine, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))


@pytest.mark.parametrize(
    "case_id, output, source",
    [
        ("aniso_vox", "aniso_vox.nii.gz", "aniso_vox.nii.gz"),
        ("breast1_image", "breast1_image.nrrd", "breast1_image.nrrd"),
        ("as_mha", "as_mha.mha", "as_mha.mha"),
        ("ct_series", "ct_series.nii.gz", "ct_series"),
    ],
)
def test_outputs_keep_each_inputs_format_and_geometry(predicted, case_id, output, source):
    assert predicted["rows"][case_id]["status"] == "ok", predicted["rows"][case_id]
    ours = medjax.read_volume(str(predicted["out"] / output))
    theirs = medjax.read_volume(str(predicted["folder"] / source))
    assert ours.array.shape == theirs.array.shape
    np.testing.assert_allclose(ours.spacing, theirs.spacing, rtol=1e-5)
    np.testing.assert_allclose(ours.origin, theirs.origin, atol=1e-4)
    np.testing.assert_allclose(ours.direction, theirs.direction, atol=1e-5)


def test_same_image_in_another_format_gives_the_same_mask(predicted):
    name = os.path.basename(predicted["ts"][0])
    nii = medjax.read_volume(str(predicted["out"] / name)).array
    np.testing.assert_array_equal(
        medjax.read_volume(str(predicted["out"] / "as_mha.mha")).array, nii
    )
    series = medjax.read_volume(str(predicted["out"] / "ct_series.nii.gz")).array
    as_nifti = medjax.read_volume(str(predicted["out"] / "ct_as_nifti.nii.gz")).array
    np.testing.assert_array_equal(series, as_nifti)


def test_bad_cases_are_skipped_with_their_reason(predicted):
    rows = predicted["rows"]
    assert rows["ct_gap"]["status"] == "skipped"
    assert "missing" in rows["ct_gap"]["reason"].lower() or "gap" in rows["ct_gap"]["reason"]
    assert rows["functional"]["status"] == "skipped"
    assert "20 channel(s)" in rows["functional"]["reason"]
    assert rows["slice2d"]["status"] == "skipped"
    assert "2D image given to a 3D model" in rows["slice2d"]["reason"]
    assert predicted["result"]["ok"] == 7  # 2 test volumes, aniso, nrrd, mha, series, series.nii


def test_dicom_seg_frames_reference_the_right_slices(run3d, tmp_path):
    (case,) = inputs_lib.find_cases(CT5N)[0]
    image = runner.read_case(case)
    labels = np.zeros(image.array.shape, np.uint8)
    labels[1, 4:9, 4:9] = 1  # slice 1 and 3 by position, not by instance number
    labels[3, 2:5, 2:5] = 1
    member = model_lib.load_member(run3d["workdir"])
    result = segment.CaseResult(image.with_array(labels), None, 1.0)
    written = runner.write_case(
        case, result, member.plan, str(tmp_path), model_name="unet", write_dicom_seg=True
    )
    seg = pydicom.dcmread(written["dicom_seg"])
    by_uid = {ds.SOPInstanceUID: ds for _, ds in _by_position(CT5N)}
    ordered_uids = [ds.SOPInstanceUID for _, ds in _by_position(CT5N)]
    frames = seg.PerFrameFunctionalGroupsSequence
    referenced = [
        f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID for f in frames
    ]
    assert sorted(ordered_uids.index(u) for u in referenced) == [1, 3]
    pixels = seg.pixel_array.reshape(len(frames), *labels.shape[1:])
    for frame, uid, pix in zip(frames, referenced, pixels, strict=True):
        np.testing.assert_allclose(
            frame.PlanePositionSequence[0].ImagePositionPatient,
            by_uid[uid].ImagePositionPatient,
            atol=1e-3,
        )
        np.testing.assert_array_equal(pix, labels[ordered_uids.index(uid)])


def test_bundle_predicts_what_the_workdir_predicts(run3d, predicted, tmp_path):
    import json

    from medjax.predict import bundle

    path = bundle.export_bundle(run3d["workdir"], str(tmp_path / "bundle"))
    with open(os.path.join(path, "metadata.json")) as f:
        meta = json.load(f)
    assert "cpu" in meta["platforms"] and meta["jax_version"]
    assert meta["config"]["model"]["name"] == "unet"
    loaded = bundle.load_bundle(path)
    name = os.path.basename(predicted["ts"][0])
    result = loaded.predict_volume(predicted["ts"][0])
    workdir_mask = medjax.read_volume(str(predicted["out"] / name))
    np.testing.assert_array_equal(result.labels.array, workdir_mask.array)
    np.testing.assert_allclose(result.labels.affine, workdir_mask.affine, atol=1e-5)
