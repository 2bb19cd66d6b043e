"""Hostile case ids: a crafted DICOM uid or file name never makes the store touch a path outside
itself; the stored id is a safe file name and the manifest maps it back to the original."""

import hashlib
import json
import os
import warnings

import numpy as np
import pydicom
import pytest
from PIL import Image

from medjax import errors, registry
from medjax.data import case_ids, store

SERIES = os.path.join(os.path.dirname(__file__), "dicom", "ct_series_reduced_CT5N")
SPEC = {
    "grayscale": False,
    "normalization": {"name": "ct", "window": (-1000, 1000)},
    "label_mode": "binary",
}


def test_safe_case_id_by_hand():
    sha = lambda s: hashlib.sha1(s.encode()).hexdigest()[:8]  # noqa: E731
    assert case_ids.safe_case_id("1.2.840.10008.5") == "1.2.840.10008.5"  # a DICOM uid: as is
    assert case_ids.safe_case_id("case_01-a") == "case_01-a"
    assert case_ids.safe_case_id("../../x") == f"_.._x-{sha('../../x')}"
    assert case_ids.safe_case_id("/abs/p") == f"_abs_p-{sha('/abs/p')}"
    assert case_ids.safe_case_id("..") == f"case-{sha('..')}"
    assert case_ids.safe_case_id("") == f"case-{sha('')}"
    long = "x" * 300
    assert case_ids.safe_case_id(long) == "x" * 91 + f"-{sha(long)}"
    raws = ["a/b", "a_b", "a b", "a\\b", "../a_b", "/a_b", "a" * 120, "a" * 121, ".a_b", "Ü"]
    safe = [case_ids.safe_case_id(r) for r in raws]
    assert len(set(safe)) == len(raws)  # distinct raw ids never collide
    for s in safe:
        assert case_ids.safe_case_id(s) == s  # idempotent
        assert len(s) <= case_ids.MAX_LENGTH and not s.startswith(".")
        assert os.path.basename(s) == s and s not in (".", "..")


def test_ensure_inside_refuses_escapes_and_symlinks(tmp_path):
    base = tmp_path / "store"
    (base / "cases").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    assert case_ids.ensure_inside(base, base / "cases" / "a") == str(base / "cases" / "a")
    for bad in (base / ".." / "outside", "/etc", base):
        with pytest.raises(errors.DataError, match="outside|Refusing"):
            case_ids.ensure_inside(base, bad)
    os.symlink(tmp_path / "outside", base / "cases" / "link")
    with pytest.raises(errors.DataError, match="outside"):
        case_ids.ensure_inside(base, base / "cases" / "link" / "x")


def _series_with_uid(dst, uid, patient):
    os.makedirs(dst)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on a UI value that is not a uid
        for name in sorted(os.listdir(SERIES)):
            ds = pydicom.dcmread(os.path.join(SERIES, name))
            ds.SeriesInstanceUID = uid
            ds.PatientID = patient
            ds.save_as(os.path.join(dst, name))


def _tree(path):
    return sorted(
        (os.path.relpath(os.path.join(d, f), path), open(os.path.join(d, f), "rb").read())
        for d, _, files in os.walk(path)
        for f in files
    )


def test_crafted_dicom_uids_stay_inside_the_store(tmp_path):
    # The store sits at work/store: "../../../victim" from work/store/cases is tmp/victim,
    # the folder the old code removed before moving the new case "into" it.
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    before = _tree(victim)
    root, out = tmp_path / "dicom", tmp_path / "work" / "store"
    raws = ["../../../victim", str(victim), "1.2.3.4"]
    for i, uid in enumerate(raws):
        _series_with_uid(root / f"s{i}", uid, patient="../../" + uid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = registry.lookup("crawlers", "dicom_series")(str(root))
        manifest = store.build_store(cases, str(out), SPEC, workers=0)
        again = store.build_store(cases, str(out), SPEC, workers=0)  # re-run: reuse, no escape

    safe = {case_ids.safe_case_id(r): r for r in raws}
    assert sorted(c["id"] for c in manifest["cases"]) == sorted(safe)
    assert manifest["source_ids"] == safe == again["source_ids"]
    assert json.load(open(out / "manifest.json"))["source_ids"] == safe
    assert sorted(os.listdir(out / "cases")) == sorted(safe)
    for entry in manifest["cases"]:
        assert entry["source_id"] == safe[entry["id"]]
        np.load(out / "cases" / entry["id"] / "image.npy")  # every case was written inside
    assert _tree(victim) == before
    assert sorted(os.listdir(tmp_path)) == ["dicom", "victim", "work"]
    assert sorted(os.listdir(tmp_path / "work")) == ["store"]


def test_crafted_file_names_give_safe_ids(tmp_path):
    root, out = tmp_path / "data", tmp_path / "store"
    names = ["a b;rm -rf", "résumé", "-x", "ok_1"]
    for folder in ("images", "masks"):
        os.makedirs(root / folder)
    for name in names:
        Image.fromarray(np.full((8, 8), 9, np.uint8)).save(root / "images" / f"{name}.png")
        mask = np.zeros((8, 8), np.uint8)
        mask[2:5, 2:5] = 255
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    cases = registry.lookup("crawlers", "segmentation_file")(str(root))
    by_source = {case_ids.source_id(c): c["id"] for c in cases}
    assert by_source == {n: case_ids.safe_case_id(n) for n in names}
    assert by_source["ok_1"] == "ok_1" and by_source["-x"] == "-x"
    manifest = store.build_store(cases, str(out), {**SPEC, "grayscale": True}, workers=0)
    assert manifest["source_ids"] == {v: k for k, v in by_source.items()}
    assert sorted(os.listdir(out / "cases")) == sorted(by_source.values())
