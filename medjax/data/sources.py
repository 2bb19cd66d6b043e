"""Grain random-access sources over the preprocessing store.

A source returns one case as memory-mapped arrays, so that a patch read touches only the
bytes of the patch. Nothing here is random: sampling happens in ``transforms``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from medjax.data import store


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

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"StoreSource({self.store_dir!r}, {len(self)} cases)"

    def __getitem__(self, index: int) -> dict[str, Any]:
        folder = store.case_dir(self.store_dir, self.ids[index])
        image = np.load(os.path.join(folder, "image.npy"), mmap_mode="r")
        record: dict[str, Any] = {"image": image, "index": index}
        if self.has_label[index]:
            record["label"] = np.load(os.path.join(folder, "label.npy"), mmap_mode="r")
            with np.load(os.path.join(folder, "locations.npz")) as z:
                record["locations"] = {k: z[k] for k in z.files}
        return record
