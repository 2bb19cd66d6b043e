"""A preprocessing run over a DICOM tree with bad cases keeps the good ones and reports the rest."""

import json
import os
import shutil

import numpy as np
import pydicom

from medjax import registry
from medjax.data import io as mio
from medjax.data import store

SERIES = os.path.join(os.path.dirname(__file__), "dicom", "ct_series_reduced_CT5N")
SPEC = {
    "grayscale": False,
    "normalization": {"name": "ct", "window": (-1000, 1000)},
    "label_mode": "binary",
}


def _copy_series(dst, uid):
    os.makedirs(dst)
    for name in sorted(os.listdir(SERIES)):
        ds = pydicom.dcmread(os.path.join(SERIES, name))
        ds.SeriesInstanceUID = uid
        ds.save_as(os.path.join(dst, name))
    return sorted(os.listdir(dst))


def test_dicom_tree_with_bad_cases(tmp_path):
    root, masks = tmp_path / "dicom", tmp_path / "masks"
    os.makedirs(masks)
    _copy_series(root / "good", "1.2.3.1")
    files = _copy_series(root / "missing", "1.2.3.2")
    os.remove(root / "missing" / files[2])  # a gap in the middle of the series
    files = _copy_series(root / "truncated", "1.2.3.3")
    data = open(root / "truncated" / files[1], "rb").read()
    open(root / "truncated" / files[1], "wb").write(data[: len(data) // 2])
    _copy_series(root / "mismatch", "1.2.3.4")
    (root / "notes.txt").write_text("not an image")
    good = mio.read_volume(str(root / "good"))
    label = np.zeros(good.array.shape, np.uint8)
    label[2, 4:10, 4:10] = 1
    mio.write_volume(good.with_array(label), str(masks / "good.nii.gz"))
    wrong = good.with_array(np.zeros((5, 8, 8), np.uint8))
    wrong.spacing = (2.5, 8.0, 8.0)
    mio.write_volume(wrong, str(masks / "mismatch.nii.gz"))

    cases = registry.lookup("crawlers", "dicom_series", mask_root=str(masks))(str(root))
    manifest = store.build_store(cases, str(tmp_path / "store"), SPEC, workers=0)
    assert [c["id"] for c in manifest["cases"]] == ["1.2.3.1"]
    kept = np.load(tmp_path / "store" / "cases" / "1.2.3.1" / "label.npy")
    assert kept.sum() == 36
    report = json.load(open(tmp_path / "store" / "report.json"))
    reasons = {p["id"]: p["reason"] for p in report["skipped"]}
    assert set(reasons) == {"1.2.3.2", "1.2.3.3", "1.2.3.4"}
    assert "missing" in reasons["1.2.3.2"].lower() or "gap" in reasons["1.2.3.2"].lower()
    assert files[1] in reasons["1.2.3.3"]
    assert "mismatch" in json.dumps(report["skipped"])
    shutil.rmtree(tmp_path / "store" / "cases" / "1.2.3.1")
    # A re-run redoes only what is missing and reports the same bad cases.
    manifest = store.build_store(cases, str(tmp_path / "store"), SPEC, workers=0)
    assert [c["id"] for c in manifest["cases"]] == ["1.2.3.1"]
