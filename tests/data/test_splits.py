"""No leakage: seeded train/val/test splits for datasets without split folders, and a fingerprint
computed from the training cases alone (validation and test cases never contribute)."""

import hashlib
import json
import os

import nibabel as nib
import numpy as np
import pytest

from medjax import errors
from medjax.data import fingerprint_cache, pipeline, store
from medjax.testing import configs


def _data_config(**kw):
    c = configs.load_config("unet3d", "tiny").data
    c.val_split, c.train_split, c.test_split = "val", "train", "test"
    for k, v in kw.items():
        c[k] = v
    return c


def _unit(key):  # the hash position of an id, computed here independently
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def test_hash_splits_disjoint_cover_stable_and_seeded():
    ids = [f"case_{i:03d}" for i in range(300)]
    data = _data_config(val_fraction=0.2, test_fraction=0.2, split_seed=0)
    split = {c["id"]: c["split"] for c in pipeline._split_cases([{"id": i} for i in ids], data)}
    assert set(split) == set(ids) and set(split.values()) == {"train", "val", "test"}
    for i in ids:  # val below 0.2, test in [0.2, 0.4), train above: by hand
        u = _unit(i)
        assert split[i] == ("val" if u < 0.2 else "test" if u < 0.4 else "train")
    counts = {s: list(split.values()).count(s) for s in ("train", "val", "test")}
    assert 40 <= counts["val"] <= 80 and 40 <= counts["test"] <= 80
    # Adding cases moves none of the old ones.
    grown = [{"id": i} for i in ids + [f"new_{k}" for k in range(50)]]
    again = {c["id"]: c["split"] for c in pipeline._split_cases(grown, data)}
    assert all(again[i] == split[i] for i in ids)
    # The validation cases are those of the old assignment (no test split carved).
    old = {
        c["id"]: c["split"]
        for c in pipeline._split_cases([{"id": i} for i in ids], _data_config(test_fraction=0.0))
    }
    assert {i for i in ids if split[i] == "val"} == {i for i in ids if old[i] == "val"}
    assert "test" not in old.values()
    # Another seed re-draws the splits, deterministically.
    seeded = _data_config(val_fraction=0.2, test_fraction=0.2, split_seed=3)
    a = [c["split"] for c in pipeline._split_cases([{"id": i} for i in ids], seeded)]
    b = [c["split"] for c in pipeline._split_cases([{"id": i} for i in ids], seeded)]
    assert a == b and a != [split[i] for i in ids]
    assert a == [
        "val" if _unit(f"3:{i}") < 0.2 else "test" if _unit(f"3:{i}") < 0.4 else "train"
        for i in ids
    ]


def test_split_folders_are_kept_and_fractions_checked():
    cases = [{"id": "a", "split": "train"}, {"id": "b", "split": "val"}, {"id": "c"}]
    out = {c["id"]: c["split"] for c in pipeline._split_cases(cases, _data_config())}
    assert out["a"] == "train" and out["b"] == "val"  # named splits untouched
    decathlon = [{"id": f"c{i}", "split": "train"} for i in range(40)] + [
        {"id": "t0", "split": "test"}
    ]
    out = {c["id"]: c["split"] for c in pipeline._split_cases(decathlon, _data_config())}
    # imagesTr only + imagesTs: val carved from the training cases; test is imagesTs alone.
    assert [i for i, s in out.items() if s == "test"] == ["t0"] and "val" in out.values()
    with pytest.raises(errors.ConfigError, match="data.test_fraction=0.6"):
        pipeline._split_cases(cases, _data_config(val_fraction=0.5, test_fraction=0.6))


def _nifti(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([1.0, 1.0, 2.0, 1.0])), path)


def _write_case(root, name, level):
    rng = np.random.default_rng(int(level))
    image = rng.normal(level, 5.0, (8, 8, 4)).astype(np.float32)
    label = np.zeros((8, 8, 4), np.uint8)
    label[2:6, 2:6, 1:3] = 1
    _nifti(os.path.join(root, "imagesTr", f"{name}.nii.gz"), image)
    _nifti(os.path.join(root, "labelsTr", f"{name}.nii.gz"), label)


def test_fingerprint_from_training_cases_only(tmp_path):
    root = str(tmp_path / "data")
    names = [f"c{i:02d}" for i in range(10)]
    for i, name in enumerate(names):
        _write_case(root, name, level=100.0 * (i + 1))
    config = configs.load_config("unet3d", "tiny")
    config.data.root = root
    config.data.store_dir = str(tmp_path / "store")
    config.data.preprocess.target_size = (4, 8, 8)
    config.data.val_fraction, config.data.test_fraction = 0.3, 0.3
    data = pipeline.prepare_data(config)

    report = json.load(open(tmp_path / "store" / "report.json"))
    splits = report["splits"]
    assert sorted(sum(splits.values(), [])) == names  # disjoint and covering every case
    assert all(len(splits[s]) > 0 for s in ("train", "val", "test"))
    assert {k: [e["id"] for e in v] for k, v in data.splits.items()} == splits
    fp = store.load_fingerprint(str(tmp_path / "store"))
    assert fp["case_ids"] == splits["train"]
    # Equal to the fingerprint of the training cases alone, built in another folder.
    train = [
        {
            "id": n,
            "image": os.path.join(root, "imagesTr", f"{n}.nii.gz"),
            "label": os.path.join(root, "labelsTr", f"{n}.nii.gz"),
        }
        for n in splits["train"]
    ]
    alone = fingerprint_cache.ensure_fingerprint(train, str(tmp_path / "alone"))
    assert fp["foreground_intensity"] == alone["foreground_intensity"]
    assert fp["spacings"] == alone["spacings"]
    # Intensity levels differ by case, so the statistics identify the training cases.
    levels = [100.0 * (names.index(n) + 1) for n in splits["train"]]
    # (32 foreground voxels per case around its level, noise sd 5: the mean is within 2.)
    assert fp["foreground_intensity"][0]["mean"] == pytest.approx(np.mean(levels), abs=2.0)

    # Changing a validation or test case leaves the fingerprint as it was.
    before = open(tmp_path / "store" / "fingerprint.json").read()
    for held_out in (splits["val"][0], splits["test"][0]):
        _write_case(root, held_out, level=5000.0)
    pipeline.prepare_data(config)
    assert open(tmp_path / "store" / "fingerprint.json").read() == before
    # ...while changing a training case changes it (the check above could fail).
    _write_case(root, splits["train"][0], level=5000.0)
    pipeline.prepare_data(config)
    assert open(tmp_path / "store" / "fingerprint.json").read() != before
