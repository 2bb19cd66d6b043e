"""k-fold splits: balanced, disjoint, covering, grouped, and stable when cases are added."""

from __future__ import annotations

import json
import os

import pytest

from medjax import errors
from medjax.data import splits
from medjax.testing import configs


def _entries(ids):
    return [{"id": i} for i in ids]


def _config(fold, k=3):
    config = configs.tiny_unet()
    config.data.num_folds = k
    config.data.fold = fold
    return config


def test_folds_disjoint_cover_balanced_and_grouped(tmp_path):
    ids = [f"case{i:02d}" for i in range(14)]
    # Patient p0 has 3 scans, p1 two: each must land in one fold.
    groups = {"case00": "p0", "case01": "p0", "case02": "p0", "case03": "p1", "case04": "p1"}
    base = {"train": _entries(ids[:10]), "val": _entries(ids[10:12]), "test": _entries(["t0"])}
    vals, trains = [], []
    for k in range(3):
        out = splits.apply_fold(base, _config(k), str(tmp_path), groups)
        assert [e["id"] for e in out["test"]] == ["t0"]  # the test split is never folded
        val = {e["id"] for e in out["val"]}
        train = {e["id"] for e in out["train"]}
        assert not val & train and val | train == set(ids[:12])
        vals.append(val)
        trains.append(train)
    assert set().union(*vals) == set(ids[:12])
    assert sum(len(v) for v in vals) == 12  # disjoint across folds
    for patient in ({"case00", "case01", "case02"}, {"case03", "case04"}):
        assert sum(bool(patient & v) for v in vals) == 1
    doc = json.load(open(os.path.join(tmp_path, "splits.json")))
    # 12 cases in 9 groups dealt round-robin: 3 groups per fold.
    assert sorted(list(doc["groups"].values()).count(f) for f in range(3)) == [3, 3, 3]
    assert [sorted(f["val"]) for f in doc["folds"]] == [sorted(v) for v in vals]


def test_adding_cases_never_moves_old_ones(tmp_path):
    old_ids = [f"c{i}" for i in range(9)]
    base = {"train": _entries(old_ids)}
    before = [
        {e["id"] for e in splits.apply_fold(base, _config(k), str(tmp_path), {})["val"]}
        for k in range(3)
    ]
    new_ids = old_ids + [f"n{i}" for i in range(4)]
    grown = {"train": _entries(new_ids)}
    after = [
        {e["id"] for e in splits.apply_fold(grown, _config(k), str(tmp_path), {})["val"]}
        for k in range(3)
    ]
    for b, a in zip(before, after, strict=True):
        assert b <= a  # every old validation case is still in its fold
    assert set().union(*after) == set(new_ids)
    # The 4 new groups go to the smallest folds (3, 3, 3 -> 5, 4, 4 in some order).
    assert sorted(len(a) for a in after) == [4, 4, 5]
    # The table is the same for the same cases, whatever their order or the process.
    table = splits.assign_folds(old_ids[::-1], 3)
    assert table == splits.assign_folds(old_ids, 3)


def test_fold_values_and_mismatched_file(tmp_path):
    assert splits.active_fold(_config(None)) is None
    assert splits.active_fold(_config(-1)) is None
    assert splits.active_fold(_config("all")) == "all"
    assert splits.active_fold(_config(2)) == 2
    with pytest.raises(errors.ConfigError, match="data.fold"):
        splits.active_fold(_config(3))
    base = {"train": _entries(["a", "b", "c", "d"])}
    assert splits.apply_fold(base, _config(None), str(tmp_path), {}) == base
    splits.apply_fold(base, _config(0), str(tmp_path), {})
    with pytest.raises(errors.ConfigError, match="num_folds"):
        splits.apply_fold(base, _config(0, k=2), str(tmp_path), {})
