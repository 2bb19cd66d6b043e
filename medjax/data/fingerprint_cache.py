"""The dataset fingerprint of a store, cached per case so adding a case reads only that case.

Layout inside ``store_dir``::

    fingerprint.json          the dataset fingerprint (``preprocess.fingerprint.aggregate``)
    fingerprint/<id>.npz      one case's part of it (spacing, shape, sampled foreground voxels)

Each part carries its case's source signature; ``fingerprint.json`` is rebuilt only when the set
of case signatures changes. Which cases go in is the caller's choice: the store passes the
training cases only, so validation and test cases never shape the preprocessing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from medjax import errors
from medjax.data import case_files, case_ids, parallel

FINGERPRINT_FILE = "fingerprint.json"
# Bump when case_summary changes meaning, so cached per-case parts are recomputed.
_FINGERPRINT_VERSION = 1


def _summary_path(store_dir: str, case_id: str) -> str:
    path = os.path.join(store_dir, "fingerprint", f"{case_id}.npz")
    return case_ids.ensure_inside(store_dir, path)


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
        return case_files.problem(case, e)
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
    _runner: parallel.Runner | None = None,
) -> dict[str, Any]:
    """The dataset fingerprint of ``cases``, cached in ``store_dir``.

    Reads only cases whose cached part is missing or whose source files changed; returns the
    cached ``fingerprint.json`` untouched when the set of case signatures is unchanged. Cases
    that cannot be read are left out and listed under ``skipped`` (preprocessing reports them).

    Args:
      cases: crawler cases (``id``, ``image``, optional ``label``): the training cases only,
        so that no validation or test case shapes the preprocessing.
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

    cases = case_ids.sanitise_cases(cases)
    samples = fp_lib.SAMPLES_PER_CASE if samples_per_case is None else int(samples_per_case)
    key = f"fingerprint-v{_FINGERPRINT_VERSION}:{samples}:{seed}"
    signatures = {c["id"]: case_files.source_signature(c, key) for c in cases}
    cases_hash = case_files.spec_hash([[i, s] for i, s in signatures.items()])
    cached = load_fingerprint(store_dir)
    if cached is not None and cached.get("cases_hash") == cases_hash:
        return cached
    os.makedirs(os.path.join(store_dir, "fingerprint"), exist_ok=True)
    todo = [
        (c, _summary_path(store_dir, c["id"]), signatures[c["id"]], samples, seed)
        for c in cases
        if _load_summary(_summary_path(store_dir, c["id"]), signatures[c["id"]]) is None
    ]
    runner = _runner or parallel.Runner(workers)
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
    case_files.write_json(os.path.join(store_dir, FINGERPRINT_FILE), fingerprint)
    logging.info("Fingerprint of %d case(s) written to %s", len(ids), store_dir)
    return fingerprint
