"""Tests for medjax.data.crawlers on real (tiny) files written in tmp_path."""

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medjax import errors, registry
from medjax.data import crawlers, crawlers_volume

SHARED_DICOM = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "dicom")


def _png(path, value=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((4, 4), value, np.uint8)).save(path)


def _nii(path, shape=(3, 3, 2)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4)), path)


def test_registered_and_lookup():
    for name in ("segmentation_file", "classification_folder", "nifti_volume", "dicom_series"):
        assert name in registry.names("crawlers")
    assert callable(registry.lookup("crawlers", "segmentation_file(mask_dir='masks')"))


def test_segmentation_split_layout(tmp_path):
    for split, ids in {"train": ["b", "a"], "val": ["c"], "test": ["d"]}.items():
        for i in ids:
            _png(tmp_path / split / "images" / f"{i}.png")
            _png(tmp_path / split / "masks" / f"{i}.png", 255)
    cases = registry.lookup("crawlers", "segmentation_file")(str(tmp_path))
    assert [(c["split"], c["id"]) for c in cases] == [
        ("test", "d"),
        ("train", "a"),
        ("train", "b"),
        ("val", "c"),
    ]
    a = cases[1]
    assert a["image"] == str(tmp_path / "train" / "images" / "a.png")
    assert a["label"] == str(tmp_path / "train" / "masks" / "a.png")


def test_segmentation_flat_layout_with_mask_suffix_and_mixed_formats(tmp_path):
    _png(tmp_path / "images" / "x1.png")
    _png(tmp_path / "masks" / "x1_mask.png")
    _nii(str(tmp_path / "images" / "x2.nii.gz"))
    _nii(str(tmp_path / "masks" / "x2.nii.gz"))
    (tmp_path / "images" / "._x3.png").write_bytes(b"macOS junk")  # must be ignored
    (tmp_path / "images" / "notes.txt").write_text("ignored")
    cases = crawlers.get_segmentation_file()(str(tmp_path))
    assert [c["id"] for c in cases] == ["x1", "x2"]
    assert cases[0]["label"].endswith("x1_mask.png")
    assert cases[1]["label"].endswith("x2.nii.gz")
    assert "split" not in cases[0]


def test_segmentation_errors(tmp_path):
    with pytest.raises(errors.DataError, match="nowhere"):
        crawlers.get_segmentation_file()(str(tmp_path / "nowhere"))
    _png(tmp_path / "images" / "lonely.png")
    _png(tmp_path / "masks" / "other.png")
    with pytest.raises(errors.DataError, match="lonely.png"):
        crawlers.get_segmentation_file()(str(tmp_path))
    cases = crawlers.get_segmentation_file(allow_unlabeled=True)(str(tmp_path))
    assert cases == [
        {"id": "lonely", "image": str(tmp_path / "images" / "lonely.png"), "label": None}
    ]


def test_segmentation_duplicate_ids_across_splits(tmp_path):
    for split in ("train", "val"):
        _png(tmp_path / split / "images" / "same.png")
        _png(tmp_path / split / "masks" / "same.png")
    with pytest.raises(errors.DataError, match="same"):
        crawlers.get_segmentation_file()(str(tmp_path))
    ids = [c["id"] for c in crawlers.get_segmentation_file(id_with_split=True)(str(tmp_path))]
    assert ids == ["train_same", "val_same"]


def test_classification_folder(tmp_path):
    _png(tmp_path / "malignant" / "1.png")
    _png(tmp_path / "benign" / "1.png")
    _png(tmp_path / "benign" / "2.png")
    cases = crawlers.get_classification_folder()(str(tmp_path))
    assert all(c["label"] is None for c in cases)  # no mask: the class is class_index
    assert [(c["id"], c["class_index"]) for c in cases] == [
        ("benign_1", 0),
        ("benign_2", 0),
        ("malignant_1", 1),
    ]
    assert cases[0]["class_names"] == ["benign", "malignant"]
    fixed = crawlers.get_classification_folder(class_names=["malignant", "benign"])(str(tmp_path))
    assert {c["id"]: c["class_index"] for c in fixed}["benign_1"] == 1


def test_classification_split_layout(tmp_path):
    _png(tmp_path / "train" / "cat" / "a.png")
    _png(tmp_path / "train" / "dog" / "b.png")
    _png(tmp_path / "val" / "dog" / "c.png")
    cases = crawlers.get_classification_folder()(str(tmp_path))
    assert [(c["split"], c["class_name"], c["class_index"]) for c in cases] == [
        ("train", "cat", 0),
        ("train", "dog", 1),
        ("val", "dog", 1),
    ]


def test_nifti_volume_nnunet_channels(tmp_path):
    for cid in ("case_001", "case_002"):
        for ch in (0, 1):
            _nii(str(tmp_path / "imagesTr" / f"{cid}_{ch:04d}.nii.gz"))
        _nii(str(tmp_path / "labelsTr" / f"{cid}.nii.gz"))
    _nii(str(tmp_path / "imagesTs" / "case_009_0000.nii.gz"))
    _nii(str(tmp_path / "imagesTs" / "case_009_0001.nii.gz"))
    info = {"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "tumour": 1}}
    (tmp_path / "dataset.json").write_text(json.dumps(info))
    cases = crawlers_volume.get_nifti_volume()(str(tmp_path))
    assert [(c["split"], c["id"]) for c in cases] == [
        ("test", "case_009"),
        ("train", "case_001"),
        ("train", "case_002"),
    ]
    c1 = cases[1]
    assert [os.path.basename(p) for p in c1["image"]] == [
        "case_001_0000.nii.gz",
        "case_001_0001.nii.gz",
    ]
    assert c1["label"].endswith("labelsTr/case_001.nii.gz")
    assert c1["label_names"] == {0: "background", 1: "tumour"}
    assert c1["channel_names"] == {0: "T1", 1: "T2"}
    assert cases[0]["label"] is None


def test_nifti_volume_missing_channel_and_label(tmp_path):
    _nii(str(tmp_path / "imagesTr" / "c_0000.nii.gz"))
    _nii(str(tmp_path / "imagesTr" / "c_0002.nii.gz"))
    _nii(str(tmp_path / "labelsTr" / "c.nii.gz"))
    with pytest.raises(errors.DataError, match="'c'"):
        crawlers_volume.get_nifti_volume()(str(tmp_path))
    os.remove(tmp_path / "imagesTr" / "c_0002.nii.gz")
    os.remove(tmp_path / "labelsTr" / "c.nii.gz")
    with pytest.raises(errors.DataError, match="c_0000.nii.gz"):
        crawlers_volume.get_nifti_volume()(str(tmp_path))


def test_nifti_volume_decathlon_json(tmp_path):
    _nii(str(tmp_path / "imagesTr" / "la_003.nii.gz"), shape=(3, 3, 2, 2))  # 4D: 2 modalities
    _nii(str(tmp_path / "labelsTr" / "la_003.nii.gz"))
    (tmp_path / "imagesTr" / "._la_003.nii.gz").write_bytes(b"junk")
    info = {
        "modality": {"0": "FLAIR", "1": "T1w"},
        "labels": {"0": "background", "1": "edema"},
        "training": [{"image": "./imagesTr/la_003.nii.gz", "label": "./labelsTr/la_003.nii.gz"}],
        "test": [],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(info))
    (case,) = crawlers_volume.get_nifti_volume()(str(tmp_path))
    assert case["id"] == "la_003" and case["image"] == str(tmp_path / "imagesTr" / "la_003.nii.gz")
    assert case["label_names"] == {0: "background", 1: "edema"}
    assert case["channel_names"] == {0: "FLAIR", 1: "T1w"}
    info["training"].append({"image": "./imagesTr/gone.nii.gz", "label": "./labelsTr/gone.nii.gz"})
    (tmp_path / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(errors.DataError, match="gone.nii.gz"):
        crawlers_volume.get_nifti_volume()(str(tmp_path))


def test_dicom_series_with_masks(tmp_path):
    pytest.importorskip("medjax.data.io.dicom")
    series_dir = os.path.join(SHARED_DICOM, "ct_series_reduced_CT5N")
    if not os.path.isdir(series_dir):
        pytest.skip("shared DICOM data not available")
    shutil.copytree(series_dir, tmp_path / "dicom" / "patient1" / "CT5N")
    shutil.copy(os.path.join(SHARED_DICOM, "ct_single", "CT_small.dcm"), tmp_path / "dicom")
    _nii(str(tmp_path / "masks" / "CT5N.nii.gz"))
    cases = crawlers_volume.get_dicom_series(mask_root=str(tmp_path / "masks"))(
        str(tmp_path / "dicom")
    )
    assert len(cases) == 2
    by_image = {os.path.basename(c["image"]): c for c in cases}
    assert by_image["CT5N"]["label"].endswith("CT5N.nii.gz")
    assert len(by_image["CT5N"]["files"]) == 5
    assert by_image["CT_small.dcm"]["label"] is None
    assert all(c["id"] == c["series_uid"] for c in cases)
    with pytest.raises(errors.DataError, match="has no mask"):
        crawlers_volume.get_dicom_series(mask_root=str(tmp_path / "masks"), allow_unlabeled=False)(
            str(tmp_path / "dicom")
        )


def test_label_names_from_dataset_json_both_forms(tmp_path):
    def names(labels, num_classes=3):
        (tmp_path / "dataset.json").write_text(json.dumps({"labels": labels}))
        return crawlers_volume.label_names(str(tmp_path), num_classes)

    assert crawlers_volume.label_names(str(tmp_path), 3) == ()  # no dataset.json
    assert names({"0": "background", "1": "PZ", "2": "TZ"}) == ("PZ", "TZ")  # Decathlon
    assert names({"background": 0, "edema": 1, "non-enh/core": 2}) == ("edema", "non-enh_core")
    assert names({"0": "background", "1": "PZ"}) == ()  # label 2 unnamed
    assert names({"0": "bg", "1": "a", "2": "a"}) == ()  # not distinct
    assert names({"0": "bg", "1": "..", "2": "b"}) == ()  # no name made only of dots
    assert names({"0": "bg", "1": " ../x ", "2": "b"}) == ("_x", "b")
    assert names({"background": 0, "whole tumor": [1, 2, 3]}) == ()  # v2 regions
    assert names({"0": "background", "1": "lesion"}, num_classes=1) == ()  # binary: no names
