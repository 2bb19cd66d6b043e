"""The cutout store's bookkeeping on disk: which raw file belongs to a scan and its signature
(size, mtime) for reuse, the manifest key of a build, per-scan part files written atomically,
the manifest loader, and the progress line over scans.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from medjax.data import case_ids

# Version of the store's layout: a store of another format is rebuilt.
STORE_FORMAT = 1


def data_file(mhd: pathlib.Path) -> pathlib.Path | None:
    """The ``ElementDataFile`` an ``.mhd`` header points to (None for ``LOCAL`` data)."""
    try:
        text = mhd.read_text(errors="replace")
    except OSError:
        return None
    match = re.search(r"^\s*ElementDataFile\s*=\s*(.+?)\s*$", text, re.MULTILINE)
    if not match or match.group(1).upper() == "LOCAL":
        return None
    return mhd.parent / match.group(1)


def signature(mhd: pathlib.Path) -> list:
    """``[[name, size, mtime_ns], ...]`` of the header and its data file: changes force a redo."""
    out = []
    for path in (mhd, data_file(mhd)):
        if path is None:
            continue
        try:
            stat = path.stat()
            out.append([path.name, stat.st_size, stat.st_mtime_ns])
        except OSError:
            out.append([path.name, None, None])
    return out


def key(xyz: list, size: Sequence[int], dtype: str) -> str:
    """Hash of what a scan's part depends on besides the scan file itself."""
    blob = json.dumps([np.round(xyz, 6).tolist(), list(size), dtype, STORE_FORMAT])
    return hashlib.sha1(blob.encode()).hexdigest()


def atomic_json(path: pathlib.Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def part(parts: pathlib.Path, uid: str) -> pathlib.Path:
    """``parts/<safe uid>`` without a suffix: a seriesuid from a CSV must not name a path."""
    name = case_ids.safe_case_id(uid)
    return pathlib.Path(case_ids.ensure_inside(parts, parts / f"{name}.part"))


class Progress:
    """A one-line progress display on stderr: done/total, scans/s and ETA."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.done = total, enabled and total > 0, 0
        self.t0 = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.5 and self.done < self.total):
            return
        self.last = now
        rate = self.done / max(now - self.t0, 1e-9)
        eta = (self.total - self.done) / max(rate, 1e-9)
        bar = "#" * int(30 * self.done / self.total)
        sys.stderr.write(
            f"\rcutouts [{bar:<30}] {self.done}/{self.total} scans, {rate:.2f} scans/s, "
            f"ETA {eta:.0f}s"
        )
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def load_manifest(out_dir: pathlib.Path) -> dict | None:
    path = out_dir / "candidates.json"
    if not path.exists() or not (out_dir / "cutouts.npy").exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("format") == STORE_FORMAT else None
