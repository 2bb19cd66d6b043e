"""Files a crawler passes over (a README, an RTSTRUCT, a note beside the images) are listed with
their reason in the store's report.json, not only in a debug log."""

import json
import os
import warnings

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medjax import registry
from medjax.data import pipeline, store
from medjax.testing import configs

SERIES = os.path.join(os.path.dirname(__file__), "dicom", "ct_series_reduced_CT5N")
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"


def _rtstruct(path):
    """A minimal RT Structure Set: a DICOM object with a series but no pixels."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RTSTRUCT_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_STORAGE, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "RTSTRUCT", generate_uid(), "1.2.3"
    ds.save_as(path, enforce_file_format=True)


def test_dicom_readme_and_rtstruct_are_in_the_report(tmp_path):
    root = tmp_path / "dicom"
    for k in range(3):
        os.makedirs(root / f"s{k}")
        for name in sorted(os.listdir(SERIES)):
            ds = pydicom.dcmread(os.path.join(SERIES, name))
            ds.SeriesInstanceUID = f"1.2.3.{k}"
            ds.save_as(root / f"s{k}" / name)
    (root / "README.txt").write_text("scanner notes")
    _rtstruct(str(root / "s0" / "rtstruct.dcm"))
    config = configs.load_config("unet3d", "tiny")
    config.data.root, config.data.store_dir = str(root), str(tmp_path / "store")
    config.data.crawler = "dicom_series"
    config.data.preprocess.target_spacing_mm = None
    config.data.preprocess.target_size = (4, 8, 8)
    config.data.val_fraction = config.data.test_fraction = 0.0  # all three train
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = pipeline.prepare_data(config)
    assert sorted(e["id"] for e in data.splits["train"]) == ["1.2.3.0", "1.2.3.1", "1.2.3.2"]
    report = json.load(open(tmp_path / "store" / "report.json"))
    reasons = {os.path.basename(f["file"]): f["reason"] for f in report["skipped_files"]}
    assert set(reasons) == {"README.txt", "rtstruct.dcm"}
    assert reasons["README.txt"] == "not DICOM"
    assert "without an image" in reasons["rtstruct.dcm"]
    assert report["splits"] == {"train": ["1.2.3.0", "1.2.3.1", "1.2.3.2"]}


def test_file_crawlers_list_what_they_skip(tmp_path):
    root = tmp_path / "seg"
    for folder in ("images", "masks"):
        os.makedirs(root / "train" / folder)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "train" / folder / "a.png")
    (root / "train" / "images" / "notes.txt").write_text("x")
    (root / "train" / "masks" / "labels.csv").write_text("x")
    (root / "train" / "images" / ".DS_Store").write_text("x")  # hidden: not worth a line
    cases = registry.lookup("crawlers", "segmentation_file")(str(root))
    assert [c["id"] for c in cases] == ["a"]
    assert sorted(os.path.basename(f["file"]) for f in cases.skipped_files) == [
        "labels.csv",
        "notes.txt",
    ]
    assert all("not an image file" in f["reason"] for f in cases.skipped_files)
    manifest = store.build_store(
        cases,
        str(tmp_path / "store"),
        {"grayscale": True, "normalization": {"name": "none"}},
        skipped_files=cases.skipped_files,
    )
    assert [c["id"] for c in manifest["cases"]] == ["a"]
    report = json.load(open(tmp_path / "store" / "report.json"))
    assert report["skipped_files"] == cases.skipped_files

    cls = tmp_path / "cls"
    os.makedirs(cls / "cat")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(cls / "cat" / "1.png")
    (cls / "cat" / "README.md").write_text("x")
    cases = registry.lookup("crawlers", "classification_folder")(str(cls))
    assert [os.path.basename(f["file"]) for f in cases.skipped_files] == ["README.md"]
