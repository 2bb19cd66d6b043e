"""The preprocessing store: one folder per case of preprocessed arrays plus the props to invert.

Layout of ``store_dir``::

    cases/<id>/image.npy      float32[*spatial, C]   (memory-mapped on read: patch reads are cheap)
    cases/<id>/label.npy      uint8[*spatial]        (absent for unlabelled cases)
    cases/<id>/locations.npz  per foreground class: int32[N, ndim] voxel samples (fg oversampling)
    cases/<id>/case.json      id, split, shape, source signature, props (geometry to invert)
    manifest.json             the cases that are usable, in order
    report.json               the cases that were skipped, each with its file and reason

Each case is written to a temporary folder and renamed into place, so a killed run leaves no
half-written case that looks whole. On re-run a case is reused when its source files (size,
mtime) and the preprocessing spec are unchanged.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from medjax import errors

MAX_LOCATIONS_PER_CLASS = 10_000


def spec_hash(spec: Mapping[str, Any]) -> str:
    """A short stable hash of a preprocessing spec (and anything else JSON-able)."""
    return hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _paths(case: Mapping[str, Any], key: str) -> list[str]:
    value = case.get(key)
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def source_signature(case: Mapping[str, Any], spec_id: str) -> str:
    """Identifies a case's inputs: paths, sizes and mtimes of its files plus the spec hash."""
    parts = [spec_id]
    for path in _paths(case, "image") + _paths(case, "label"):
        try:
            st = os.stat(path)
            parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{path}:missing")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()


def _fg_locations(label: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for cls in np.unique(label):
        if cls == 0:
            continue
        coords = np.argwhere(label == cls).astype(np.int32)
        if len(coords) > MAX_LOCATIONS_PER_CLASS:
            coords = coords[rng.choice(len(coords), MAX_LOCATIONS_PER_CLASS, replace=False)]
        out[f"class_{int(cls)}"] = coords
    return out


def _write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)


def process_case(
    case: Mapping[str, Any], spec: Mapping[str, Any], store_dir: str, signature: str
) -> dict:
    """Reads, preprocesses and writes one case atomically; returns its manifest entry.

    Raises whatever the readers raise (``DataError`` for bad input); the caller records it.
    """
    from medjax.data.preprocess import pipeline as pp

    image, label = pp.load_case(case)
    image_arr, label_arr, props = pp.preprocess_case(image, label, spec)
    case_id = case["id"]
    final = os.path.join(store_dir, "cases", case_id)
    tmp = os.path.join(store_dir, "cases", f".tmp-{case_id}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    np.save(os.path.join(tmp, "image.npy"), np.ascontiguousarray(image_arr, np.float32))
    entry = {
        "id": case_id,
        "split": case.get("split"),
        "shape": list(image_arr.shape[:-1]),
        "channels": int(image_arr.shape[-1]),
        "has_label": label_arr is not None,
        "signature": signature,
        "props": props,
        "source": {"image": _paths(case, "image"), "label": _paths(case, "label")},
    }
    if label_arr is not None:
        np.save(os.path.join(tmp, "label.npy"), np.ascontiguousarray(label_arr, np.uint8))
        np.savez(os.path.join(tmp, "locations.npz"), **_fg_locations(label_arr, seed=len(case_id)))
        entry["fg_fraction"] = float(np.mean(label_arr > 0))
        entry["classes"] = sorted(int(c) for c in np.unique(label_arr))
    _write_json(os.path.join(tmp, "case.json"), entry)
    shutil.rmtree(final, ignore_errors=True)
    try:
        os.rename(tmp, final)
    except OSError:
        # Another process built the same case at the same moment (two runs sharing a store):
        # keep theirs if it is the same input, else this is a real error.
        shutil.rmtree(tmp, ignore_errors=True)
        if _load_existing(store_dir, case_id, signature) is None:
            raise
    return entry


def _try_case(case: Mapping[str, Any], spec: Mapping[str, Any], store_dir: str, signature: str):
    try:
        return process_case(case, spec, store_dir, signature), None
    except Exception as e:  # noqa: BLE001 - recorded in the report with its type, never dropped
        files = _paths(case, "image") + _paths(case, "label")
        return None, {"id": case["id"], "files": files, "reason": f"{type(e).__name__}: {e}"}


def _load_existing(store_dir: str, case_id: str, signature: str) -> dict | None:
    path = os.path.join(store_dir, "cases", case_id, "case.json")
    try:
        with open(path) as f:
            entry = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return entry if entry.get("signature") == signature else None


def build_store(
    cases: Sequence[Mapping[str, Any]],
    store_dir: str,
    spec: Mapping[str, Any],
    *,
    workers: int = 0,
    strict: bool = False,
) -> dict[str, Any]:
    """Preprocesses ``cases`` into ``store_dir``; new or changed cases only.

    Args:
      cases: crawler output: dicts with ``id``, ``image`` (path or list of channel paths),
        optional ``label`` and ``split``.
      store_dir: the store folder (created if needed).
      spec: the preprocessing spec (``medjax.data.preprocess.pipeline``).
      workers: parallel worker processes (0: in this process).
      strict: raise on the first bad case instead of skipping and reporting it.

    Returns:
      The manifest: ``{"spec": ..., "cases": [entry, ...], "skipped": [report, ...]}``.

    Raises:
      DataError: no case could be preprocessed (the message lists the reasons), or ``strict``
        and one case failed.
    """
    os.makedirs(os.path.join(store_dir, "cases"), exist_ok=True)
    spec = json.loads(json.dumps(dict(spec), default=list))
    spec_id = spec_hash(spec)
    ids = [c["id"] for c in cases]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise errors.DataError(f"Case ids are not unique: {dup[:5]}")
    entries: dict[str, dict] = {}
    todo = []
    for case in cases:
        signature = source_signature(case, spec_id)
        existing = _load_existing(store_dir, case["id"], signature)
        if existing is not None:
            existing["split"] = case.get("split", existing.get("split"))
            entries[case["id"]] = existing
        else:
            todo.append((case, signature))
    skipped = []
    if todo:
        logging.info("Preprocessing %d of %d cases into %s", len(todo), len(cases), store_dir)
        progress = _Progress(len(todo), "preprocess")
        if workers > 0 and len(todo) > 1:
            ctx = multiprocessing.get_context("spawn")  # fork after jax starts threads is unsafe
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futures = [pool.submit(_try_case, c, spec, store_dir, s) for c, s in todo]
                results = [f.result() for f in _as_completed(futures, progress)]
        else:
            results = []
            for c, s in todo:
                results.append(_try_case(c, spec, store_dir, s))
                progress.update()
        for entry, problem in results:
            if problem is not None:
                if strict:
                    raise errors.DataError(
                        f"Case {problem['id']!r} ({problem['files']}): {problem['reason']}"
                    )
                logging.warning("Skipping case %s: %s", problem["id"], problem["reason"])
                skipped.append(problem)
            else:
                entries[entry["id"]] = entry
    ordered = [entries[i] for i in ids if i in entries]
    manifest = {"spec": spec, "spec_hash": spec_id, "cases": ordered, "skipped": skipped}
    _write_json(
        os.path.join(store_dir, "report.json"), {"skipped": skipped, "num_ok": len(ordered)}
    )
    if not ordered:
        reasons = "; ".join(f"{p['id']}: {p['reason']}" for p in skipped[:5])
        raise errors.DataError(f"No usable case in {store_dir}. First problems: {reasons}")
    _write_json(os.path.join(store_dir, "manifest.json"), manifest)
    if skipped:
        print(
            f"medjax: skipped {len(skipped)} bad case(s); see {store_dir}/report.json",
            file=sys.stderr,
        )
    return manifest


def load_manifest(store_dir: str) -> dict[str, Any]:
    """Reads ``manifest.json`` of a built store."""
    path = os.path.join(store_dir, "manifest.json")
    if not os.path.exists(path):
        raise errors.DataError(f"No preprocessed store at {store_dir} (missing manifest.json).")
    with open(path) as f:
        return json.load(f)


def case_dir(store_dir: str, case_id: str) -> str:
    """The folder of one case."""
    return os.path.join(store_dir, "cases", case_id)


class _Progress:
    """A one-line progress display on stderr (cases done, rate, ETA)."""

    def __init__(self, total: int, name: str):
        self.total, self.name, self.done, self.start = total, name, 0, time.time()

    def update(self) -> None:
        self.done += 1
        now = time.time()
        if self.done < self.total and now - getattr(self, "_last", 0.0) < 1.0:
            return  # at most one line a second
        self._last = now
        elapsed = now - self.start
        rate = self.done / max(elapsed, 1e-9)
        eta = (self.total - self.done) / max(rate, 1e-9)
        end = "\n" if self.done == self.total else ""
        print(
            f"\r{self.name}: {self.done}/{self.total} cases, {rate:.1f}/s, ETA {eta:.0f}s",
            end=end,
            file=sys.stderr,
            flush=True,
        )


def _as_completed(futures, progress: _Progress):
    for _ in concurrent.futures.as_completed(futures):
        progress.update()
    return futures
