"""The preprocessing store: one folder per case of preprocessed arrays plus the props to invert.

Layout of ``store_dir``::

    cases/<id>/image.npy      float32[*spatial, C]   (memory-mapped on read: patch reads are cheap)
    cases/<id>/label.npy      uint8[*spatial]        (absent for unlabelled cases)
    cases/<id>/locations.npz  per foreground class: int32[N, ndim] voxel samples (fg oversampling)
    cases/<id>/case.json      id, source id, split, shape, source signature, props (to invert)
    manifest.json             the usable cases in order, the resolved spec, id -> source id
    report.json               skipped cases and files (each with its reason), cases per split
    fingerprint.json          the dataset fingerprint of the training cases (fingerprint_cache.py)
    fingerprint/<id>.npz      one case's part of it (spacing, shape, sampled foreground voxels)

``<id>`` is ``case_ids.safe_case_id`` of the id the data gave (a DICOM uid can hold anything);
every delete, rename and write of a case folder is checked to stay inside the store.

Each case is written to a temporary folder and renamed into place, so a killed run leaves no
half-written case that looks whole. On re-run a case is reused when its source files (size,
mtime) and the preprocessing spec are unchanged.

The fingerprint is computed before preprocessing, from the raw training cases. Each case's part is
cached under ``fingerprint/`` with its source signature, so adding a case reads only that case;
``fingerprint.json`` is rebuilt only when the set of case signatures changes. Spec fields set to
``"auto"`` (``target_spacing_mm``, ``normalization.name``) are filled from it, and the filled-in
spec (numbers, not "auto") is what the case signatures hash and the manifest records. A changed
fingerprint can therefore change the resolved spec and rebuild every case, as a re-planned
nnU-Net dataset would be.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from medjax import errors
from medjax.data import case_files, case_ids, parallel, progress

# Re-exported: callers name them store.spec_hash, store.load_fingerprint, ...
from medjax.data.case_files import source_signature, spec_hash  # noqa: F401
from medjax.data.fingerprint_cache import (  # noqa: F401
    FINGERPRINT_FILE,
    ensure_fingerprint,
    load_fingerprint,
)

MAX_LOCATIONS_PER_CLASS = 10_000


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
    # The id names folders that are deleted and renamed: refuse any that would leave the store.
    cases_dir = os.path.join(store_dir, "cases")
    final = case_ids.ensure_inside(cases_dir, os.path.join(cases_dir, case_id))
    tmp = case_ids.ensure_inside(
        cases_dir, os.path.join(cases_dir, f".tmp-{case_id}-{os.getpid()}")
    )
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    np.save(os.path.join(tmp, "image.npy"), np.ascontiguousarray(image_arr, np.float32))
    entry = {
        "id": case_id,
        "source_id": case_ids.source_id(case),
        "split": case.get("split"),
        "shape": list(image_arr.shape[:-1]),
        "channels": int(image_arr.shape[-1]),
        "has_label": label_arr is not None,
        "signature": signature,
        "props": props,
        "source": {
            "image": case_files.case_paths(case, "image"),
            "label": case_files.case_paths(case, "label"),
        },
    }
    if label_arr is not None:
        np.save(os.path.join(tmp, "label.npy"), np.ascontiguousarray(label_arr, np.uint8))
        np.savez(os.path.join(tmp, "locations.npz"), **_fg_locations(label_arr, seed=len(case_id)))
        entry["fg_fraction"] = float(np.mean(label_arr > 0))
        entry["classes"] = sorted(int(c) for c in np.unique(label_arr))
    case_files.write_json(os.path.join(tmp, "case.json"), entry)
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
        return None, case_files.problem(case, e)


def _load_existing(store_dir: str, case_id: str, signature: str) -> dict | None:
    path = os.path.join(case_dir(store_dir, case_id), "case.json")
    try:
        with open(path) as f:
            entry = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return entry if entry.get("signature") == signature else None


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
    fingerprint_ids: Collection[str] | None = None,
    skipped_files: Sequence[Mapping[str, str]] = (),
) -> dict[str, Any]:
    """Writes the fingerprint, then preprocesses ``cases`` into ``store_dir``; new or changed
    cases only.

    Case ids are made safe file names first (``case_ids.safe_case_id``); the manifest's
    ``source_ids`` maps each stored id to the id the data gave.

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
      fingerprint_ids: the (crawled) ids of the cases the fingerprint is computed from: the
        training cases, so validation and test cases never shape the preprocessing. None:
        every case.
      skipped_files: files the crawler passed over (``{"file", "reason"}``), listed in
        ``report.json``.

    Returns:
      The manifest: ``{"spec": resolved spec, "spec_hash": ..., "auto_fields": [...],
      "requested_spec": spec as given, "cases": [entry, ...], "skipped": [report, ...],
      "source_ids": {id: source id}}``.

    Raises:
      DataError: no case could be preprocessed (the message lists the reasons), ids are not
        unique, no case is left for the fingerprint, or ``strict`` and one case failed.
      ConfigError: an invalid spec, or ``"auto"`` normalisation without a modality.
    """
    from medjax.data.preprocess import fingerprint as fp_lib

    cases = case_ids.sanitise_cases(cases)
    fp_cases = cases
    if fingerprint_ids is not None:
        wanted = {case_ids.safe_case_id(i) for i in fingerprint_ids}
        fp_cases = [c for c in cases if c["id"] in wanted]
        if not fp_cases:
            raise errors.DataError(
                f"No training case for the fingerprint of {store_dir}: it is computed from the "
                "training split only; check data.train_split and the dataset's split folders."
            )
    os.makedirs(os.path.join(store_dir, "cases"), exist_ok=True)
    requested = json.loads(json.dumps(dict(spec), default=list))
    auto = fp_lib.auto_fields(requested)
    ids = [c["id"] for c in cases]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise errors.DataError(f"Case ids are not unique: {dup[:5]}")
    runner = parallel.Runner(workers)
    try:
        spec = requested
        if auto or fingerprint:
            fp_lib.pipeline.resolve_spec(requested)  # a bad spec fails before any case is read
            try:
                fp = ensure_fingerprint(fp_cases, store_dir, strict=strict, _runner=runner)
            except errors.DataError as e:
                if auto or strict:
                    raise
                # Only informative here: preprocessing reports the bad cases itself.
                logging.warning("No fingerprint for %s: %s", store_dir, e)
            if auto:
                spec = json.loads(json.dumps(fp_lib.resolve_auto(requested, fp)))
                chosen = {k: spec[k] for k in auto}
                text = f"from the fingerprint of {fp['num_cases']} training case(s): " + json.dumps(
                    chosen, sort_keys=True
                )
                logging.info("%s", text)
                progress.notice(text)
        manifest = _preprocess_cases(cases, store_dir, spec, runner, strict, skipped_files)
    finally:
        runner.close()
    manifest.update(
        auto_fields=auto,
        requested_spec=requested,
        source_ids={c["id"]: case_ids.source_id(c) for c in cases},
    )
    case_files.write_json(os.path.join(store_dir, "manifest.json"), manifest)
    return manifest


def _preprocess_cases(
    cases: Sequence[Mapping[str, Any]],
    store_dir: str,
    spec: dict[str, Any],
    runner: parallel.Runner,
    strict: bool,
    skipped_files: Sequence[Mapping[str, str]],
) -> dict[str, Any]:
    """The preprocessing pass of ``build_store`` (spec resolved); returns the manifest and
    writes ``report.json``."""
    spec_id = spec_hash(spec)
    entries: dict[str, dict] = {}
    todo = []
    for case in cases:
        signature = source_signature(case, spec_id)
        existing = _load_existing(store_dir, case["id"], signature)
        if existing is not None:
            existing["split"] = case.get("split", existing.get("split"))
            existing["source_id"] = case_ids.source_id(case)
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
    splits: dict[str, list[str]] = {}
    for entry in ordered:
        splits.setdefault(str(entry.get("split") or "none"), []).append(entry["id"])
    report = {
        "num_ok": len(ordered),
        "skipped": skipped,
        "skipped_files": [dict(f) for f in skipped_files],
        "splits": splits,
    }
    case_files.write_json(os.path.join(store_dir, "report.json"), report)
    if not ordered:
        reasons = "; ".join(f"{p['id']}: {p['reason']}" for p in skipped[:5])
        raise errors.DataError(f"No usable case in {store_dir}. First problems: {reasons}")
    if skipped or skipped_files:
        text = (
            f"skipped {len(skipped)} bad case(s) and {len(skipped_files)} other file(s); "
            f"see {os.path.join(store_dir, 'report.json')}"
        )
        logging.warning("%s", text)
        progress.notice(text)
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
