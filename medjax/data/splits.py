"""k-fold cross-validation splits, written once per store and stable when cases are added.

``<store>/splits.json`` holds an assignment table ``group -> fold`` (a group is a patient or
series id where the crawler gives one as ``group``, else the case id; a group's cases always
share a fold). The first time, the groups are shuffled with a fixed seed and dealt round-robin
(balanced folds, like nnU-Net's seeded KFold); groups that appear later are dealt, in sorted
order, to the fold with the fewest groups, so no case ever moves to another fold and every
earlier fold's validation set stays as it was. Process 0 writes the file; every process derives
the same table from it (the store's builder runs first on process 0).

``data.fold = k`` makes fold k's groups the validation split and the others the training split;
``"all"`` trains each fold in turn (``medjax.train.crossval``); unset or ``-1``: no folds.

File format (JSON)::

    {"version": 1, "seed": 12345, "num_folds": 5,
     "groups": {"<group>": <fold>, ...},
     "folds": [{"train": [<case id>, ...], "val": [<case id>, ...]}, ...]}

``folds`` is for people (nnU-Net's ``splits_final.json`` shape); ``groups`` is the truth.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from medjax import distributed, errors

SPLITS_FILE = "splits.json"
SPLIT_SEED = 12345  # fixed, so runs with different config.seed share their folds


def fold_number(name: str) -> int | None:
    """``k`` of a ``fold_<k>`` folder name (a fold run of ``data.fold=all``), else None."""
    m = re.fullmatch(r"fold_(\d+)", name) if isinstance(name, str) else None
    return int(m.group(1)) if m else None


def active_fold(config: ml_collections.ConfigDict) -> int | str | None:
    """``data.fold`` as an int in ``0..num_folds-1``, ``"all"``, or None (no folds).

    Raises:
      ConfigError: ``num_folds`` < 2 or a fold outside ``0..num_folds-1``.
    """
    fold, k = config.data.fold, int(config.data.num_folds)
    if fold is None or fold == -1 or fold == "-1":
        return None
    if k < 2:
        raise errors.ConfigError(f"data.num_folds={k}: cross-validation needs at least 2 folds.")
    if isinstance(fold, str) and fold.strip().lower() == "all":
        return "all"
    try:
        fold = int(fold)
    except (TypeError, ValueError):
        fold = -2
    if not 0 <= fold < k:
        raise errors.ConfigError(
            f"data.fold={config.data.fold!r}; expected 0..{k - 1}, 'all' or -1 (no folds)."
        )
    return fold


def assign_folds(
    groups: Sequence[str],
    num_folds: int,
    seed: int = SPLIT_SEED,
    existing: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """The ``group -> fold`` table for ``groups``, extending ``existing`` without moving it.

    Args:
      groups: group ids (duplicates allowed; order does not matter).
      num_folds: k.
      seed: shuffle seed of the first assignment.
      existing: a table from an earlier call (its groups keep their folds).

    Returns:
      A table covering ``existing`` and ``groups``.
    """
    table = dict(existing or {})
    new = sorted(set(groups) - set(table))
    if not table:
        order = np.random.default_rng(seed).permutation(len(new))
        return {new[i]: int(pos % num_folds) for pos, i in enumerate(order)}
    counts = np.bincount(np.asarray(list(table.values()), np.int64), minlength=num_folds)
    for group in new:
        fold = int(np.argmin(counts))  # the smallest fold, lowest index on ties
        table[group] = fold
        counts[fold] += 1
    return table


def load_or_update(
    store_dir: str, case_groups: Mapping[str, str], num_folds: int, seed: int = SPLIT_SEED
) -> dict[str, Any]:
    """Reads ``<store>/splits.json``, extends it with new groups, writes it back (process 0).

    Args:
      store_dir: the store folder.
      case_groups: ``case id -> group`` of every case to be split (the non-test cases).
      num_folds: k (must match a file written before).
      seed: shuffle seed (must match a file written before).

    Returns:
      The splits document (see the module docstring).

    Raises:
      ConfigError: the file was written for another ``num_folds`` or seed.
    """
    path = os.path.join(store_dir, SPLITS_FILE)
    existing: dict[str, int] = {}
    if os.path.exists(path):
        with open(path) as f:
            doc = json.load(f)
        if doc.get("num_folds") != num_folds or doc.get("seed") != seed:
            raise errors.ConfigError(
                f"data.num_folds={num_folds}: {path} was written for {doc.get('num_folds')} "
                f"folds (seed {doc.get('seed')}); use that number or delete the file to "
                "re-split (earlier folds' runs then no longer match)."
            )
        existing = {str(g): int(f) for g, f in doc["groups"].items()}
    table = assign_folds(list(case_groups.values()), num_folds, seed, existing)
    folds = [{"train": [], "val": []} for _ in range(num_folds)]
    for case_id in sorted(case_groups):
        fold = table[case_groups[case_id]]
        for k in range(num_folds):
            folds[k]["val" if k == fold else "train"].append(case_id)
    doc = {"version": 1, "seed": seed, "num_folds": num_folds, "groups": table, "folds": folds}
    if table != existing and distributed.is_main():
        os.makedirs(store_dir, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    return doc


def apply_fold(
    splits: Mapping[str, list[dict[str, Any]]],
    config: ml_collections.ConfigDict,
    store_dir: str,
    groups: Mapping[str, str],
) -> dict[str, list[dict[str, Any]]]:
    """``splits`` with the training and validation cases re-split by ``data.fold``.

    The cases of ``data.train_split`` and ``data.val_split`` are pooled and split by the
    fold table; every other split (the test split) is left as it is. ``"all"`` is resolved
    by the caller (one fold per run); with no folds ``splits`` is returned unchanged.

    Args:
      splits: split name -> manifest entries (each with ``id``).
      config: for ``data.fold``, ``data.num_folds`` and the split names.
      store_dir: where ``splits.json`` lives.
      groups: case id -> group (patient/series); a missing id is its own group.

    Raises:
      ConfigError: see ``active_fold``; ``"all"`` reaching a single run.
    """
    fold = active_fold(config)
    if fold is None:
        return dict(splits)
    if fold == "all":
        raise errors.ConfigError(
            "data.fold='all' trains every fold in turn (launch.py --mode=train or "
            "medjax.train.crossval.train_folds); one run takes one fold."
        )
    train, val = config.data.train_split, config.data.val_split
    pool: dict[str, dict[str, Any]] = {}
    for name in (train, val):
        for entry in splits.get(name, []):
            pool.setdefault(entry["id"], entry)
    doc = load_or_update(
        store_dir, {cid: str(groups.get(cid, cid)) for cid in pool}, int(config.data.num_folds)
    )
    val_ids = set(doc["folds"][fold]["val"])
    out = {k: v for k, v in splits.items() if k not in (train, val)}
    out[train] = [e for cid, e in pool.items() if cid not in val_ids]
    out[val] = [e for cid, e in pool.items() if cid in val_ids]
    return out
