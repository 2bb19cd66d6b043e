"""End-to-end geometry round trips: file -> preprocess -> invert -> file -> read."""

import os

import nibabel as nib
import numpy as np

from medjax.data.io import itk, nifti
from medjax.data.preprocess import pipeline

DATA = os.path.join(os.path.dirname(__file__), "..")


def test_oblique_nifti_preprocess_invert_write_read(tmp_path):
    src = os.path.join(DATA, "nifti", "aniso_vox.nii.gz")
    image = nifti.read_nifti(src)
    # A label on the same grid, written and read back as its own NIfTI file.
    lab = np.zeros(image.array.shape, np.uint8)
    body = image.array > np.percentile(image.array, 90)
    lab[body] = 1
    lab[8:12][body[8:12]] = 2
    nifti.write_nifti(image.with_array(lab), tmp_path / "label.nii.gz")
    label = nifti.read_nifti(tmp_path / "label.nii.gz")
    spec = {
        "reorient": "RAS",
        "crop_foreground": True,
        # Half the (5, 4, 4) mm spacing: an exact 2x refinement. Nearest label resampling then
        # replicates 2x2x2 blocks and samples inside them on the way back, so inversion is exact
        # (per-label linear is not: in 3D a voxel's own weight 0.75**3 can lose to 7 neighbours).
        "target_spacing_mm": (2.5, 2.0, 2.0),
        "label_resampling": "nearest",
        "normalization": {"name": "zscore", "use_mask": True},
    }
    x, y, props = pipeline.preprocess_case(image, label, spec)
    assert x.shape[-1] == 1 and y.shape == x.shape[:3]
    assert props["crop_box"] is not None and props["reorient"] is not None
    assert sorted(np.unique(y).tolist()) == [0, 1, 2]
    pred = pipeline.invert_prediction(y, props)
    nifti.write_nifti(pred, tmp_path / "pred.nii.gz")
    written = nib.load(tmp_path / "pred.nii.gz")
    np.testing.assert_allclose(written.affine, nib.load(src).affine, atol=1e-5)
    back = nifti.read_nifti(tmp_path / "pred.nii.gz")
    np.testing.assert_array_equal(back.array, lab)
    np.testing.assert_array_equal(np.asarray(written.dataobj), lab.transpose(2, 1, 0))


def test_ct_window_resample_invert_dice():
    image = itk.read_itk(os.path.join(DATA, "ct_nodule", "lung2_crop_image.nrrd"))
    label = itk.read_itk(os.path.join(DATA, "ct_nodule", "lung2_crop_label.nrrd"))
    spec = {
        "target_spacing_mm": (5.0, 1.25, 1.25),
        "normalization": {"name": "ct", "window": [-1000, 400]},
        "label_mode": "binary",
    }
    x, y, props = pipeline.preprocess_case(image, label, spec)
    assert x.shape == (17, 64, 64, 1)
    assert x.min() >= -1.0 - 0.05 and x.max() <= 1.0 + 0.05  # cubic overshoot only
    pred = pipeline.invert_prediction(y, props).array
    ref = label.array > 0
    dice = 2 * np.logical_and(pred > 0, ref).sum() / ((pred > 0).sum() + ref.sum())
    assert dice > 0.97
    probs = np.stack([1.0 - y, y], -1).astype(np.float32)
    soft = pipeline.invert_prediction(probs, props).array
    assert soft.shape == ref.shape + (2,)
    np.testing.assert_allclose(soft.sum(-1), 1.0, atol=1e-5)
