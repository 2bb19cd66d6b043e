"""Tests of the cutout sources (balanced sampling: tests/data/test_sampling.py)."""

import pickle

import grain
import numpy as np
import pytest

from medjax import errors
from medjax.data.luna import csvs, sources


def test_source_records_and_label_modes(luna_store):
    table = sources.read_store_table(luna_store)
    src = sources.CutoutSource(luna_store)
    assert len(src) == len(table["row"])
    item = src[3]
    assert item["image"].shape == (8, 16, 16, 1) and item["image"].dtype == np.float32
    assert item["label"].dtype == np.int32 and item["index"] == 3
    cut = np.load(luna_store / "cutouts.npy")
    np.testing.assert_array_equal(item["image"][..., 0], cut[3].astype(np.float32))
    nodule = table["class"].astype(int)
    malignant = table["malignancy"].astype(bool)
    np.testing.assert_array_equal(src.labels, nodule)
    m3 = sources.CutoutSource(luna_store, label_mode="malignancy3")
    np.testing.assert_array_equal(m3.labels, nodule * (1 + malignant))
    m2 = sources.CutoutSource(luna_store, label_mode="malignancy2")
    np.testing.assert_array_equal(m2.rows, np.flatnonzero(nodule == 1))
    np.testing.assert_array_equal(m2.labels, malignant[nodule == 1])
    with pytest.raises(errors.ConfigError, match="malignancy3"):
        sources.CutoutSource(luna_store, label_mode="cancer")
    with pytest.raises(IndexError):
        src[len(src)]


def test_source_pickles_without_array_and_works_in_grain(luna_store):
    src = sources.CutoutSource(luna_store)
    src[0]  # Opens the memmap.
    blob = pickle.dumps(src)
    assert len(blob) < 50_000  # The cutouts themselves are not copied.
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again[5]["image"], src[5]["image"])
    ds = grain.MapDataset.source(src).batch(4)
    batch = ds[0]
    assert batch["image"].shape == (4, 8, 16, 16, 1) and batch["label"].shape == (4,)


def test_validation_source_is_every_candidate_of_its_series(luna_root, luna_store):
    train_uids, val_uids = csvs.luna_fold_split(luna_root, 1)
    table = sources.read_store_table(luna_store)
    rows = sources.rows_for_series(table, val_uids)
    val = sources.CutoutSource(luna_store, rows)
    expected = [i for i, u in enumerate(table["seriesuid"]) if u in set(val_uids)]
    assert val.rows.tolist() == expected  # All of them, in store order, nothing repeated.
    assert [int(val[i]["index"]) for i in range(len(val))] == expected
    n_pos = sum(c.label for c in csvs.load_candidates(luna_root) if c.seriesuid in set(val_uids))
    assert int(val.labels.sum()) == n_pos and n_pos < len(val) / 2  # Unbalanced.
    assert set(sources.rows_for_series(table, train_uids)).isdisjoint(rows)
