"""Grain-compatible random-access sources over the LUNA16 cutout store.

``CutoutSource`` has ``__len__`` and ``__getitem__`` (Grain's ``RandomAccessDataSource``
protocol) and returns ``{"image": float32[D, H, W, 1], "label": int32, "index": int64}`` where
``index`` is the store row. Training epochs with a fixed class ratio come from
``medjax.data.sampling`` (over ``CutoutSource.labels``). Validation uses a source over all
candidates of the validation series, in store order, without any balancing.

Label modes:

* ``"nodule"``: 0 non-nodule, 1 nodule (LUNA's ``class``).
* ``"malignancy3"``: 0 non-nodule, 1 benign nodule, 2 malignant nodule.
* ``"malignancy2"``: 0 benign, 1 malignant; only nodule rows are kept.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable, Sequence

import numpy as np

from medjax import errors

LABEL_MODES = ("nodule", "malignancy3", "malignancy2")


def read_store_table(store_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """The store's row table as numpy columns (see ``cutouts.CSV_COLUMNS``).

    Raises:
      DataError: the store is missing or incomplete (no committed ``candidates.json``).
    """
    path = pathlib.Path(store_dir) / "candidates.json"
    if not path.exists() or not (path.parent / "cutouts.npy").exists():
        raise errors.DataError(
            f"{store_dir}: no complete cutout store (candidates.json + cutouts.npy); "
            "run medjax.data.luna.cutouts.build_cutout_store."
        )
    columns = json.loads(path.read_text())["columns"]
    return {k: np.asarray(v) for k, v in columns.items()}


def rows_for_series(table: dict[str, np.ndarray], series_uids: Iterable[str]) -> np.ndarray:
    """``int64[N]``: every store row of the given series, in store order (no balancing)."""
    wanted = set(series_uids)
    mask = np.array([uid in wanted for uid in table["seriesuid"]], dtype=bool)
    return np.flatnonzero(mask).astype(np.int64)


def labels_of(table: dict[str, np.ndarray], rows: np.ndarray, label_mode: str) -> np.ndarray:
    """``int32[len(rows)]`` labels of store rows under ``label_mode`` (see module docstring).

    Raises:
      ConfigError: unknown ``label_mode``.
      DataError: ``malignancy2`` asked for a non-nodule row.
    """
    rows = np.asarray(rows, dtype=np.int64)
    nodule = table["class"][rows].astype(np.int32)
    malignant = np.asarray(
        [str(v).lower() == "true" for v in table["malignancy"][rows]], dtype=np.int32
    )
    if label_mode == "nodule":
        return nodule
    if label_mode == "malignancy3":
        return nodule * (1 + malignant)
    if label_mode == "malignancy2":
        if np.any(nodule == 0):
            raise errors.DataError("label_mode 'malignancy2' needs nodule rows only.")
        return malignant
    raise errors.ConfigError(f"label_mode={label_mode!r}; allowed: {', '.join(LABEL_MODES)}.")


class CutoutSource:
    """Random access to cutouts of a store, one record per selected row.

    The memmap is opened lazily and dropped when pickled, so Grain worker processes each open
    their own read-only view instead of receiving a copy of the array.

    Attributes:
      rows: ``int64[N]`` store rows, in item order.
      labels: ``int32[N]`` labels under ``label_mode``.
    """

    def __init__(
        self,
        store_dir: str | os.PathLike,
        rows: Sequence[int] | np.ndarray | None = None,
        label_mode: str = "nodule",
    ):
        """Opens a store.

        Args:
          store_dir: folder written by ``cutouts.build_cutout_store``.
          rows: store rows to expose (e.g. ``rows_for_series(...)``); default all. With
            ``label_mode="malignancy2"`` non-nodule rows are dropped.
          label_mode: ``"nodule"``, ``"malignancy3"`` or ``"malignancy2"``.
        """
        if label_mode not in LABEL_MODES:
            raise errors.ConfigError(
                f"label_mode={label_mode!r}; allowed: {', '.join(LABEL_MODES)}."
            )
        self.store_dir = str(store_dir)
        self.label_mode = label_mode
        table = read_store_table(store_dir)
        n = len(table["row"])
        rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise errors.DataError(f"{store_dir}: rows outside [0, {n}).")
        if label_mode == "malignancy2":
            rows = rows[table["class"][rows] == 1]
        self.rows = rows.astype(np.int64)
        self.labels = labels_of(table, self.rows, label_mode)
        self._cutouts = None

    def __len__(self) -> int:
        return int(self.rows.size)

    def _array(self) -> np.ndarray:
        if self._cutouts is None:
            self._cutouts = np.load(os.path.join(self.store_dir, "cutouts.npy"), mmap_mode="r")
        return self._cutouts

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """Record ``index``: ``image float32[D, H, W, 1]`` (HU), ``label int32[]``, ``index``."""
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} cutouts")
        row = self.rows[index]
        image = np.asarray(self._array()[row], dtype=np.float32)[..., None]
        return {"image": image, "label": np.int32(self.labels[index]), "index": np.int64(row)}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cutouts"] = None
        return state

    def __repr__(self) -> str:
        return f"CutoutSource({self.store_dir!r}, n={len(self)}, label_mode={self.label_mode!r})"
