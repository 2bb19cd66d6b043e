"""Grain random-access sources over the preprocessing store.

A source returns one case as memory-mapped arrays, so that a patch read touches only the
bytes of the patch. Nothing here is random: sampling happens in ``transforms``.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from medjax.data import store

# np.load parses .npy headers with ast.literal_eval, which is not thread-safe in CPython 3.11
# (SystemError "AST constructor recursion depth mismatch" under Grain's reader threads).
_LOAD_LOCK = threading.Lock()
_MAX_OPEN_CASES = 256


class StoreSource:
    """Random access to preprocessed cases: ``source[i] -> {"image", "label", "locations", ...}``.

    ``image`` is ``float32[*spatial, C]`` and ``label`` ``uint8[*spatial]``, both memory-mapped.
    Picklable (it holds only paths), so Grain worker processes can open it themselves.
    """

    def __init__(self, store_dir: str, entries: Sequence[dict[str, Any]]):
        self.store_dir = store_dir
        self.ids = [e["id"] for e in entries]
        self.shapes = [tuple(e["shape"]) for e in entries]
        self.has_label = [bool(e.get("has_label")) for e in entries]
        self._open: collections.OrderedDict[int, dict[str, Any]] = collections.OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        # Worker processes reopen the memory maps themselves.
        return {**self.__dict__, "_open": collections.OrderedDict()}

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"StoreSource({self.store_dir!r}, {len(self)} cases)"

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        with _LOAD_LOCK:
            record = self._open.get(index)
            if record is None:
                record = self._load(index)
                self._open[index] = record
                if len(self._open) > _MAX_OPEN_CASES:
                    self._open.popitem(last=False)
            else:
                self._open.move_to_end(index)
        return dict(record)

    def _load(self, index: int) -> dict[str, Any]:
        folder = store.case_dir(self.store_dir, self.ids[index])
        image = np.load(os.path.join(folder, "image.npy"), mmap_mode="r")
        record: dict[str, Any] = {"image": image, "index": index}
        if self.has_label[index]:
            record["label"] = np.load(os.path.join(folder, "label.npy"), mmap_mode="r")
            with np.load(os.path.join(folder, "locations.npz")) as z:
                record["locations"] = {k: z[k] for k in z.files}
        return record
