"""Tests of the cutout sources and balanced epoch sampling."""

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


@pytest.mark.parametrize("ratio, length", [((1, 1), 40), ((1, 3), 40), ((2, 1), 30)])
def test_balanced_ratio_exact(ratio, length):
    labels = np.array([1] * 3 + [0] * 50)
    idx = sources.balanced_epoch_indices(labels, ratio=ratio, epoch_length=length, seed=0, epoch=0)
    assert idx.shape == (length,) and idx.dtype == np.int64
    n_pos = int((labels[idx] > 0).sum())
    assert n_pos * ratio[1] == (length - n_pos) * ratio[0]
    # The 3 positives are repeated as needed, evenly (a full pass before any repeat).
    counts = np.bincount(idx[labels[idx] == 1], minlength=3)
    assert counts.max() - counts.min() <= 1


def test_balanced_three_classes_and_remainder():
    labels = np.array([0] * 20 + [1] * 4 + [2] * 2)
    idx = sources.balanced_epoch_indices(labels, ratio=(2, 1, 1), epoch_length=40, seed=1, epoch=0)
    np.testing.assert_array_equal(np.bincount(labels[idx]), [20, 10, 10])
    odd = sources.balanced_epoch_indices(labels, ratio=(1, 1), epoch_length=7, seed=1, epoch=0)
    assert len(odd) == 7 and abs(int((labels[odd] > 0).sum()) - 3.5) == 0.5


def test_balanced_deterministic_and_epochs_differ():
    labels = np.array([1] * 5 + [0] * 100)
    kw = dict(ratio=(1, 1), epoch_length=20)
    a = sources.balanced_epoch_indices(labels, seed=3, epoch=0, **kw)
    np.testing.assert_array_equal(a, sources.balanced_epoch_indices(labels, seed=3, epoch=0, **kw))
    assert not np.array_equal(a, sources.balanced_epoch_indices(labels, seed=4, epoch=0, **kw))
    b = sources.balanced_epoch_indices(labels, seed=3, epoch=1, **kw)
    assert not np.array_equal(a, b)
    # Negatives are cycled across epochs: 10 per epoch, so 10 epochs see all 100 exactly once.
    seen = np.concatenate(
        [sources.balanced_epoch_indices(labels, seed=3, epoch=e, **kw) for e in range(10)]
    )
    negatives = seen[labels[seen] == 0]
    assert sorted(negatives.tolist()) == list(range(5, 105))


def test_balanced_errors():
    with pytest.raises(errors.DataError, match="positive"):
        sources.balanced_epoch_indices(np.zeros(5), epoch_length=4, seed=0, epoch=0)
    with pytest.raises(errors.ConfigError):
        sources.balanced_epoch_indices(np.ones(5), ratio=(0, 0), epoch_length=4, seed=0, epoch=0)
    only_pos = sources.balanced_epoch_indices(
        np.ones(5), ratio=(1, 0), epoch_length=4, seed=0, epoch=0
    )
    assert len(only_pos) == 4
