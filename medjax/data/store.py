"""The preprocessing store: one folder per case of preprocessed arrays plus the props to invert.

Layout of ``store_dir``::

    cases/<id>/image.npy      float32[*spatial, C]   (memory-mapped on read: patch reads are cheap)
    cases/<id>/label.npy      uint8[*spatial]        (absent for unlabelled cases)
    cases/<id>/locations.npz  per foreground class: int32[N, ndim] voxel samples (fg oversampling)
    cases/<id>/case.json      id, split, shape, source signature, props (geometry to invert)
    manifest.json             the cases that are usable, in order, and the resolved spec
    report.json               the cases that were skipped, each with its file and reason
    fingerprint.json          the dataset fingerprint (``preprocess.fingerprint.aggregate``)
    fingerprint/<id>.npz      one case's part of it (spacing, shape, sampled foreground voxels)

Each case is written to a temporary folder and renamed into place, so a killed run leaves no
half-written case that looks whole. On re-run a case is reused when its source files (size,
mtime) and the preprocessing spec are unchanged.

The fingerprint is computed before preprocessing, from the raw cases. Each case's part is
cached under ``fingerprint/`` with its source signature, so adding a case reads only that case;
``fingerprint.json`` is rebuilt only when the set of case signatures changes. Spec fields set to
``"auto"`` (``target_spacing_mm``, ``normalization.name``) are filled from it, and the filled-in
spec (numbers, not "auto") is what the case signatures hash and the manifest records. A changed
fingerprint can therefore change the resolved spec and rebuild every case, as a re-planned
nnU-Net dataset would be.
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
FINGERPRINT_FILE = "fingerprint.json"
# Bump when case_summary changes meaning, so cached per-case parts are recomputed.
_FINGERPRINT_VERSION = 1


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
        return None, _problem(case, e)


def _load_existing(store_dir: str, case_id: str, signature: str) -> dict | None:
    path = os.path.join(store_dir, "cases", case_id, "case.json")
    try:
        with open(path) as f:
            entry = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return entry if entry.get("signature") == signature else None


class _Runner:
    """Runs per-case jobs in this process or in one pool of spawn workers shared by the
    fingerprint pass and the preprocessing pass (a spawn worker costs seconds to start)."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def map(self, fn, jobs: Sequence[tuple], name: str) -> list:
        """``[fn(*job) for job in jobs]`` with a progress line; order kept."""
        progress = _Progress(len(jobs), name)
        if self.workers > 0 and len(jobs) > 1:
            if self._pool is None:
                ctx = multiprocessing.get_context("spawn")  # fork after jax starts threads: unsafe
                self._pool = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=ctx)
            futures = [self._pool.submit(fn, *job) for job in jobs]
            return [f.result() for f in _as_completed(futures, progress)]
        results = []
        for job in jobs:
            results.append(fn(*job))
            progress.update()
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def _problem(case: Mapping[str, Any], e: Exception) -> dict[str, Any]:
    files = _paths(case, "image") + _paths(case, "label")
    return {"id": case["id"], "files": files, "reason": f"{type(e).__name__}: {e}"}


def _summary_path(store_dir: str, case_id: str) -> str:
    return os.path.join(store_dir, "fingerprint", f"{case_id}.npz")


def _summarise_case(
    case: Mapping[str, Any], path: str, signature: str, samples_per_case: int, seed: int
) -> dict | None:
    """Worker: one case's fingerprint part, written atomically to ``path``; a problem or None."""
    from medjax.data.preprocess import fingerprint as fp_lib
    from medjax.data.preprocess import pipeline as pp

    try:
        image, label = pp.load_case(case)
        rng = fp_lib.case_rng(seed, str(case["id"]))
        summary = fp_lib.case_summary(image, label, samples_per_case=samples_per_case, rng=rng)
    except Exception as e:  # noqa: BLE001 - recorded with its type in the fingerprint's report
        return _problem(case, e)
    tmp = f"{path}.tmp-{os.getpid()}.npz"  # np.savez appends .npz to any other name
    np.savez(
        tmp,
        samples=summary["samples"],
        spacing=np.asarray(summary["spacing"], np.float64),
        shape=np.asarray(summary["shape"], np.int64),
        relative_size_after_crop=np.float64(summary["relative_size_after_crop"]),
        signature=np.str_(signature),
        path=np.str_(summary["path"] or ""),
    )
    os.replace(tmp, path)
    return None


def _load_summary(path: str, signature: str) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["signature"]) != signature:
                return None
            return {
                "path": str(z["path"]) or None,
                "spacing": z["spacing"].tolist(),
                "shape": z["shape"].tolist(),
                "relative_size_after_crop": float(z["relative_size_after_crop"]),
                "samples": z["samples"],
            }
    except (OSError, ValueError, KeyError, EOFError):  # missing, truncated or old: recompute
        return None


def load_fingerprint(store_dir: str) -> dict[str, Any] | None:
    """``fingerprint.json`` of a built store, or None when there is none."""
    try:
        with open(os.path.join(store_dir, FINGERPRINT_FILE)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def ensure_fingerprint(
    cases: Sequence[Mapping[str, Any]],
    store_dir: str,
    *,
    workers: int = 0,
    samples_per_case: int | None = None,
    seed: int = 0,
    strict: bool = False,
    _runner: _Runner | None = None,
) -> dict[str, Any]:
    """The dataset fingerprint of ``cases``, cached in ``store_dir``.

    Reads only cases whose cached part is missing or whose source files changed; returns the
    cached ``fingerprint.json`` untouched when the set of case signatures is unchanged. Cases
    that cannot be read are left out and listed under ``skipped`` (preprocessing reports them).

    Args:
      cases: crawler cases (``id``, ``image``, optional ``label``).
      store_dir: the store folder.
      workers: parallel worker processes (0: in this process).
      samples_per_case: foreground voxels sampled per case (default
        ``fingerprint.SAMPLES_PER_CASE``).
      seed: seed of the voxel sampling.
      strict: raise on the first case that cannot be read.

    Returns:
      The fingerprint (``preprocess.fingerprint.aggregate``) plus ``case_ids`` (the cases in
      it), ``skipped`` (``{id, files, reason}``), ``samples_per_case``, ``seed`` and
      ``cases_hash`` (what the cache is keyed on).

    Raises:
      DataError: no case could be read (with the first reasons), cases disagree in
        dimensionality or channels, or ``strict`` and a case failed.
    """
    from medjax.data.preprocess import fingerprint as fp_lib

    samples = fp_lib.SAMPLES_PER_CASE if samples_per_case is None else int(samples_per_case)
    key = f"fingerprint-v{_FINGERPRINT_VERSION}:{samples}:{seed}"
    signatures = {c["id"]: source_signature(c, key) for c in cases}
    cases_hash = spec_hash([[i, s] for i, s in signatures.items()])
    cached = load_fingerprint(store_dir)
    if cached is not None and cached.get("cases_hash") == cases_hash:
        return cached
    os.makedirs(os.path.join(store_dir, "fingerprint"), exist_ok=True)
    todo = [
        (c, _summary_path(store_dir, c["id"]), signatures[c["id"]], samples, seed)
        for c in cases
        if _load_summary(_summary_path(store_dir, c["id"]), signatures[c["id"]]) is None
    ]
    runner = _runner or _Runner(workers)
    try:
        problems = [p for p in runner.map(_summarise_case, todo, "fingerprint") if p is not None]
    finally:
        if _runner is None:
            runner.close()
    if problems and strict:
        p = problems[0]
        raise errors.DataError(f"Case {p['id']!r} ({p['files']}): {p['reason']}")
    summaries, ids = [], []
    for c in cases:
        summary = _load_summary(_summary_path(store_dir, c["id"]), signatures[c["id"]])
        if summary is not None:
            summaries.append(summary)
            ids.append(c["id"])
    if not summaries:
        reasons = "; ".join(f"{p['id']}: {p['reason']}" for p in problems[:5])
        raise errors.DataError(f"No readable case for the fingerprint in {store_dir}: {reasons}")
    fingerprint = fp_lib.aggregate(summaries)
    fingerprint.update(
        case_ids=ids,
        skipped=problems,
        samples_per_case=samples,
        seed=seed,
        cases_hash=cases_hash,
    )
    _write_json(os.path.join(store_dir, FINGERPRINT_FILE), fingerprint)
    logging.info("Fingerprint of %d case(s) written to %s", len(ids), store_dir)
    return fingerprint


def describe(store_dir: str) -> str:
    """The fingerprint summary and the resolved spec of a built store, for people to read."""
    manifest = load_manifest(store_dir)
    lines = [f"store {store_dir}: {len(manifest['cases'])} case(s)"]
    fingerprint = load_fingerprint(store_dir)
    if fingerprint is not None:
        from medjax.data.preprocess import fingerprint as fp_lib

        lines.append(fp_lib.describe(fingerprint))
    auto = manifest.get("auto_fields") or []
    lines.append(
        "preprocessing spec"
        + (f" ({', '.join(auto)} chosen from the fingerprint)" if auto else "")
        + ": "
        + json.dumps(manifest["spec"], sort_keys=True)
    )
    return "\n".join(lines)


def build_store(
    cases: Sequence[Mapping[str, Any]],
    store_dir: str,
    spec: Mapping[str, Any],
    *,
    workers: int = 0,
    strict: bool = False,
    fingerprint: bool = True,
) -> dict[str, Any]:
    """Writes the fingerprint, then preprocesses ``cases`` into ``store_dir``; new or changed
    cases only.

    Args:
      cases: crawler output: dicts with ``id``, ``image`` (path or list of channel paths),
        optional ``label`` and ``split``.
      store_dir: the store folder (created if needed).
      spec: the preprocessing spec (``medjax.data.preprocess.pipeline``); ``"auto"`` fields
        are filled from the fingerprint (``preprocess.fingerprint.resolve_auto``).
      workers: parallel worker processes (0: in this process).
      strict: raise on the first bad case instead of skipping and reporting it.
      fingerprint: write ``fingerprint.json`` even when the spec has no ``"auto"`` field
        (it costs one extra read of new or changed cases).

    Returns:
      The manifest: ``{"spec": resolved spec, "spec_hash": ..., "auto_fields": [...],
      "requested_spec": spec as given, "cases": [entry, ...], "skipped": [report, ...]}``.

    Raises:
      DataError: no case could be preprocessed (the message lists the reasons), or ``strict``
        and one case failed.
      ConfigError: an invalid spec, or ``"auto"`` normalisation without a modality.
    """
    from medjax.data.preprocess import fingerprint as fp_lib

    os.makedirs(os.path.join(store_dir, "cases"), exist_ok=True)
    requested = json.loads(json.dumps(dict(spec), default=list))
    auto = fp_lib.auto_fields(requested)
    ids = [c["id"] for c in cases]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise errors.DataError(f"Case ids are not unique: {dup[:5]}")
    runner = _Runner(workers)
    try:
        spec = requested
        if auto or fingerprint:
            fp_lib.pipeline.resolve_spec(requested)  # a bad spec fails before any case is read
            try:
                fp = ensure_fingerprint(cases, store_dir, strict=strict, _runner=runner)
            except errors.DataError as e:
                if auto or strict:
                    raise
                # Only informative here: preprocessing reports the bad cases itself.
                logging.warning("No fingerprint for %s: %s", store_dir, e)
            if auto:
                spec = json.loads(json.dumps(fp_lib.resolve_auto(requested, fp)))
                chosen = {k: spec[k] for k in auto}
                logging.info("Preprocessing chosen from the fingerprint: %s", chosen)
                print(
                    f"medjax: from the fingerprint of {fp['num_cases']} case(s): "
                    + json.dumps(chosen, sort_keys=True),
                    file=sys.stderr,
                )
        manifest = _preprocess_cases(cases, store_dir, spec, runner, strict)
    finally:
        runner.close()
    manifest.update(auto_fields=auto, requested_spec=requested)
    _write_json(os.path.join(store_dir, "manifest.json"), manifest)
    return manifest


def _preprocess_cases(
    cases: Sequence[Mapping[str, Any]],
    store_dir: str,
    spec: dict[str, Any],
    runner: _Runner,
    strict: bool,
) -> dict[str, Any]:
    """The preprocessing pass of ``build_store`` (spec resolved); returns the manifest."""
    spec_id = spec_hash(spec)
    entries: dict[str, dict] = {}
    todo = []
    for case in cases:
        signature = source_signature(case, spec_id)
        existing = _load_existing(store_dir, case["id"], signature)
        if existing is not None:
            existing["split"] = case.get("split", existing.get("split"))
            entries[case["id"]] = existing
        else:
            todo.append((case, spec, store_dir, signature))
    skipped = []
    if todo:
        logging.info("Preprocessing %d of %d cases into %s", len(todo), len(cases), store_dir)
        for entry, problem in runner.map(_try_case, todo, "preprocess"):
            if problem is not None:
                if strict:
                    raise errors.DataError(
                        f"Case {problem['id']!r} ({problem['files']}): {problem['reason']}"
                    )
                logging.warning("Skipping case %s: %s", problem["id"], problem["reason"])
                skipped.append(problem)
            else:
                entries[entry["id"]] = entry
    ordered = [entries[c["id"]] for c in cases if c["id"] in entries]
    _write_json(
        os.path.join(store_dir, "report.json"), {"skipped": skipped, "num_ok": len(ordered)}
    )
    if not ordered:
        reasons = "; ".join(f"{p['id']}: {p['reason']}" for p in skipped[:5])
        raise errors.DataError(f"No usable case in {store_dir}. First problems: {reasons}")
    if skipped:
        print(
            f"medjax: skipped {len(skipped)} bad case(s); see {store_dir}/report.json",
            file=sys.stderr,
        )
    return {"spec": spec, "spec_hash": spec_id, "cases": ordered, "skipped": skipped}


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
