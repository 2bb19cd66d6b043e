"""LUNA16 tables: parse the CSVs, match candidates to annotations, split by series.

LUNA16's coordinates (``coordX, coordY, coordZ``) are ITK physical points: LPS millimetres in
``x, y, z`` order. They are kept as such here; ``medjax.data.luna.geometry`` maps them to voxels.

Splits are always by series (scan): candidates of one scan are strongly correlated, so a
candidate-level split would leak.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
import re
from collections.abc import Iterable, Sequence

import numpy as np

from medjax import errors

ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "class")
MALIGNANCY_COLUMN = "malignancy"
_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n"}


@dataclasses.dataclass(frozen=True)
class Annotation:
    """One annotated finding.

    Attributes:
      seriesuid: the scan's series instance uid.
      xyz: ITK physical point (LPS mm, x, y, z) of the finding's centre.
      diameter_mm: the finding's diameter (LUNA writes -1 for unknown in the excluded list).
      malignancy: True/False from a malignancy table, None when the table has no such column.
    """

    seriesuid: str
    xyz: tuple[float, float, float]
    diameter_mm: float
    malignancy: bool | None = None


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One candidate location, optionally matched to an annotation.

    Attributes:
      seriesuid: the scan's series instance uid.
      xyz: ITK physical point (LPS mm, x, y, z).
      label: LUNA's ``class`` column: 1 nodule, 0 not a nodule.
      diameter_mm: the matched annotation's diameter; 0.0 when unmatched.
      malignancy: the matched annotation's malignancy; False when unmatched or unknown.
    """

    seriesuid: str
    xyz: tuple[float, float, float]
    label: int
    diameter_mm: float = 0.0
    malignancy: bool = False


def read_table(path: str | os.PathLike, required: Sequence[str]) -> list[tuple[int, dict]]:
    """Reads a CSV as ``(line_number, row dict)`` pairs after checking its header.

    Raises:
      DataError: the file is missing or its header lacks a ``required`` column.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise errors.DataError(f"{path}: file not found.")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise errors.DataError(
                f"{path}:1: header {header} lacks column(s) {missing}; expected {list(required)}."
            )
        reader.fieldnames = header
        # Line numbers are 1-based and count the header, as an editor shows them.
        return [(i + 2, row) for i, row in enumerate(reader)]


def parse_float(path: str | os.PathLike, line: int, row: dict, column: str) -> float:
    """``float(row[column])``; a missing, non-numeric or non-finite value raises DataError."""
    value = row.get(column)
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise errors.DataError(
            f"{path}:{line}: column {column!r} is {value!r}, not a number."
        ) from None
    if not np.isfinite(out):
        raise errors.DataError(f"{path}:{line}: column {column!r} is {value!r}, not finite.")
    return out


def _uid(path, line, row) -> str:
    uid = (row.get("seriesuid") or "").strip()
    if not uid:
        raise errors.DataError(f"{path}:{line}: empty seriesuid.")
    return uid


def _xyz(path, line, row) -> tuple[float, float, float]:
    return tuple(parse_float(path, line, row, c) for c in ("coordX", "coordY", "coordZ"))


def read_annotations(path: str | os.PathLike) -> list[Annotation]:
    """Reads ``annotations.csv``, ``annotations_excluded.csv`` or a malignancy table.

    A ``malignancy`` column, if present, is parsed as a boolean (True/False, 1/0, yes/no).

    Raises:
      DataError: missing file, missing column, or a bad value (message names file and line).
    """
    rows = read_table(path, ANNOTATION_COLUMNS)
    out = []
    for line, row in rows:
        malignancy = None
        if MALIGNANCY_COLUMN in row:
            text = (row[MALIGNANCY_COLUMN] or "").strip().lower()
            if text in _TRUE:
                malignancy = True
            elif text in _FALSE:
                malignancy = False
            else:
                raise errors.DataError(
                    f"{path}:{line}: column 'malignancy' is {row[MALIGNANCY_COLUMN]!r}, "
                    "not a boolean (True/False)."
                )
        out.append(
            Annotation(
                _uid(path, line, row),
                _xyz(path, line, row),
                parse_float(path, line, row, "diameter_mm"),
                malignancy,
            )
        )
    return out


def read_candidates(path: str | os.PathLike) -> list[Candidate]:
    """Reads ``candidates.csv`` / ``candidates_V2.csv`` (unmatched: diameter 0, benign).

    Raises:
      DataError: missing file, missing column, or a bad value (message names file and line).
    """
    out = []
    for line, row in read_table(path, CANDIDATE_COLUMNS):
        label = parse_float(path, line, row, "class")
        if label not in (0.0, 1.0):
            raise errors.DataError(f"{path}:{line}: column 'class' is {row['class']!r}, not 0/1.")
        out.append(Candidate(_uid(path, line, row), _xyz(path, line, row), int(label)))
    return out


def match_candidates(
    candidates: Sequence[Candidate], annotations: Sequence[Annotation]
) -> list[Candidate]:
    """Attaches diameter and malignancy of the annotation each nodule candidate falls in.

    A candidate matches an annotation of its series when their centres are closer than the
    annotation's radius (``diameter_mm / 2``); of several, the nearest centre wins. Only
    ``label == 1`` candidates are matched: a non-nodule candidate near a nodule stays a
    non-nodule (LUNA's labels are authoritative). Unmatched candidates keep diameter 0.0 and
    malignancy False.

    Args:
      candidates: from ``read_candidates``.
      annotations: from ``read_annotations`` (malignancy None is treated as False).

    Returns:
      New candidates in the same order.
    """
    by_series: dict[str, list[Annotation]] = {}
    for a in annotations:
        by_series.setdefault(a.seriesuid, []).append(a)
    centres = {uid: np.array([a.xyz for a in anns]) for uid, anns in by_series.items()}
    radii = {uid: np.array([a.diameter_mm / 2 for a in anns]) for uid, anns in by_series.items()}
    out = []
    for c in candidates:
        if c.label != 1 or c.seriesuid not in by_series:
            out.append(c)
            continue
        dist = np.linalg.norm(centres[c.seriesuid] - np.asarray(c.xyz), axis=-1)
        inside = dist < radii[c.seriesuid]
        if not inside.any():
            out.append(c)
            continue
        best = by_series[c.seriesuid][int(np.argmin(np.where(inside, dist, np.inf)))]
        out.append(
            dataclasses.replace(c, diameter_mm=best.diameter_mm, malignancy=bool(best.malignancy))
        )
    return out


def find_scans(root: str | os.PathLike) -> dict[str, tuple[int, pathlib.Path]]:
    """Maps each series uid to ``(subset index, path of its .mhd)`` under ``root/subset<k>/``.

    Raises:
      DataError: the same series appears in two places.
    """
    out: dict[str, tuple[int, pathlib.Path]] = {}
    for subset_dir in sorted(pathlib.Path(root).glob("subset*")):
        match = re.fullmatch(r"subset(\d+)", subset_dir.name)
        if not match or not subset_dir.is_dir():
            continue
        for mhd in sorted(subset_dir.glob("*.mhd")):
            uid = mhd.stem
            if uid in out:
                raise errors.DataError(f"Series {uid} is in both {out[uid][1]} and {mhd}.")
            out[uid] = (int(match.group(1)), mhd)
    return out


def candidates_path(root: str | os.PathLike) -> pathlib.Path:
    """``candidates_V2.csv`` if present (LUNA's corrected list), else ``candidates.csv``."""
    root = pathlib.Path(root)
    v2 = root / "candidates_V2.csv"
    return v2 if v2.exists() else root / "candidates.csv"


def load_candidates(root: str | os.PathLike) -> list[Candidate]:
    """Reads the candidate list of a LUNA folder and matches it to the annotations.

    The malignancy table (``annotations_with_malignancy.csv``) is used when present, else
    ``annotations.csv`` (then every nodule is benign).
    """
    root = pathlib.Path(root)
    table = root / "annotations_with_malignancy.csv"
    if not table.exists():
        table = root / "annotations.csv"
    return match_candidates(read_candidates(candidates_path(root)), read_annotations(table))


def split_by_series(
    series_uids: Iterable[str], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Deterministic random split of series into ``(train, val)``, both sorted.

    The result depends only on the set of uids (not their order or repetitions), the fraction
    and the seed. At least one series goes to validation when ``val_fraction > 0``.

    Raises:
      ConfigError: ``val_fraction`` is outside [0, 1).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise errors.ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    uids = sorted(set(series_uids))
    n_val = int(round(val_fraction * len(uids)))
    if val_fraction > 0 and uids:
        n_val = min(max(n_val, 1), len(uids) - 1) if len(uids) > 1 else 0
    order = np.random.default_rng(seed).permutation(len(uids))
    val = sorted(uids[i] for i in order[:n_val])
    train = sorted(uids[i] for i in order[n_val:])
    return train, val


def luna_fold_split(root: str | os.PathLike, fold: int) -> tuple[list[str], list[str]]:
    """LUNA16's cross-validation split: fold ``k`` validates on ``subset<k>``, trains on the rest.

    Returns:
      ``(train_uids, val_uids)``, each sorted, from the scans found on disk.

    Raises:
      ConfigError: there is no ``subset<fold>`` folder with scans.
    """
    scans = find_scans(root)
    subsets = sorted({s for s, _ in scans.values()})
    if fold not in subsets:
        raise errors.ConfigError(f"fold={fold}: {root} has scans only in subsets {subsets}.")
    train = sorted(uid for uid, (s, _) in scans.items() if s != fold)
    val = sorted(uid for uid, (s, _) in scans.items() if s == fold)
    return train, val
