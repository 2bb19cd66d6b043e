"""preprocess.load: NaN/Inf voxels in an image or mask make the case bad input naming its file
(kept out of the fingerprint, listed in report.json, the rest of the store builds); a class
index is not a label path."""

import json
import os

import nibabel as nib
import numpy as np
import pytest

from medjax import errors, registry
from medjax.data import store
from medjax.data.preprocess import load

SPEC = {"grayscale": False, "normalization": {"name": "zscore"}, "label_mode": "binary"}


def _write(root, name, image, label):
    for folder, array in (("imagesTr", image), ("labelsTr", label)):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        nib.save(nib.Nifti1Image(array, np.eye(4)), os.path.join(root, folder, f"{name}.nii.gz"))


def test_nonfinite_voxels_skip_the_case_with_its_file_named(tmp_path):
    root, out = str(tmp_path / "data"), str(tmp_path / "store")
    rng = np.random.default_rng(0)
    label = np.zeros((6, 6, 4), np.uint8)
    label[2:4, 2:4, 1:3] = 1
    good = rng.normal(100.0, 10.0, (6, 6, 4)).astype(np.float32)
    _write(root, "a_good", good, label)
    nan_image = good.copy()
    nan_image[1, 2, 3] = np.nan
    _write(root, "b_nan", nan_image, label)
    inf_image = good.copy()
    inf_image[0, 0, 0], inf_image[5, 5, 3] = np.inf, -np.inf
    _write(root, "c_inf", inf_image, label)
    nan_mask = label.astype(np.float32)
    nan_mask[3, 3, 2] = np.nan
    _write(root, "d_nanmask", good, nan_mask)

    cases = registry.lookup("crawlers", "nifti_volume")(root)
    manifest = store.build_store(cases, out, SPEC, workers=0)

    assert [c["id"] for c in manifest["cases"]] == ["a_good"]
    report = json.load(open(os.path.join(out, "report.json")))
    reasons = {p["id"]: p["reason"] for p in report["skipped"]}
    assert set(reasons) == {"b_nan", "c_inf", "d_nanmask"}
    assert "imagesTr/b_nan.nii.gz" in reasons["b_nan"]
    assert "1 NaN and 0 infinite" in reasons["b_nan"]
    assert "imagesTr/c_inf.nii.gz" in reasons["c_inf"]
    assert "0 NaN and 2 infinite" in reasons["c_inf"]
    assert "labelsTr/d_nanmask.nii.gz" in reasons["d_nanmask"] and "mask" in reasons["d_nanmask"]
    # The fingerprint saw the good case only: its statistics are the good case's, finite.
    fp = store.load_fingerprint(out)
    assert fp["case_ids"] == ["a_good"]
    fg = good[label > 0].astype(np.float64)  # NIfTI (i, j, k) order; same voxels, same stats
    assert np.isclose(fp["foreground_intensity"][0]["mean"], fg.mean(), rtol=1e-6)
    stored = np.load(os.path.join(store.case_dir(out, "a_good"), "image.npy"))
    assert np.isfinite(stored).all()


def test_a_class_index_in_label_is_refused_with_the_key_to_use(tmp_path):
    path = str(tmp_path / "a.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), path)
    assert load.load_case({"id": "a", "image": path, "label": None})[1] is None
    with pytest.raises(errors.DataError, match="class_index"):
        load.load_case({"id": "a", "image": path, "label": 1})
