"""Fixed-size CT cutouts around LUNA16 candidates, and the cutout store built from them.

``extract_cutout`` takes a ``(D, H, W)`` window centred on a candidate's voxel, shifted inward at
the scan's edges (so a cutout is never padded while the scan is large enough), with HU clipped to
[-1000, 1000]. ``build_cutout_store`` reads every scan once (in spawn-started worker processes)
and writes the store that ``medjax.data.luna.sources`` reads:

* ``cutouts.npy``: ``int16[N, D, H, W]`` (or float16), an ``.npy`` file opened as a memmap;
* ``candidates.csv``: one line per row (seriesuid, coords, class, diameter, malignancy, subset,
  voxel centre, window start and the candidate's position inside the cutout);
* ``candidates.json``: the same rows column by column, the store's settings and per-scan
  records (file signature and row range) that make re-runs incremental;
* ``report.json``: skipped scans (missing on disk, unreadable such as a truncated ``.raw``) and
  skipped candidates (outside their scan), each with its reason.

``candidates.json`` is the commit marker: it is removed before anything else is replaced and
written last, so a killed build never leaves a table that disagrees with ``cutouts.npy``.
Every file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from collections.abc import Sequence

import numpy as np
from absl import logging

from medjax import errors
from medjax.data import workers as workers_lib
from medjax.data.io import itk
from medjax.data.io import volume as volume_lib
from medjax.data.luna import csvs, cutout_files, geometry

DEFAULT_SIZE = (32, 48, 48)
HU_MIN, HU_MAX = -1000, 1000
CSV_COLUMNS = (
    "row",
    "seriesuid",
    "coordX",
    "coordY",
    "coordZ",
    "class",
    "diameter_mm",
    "malignancy",
    "subset",
    "center_d",
    "center_h",
    "center_w",
    "start_d",
    "start_h",
    "start_w",
)


def _read_scan(path: str | os.PathLike) -> volume_lib.Volume:
    """Reads a ``.mhd`` scan as a ``Volume`` (HU, ``[D, H, W]``, LPS geometry)."""
    scan = itk.read_itk(path)
    if scan.ndim_spatial != 3 or scan.array.ndim != 3:
        raise errors.DataError(
            f"{path}: expected a 3D single-channel scan, got {scan.array.shape}."
        )
    return scan


def cutout_start(
    shape: Sequence[int], center_index: np.ndarray, size: Sequence[int] = DEFAULT_SIZE
) -> np.ndarray:
    """First voxel of the cutout window along each axis.

    The window is centred on the nearest voxel (``start = centre - size // 2``) and shifted
    inward so it lies inside the scan. Along an axis where the scan is smaller than ``size`` the
    scan is centred in the window (negative start: the window is padded with air).

    Args:
      shape: the scan's ``(D, H, W)``.
      center_index: continuous index ``(D, H, W)`` of the candidate.
      size: the cutout's ``(D, H, W)``.

    Returns:
      ``int64[3]`` window start; the window is ``[start, start + size)``.
    """
    shape = np.asarray(shape[:3], dtype=np.int64)
    size = np.asarray(size, dtype=np.int64)
    start = geometry.nearest_voxel(center_index) - size // 2
    start = np.clip(start, 0, np.maximum(shape - size, 0))
    return np.where(shape < size, -((size - shape) // 2), start)


def extract_cutout(
    array: np.ndarray, center_index: np.ndarray, size: Sequence[int] = DEFAULT_SIZE
) -> np.ndarray:
    """A ``size`` cutout of a CT scan around ``center_index``, HU clipped to [-1000, 1000].

    Args:
      array: ``[D, H, W]`` HU (any real dtype).
      center_index: continuous ``(D, H, W)`` index of the centre (e.g. from
        ``geometry.world_to_voxel``).
      size: ``(D, H, W)`` of the cutout.

    Returns:
      ``[*size]`` array: int16 for integer input, else the input's float dtype. Shifted inward at
      the scan's edges; padded with -1000 (air) only where the scan is smaller than ``size``.
    """
    size = tuple(int(s) for s in size)
    start = cutout_start(array.shape, center_index, size)
    out_dtype = np.int16 if np.issubdtype(array.dtype, np.integer) else array.dtype
    out = np.full(size, HU_MIN, dtype=out_dtype)
    bounds = zip(start, size, array.shape[:3], strict=True)
    src = tuple(slice(max(a, 0), min(a + s, n)) for a, s, n in bounds)
    dst = tuple(slice(sl.start - a, sl.stop - a) for sl, a in zip(src, start, strict=True))
    out[dst] = np.clip(array[src], HU_MIN, HU_MAX)
    return out


# ---------------------------------------------------------------------------------------------
# Store building.


def _process_scan(task: dict) -> dict:
    """Worker: reads one scan, writes ``parts/<uid>.npy`` and returns the scan's record.

    Runs in a spawned process, so it takes and returns only plain picklable values.
    """
    uid, mhd, parts = task["seriesuid"], pathlib.Path(task["path"]), pathlib.Path(task["parts"])
    record = {"seriesuid": uid, "signature": task["signature"], "key": task["key"]}
    try:
        scan = _read_scan(mhd)
    except Exception as e:  # noqa: BLE001 - any reader failure means "skip this scan".
        reason = str(e).strip().splitlines()
        return {**record, "error": f"unreadable scan {mhd}: {' '.join(reason)[-400:]}"}
    xyz = np.asarray(task["xyz"], dtype=np.float64).reshape(-1, 3)
    centres = geometry.world_to_voxel(xyz, scan)
    ok = geometry.inside(centres, scan.spatial_shape)
    size = tuple(task["size"])
    cutouts = np.zeros((int(ok.sum()), *size), dtype=task["dtype"])
    for row, centre in enumerate(centres[ok]):
        cutouts[row] = extract_cutout(scan.array, centre, size)
    record.update(
        kept=np.flatnonzero(ok).tolist(),
        centers=centres[ok].tolist(),
        starts=[cutout_start(scan.spatial_shape, c, size).tolist() for c in centres[ok]],
        outside=[
            {"index": int(i), "center": centres[i].round(2).tolist()} for i in np.flatnonzero(~ok)
        ],
        shape=list(scan.spatial_shape),
    )
    part = cutout_files.part(parts, uid)
    tmp = part.with_name(f".{part.name}.tmp-{os.getpid()}.npy")
    np.save(tmp, cutouts)
    os.replace(tmp, part.with_suffix(".npy"))
    # The record is written last: it is what marks the part as complete.
    cutout_files.atomic_json(part.with_suffix(".json"), record)
    return record


def build_cutout_store(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    size: Sequence[int] = DEFAULT_SIZE,
    workers: int = 2,
    dtype: str = "int16",
    candidates: Sequence[csvs.Candidate] | None = None,
    progress: bool = True,
    strict: bool = False,
) -> dict:
    """Extracts a cutout for every candidate of a LUNA folder into a memmapped store.

    Each scan is read once. Scans whose files (size, mtime) and candidate list are unchanged
    since the last build are reused from the existing store (or from a part a killed build
    left behind); the rest are redone.

    Args:
      root: LUNA16 folder (``subset*/``, the candidates CSV, annotations).
      out_dir: store folder (created).
      size: cutout ``(D, H, W)`` in voxels.
      workers: worker processes (spawn context); 0 or 1 works in this process.
      dtype: ``"int16"`` (exact HU) or ``"float16"``.
      candidates: the candidates to cut out; default ``csvs.load_candidates(root)``.
      progress: print a progress line to stderr.
      strict: raise if anything was skipped (the report is written first).

    Returns:
      The report (also written to ``out_dir/report.json``).

    Raises:
      DataError: no cutout could be made, or something was skipped and ``strict``.
    """
    root, out_dir = pathlib.Path(root), pathlib.Path(out_dir)
    size = tuple(int(s) for s in size)
    if dtype not in ("int16", "float16"):
        raise errors.ConfigError(f"cutout dtype must be 'int16' or 'float16', got {dtype!r}.")
    if candidates is None:
        candidates = csvs.load_candidates(root)
    parts = out_dir / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    scans = csvs.find_scans(root)

    by_series: dict[str, list[csvs.Candidate]] = {}
    for c in candidates:
        by_series.setdefault(c.seriesuid, []).append(c)

    old = cutout_files.load_manifest(out_dir)
    old_scans = old["scans"] if old else {}
    skipped_scans, records, tasks = [], {}, []
    for uid, cands in by_series.items():
        if uid not in scans:
            skipped_scans.append(
                {
                    "seriesuid": uid,
                    "reason": f"scan in the candidates CSV but no {uid}.mhd under {root}/subset*/",
                    "n_candidates": len(cands),
                }
            )
            continue
        mhd = scans[uid][1]
        task = {
            "seriesuid": uid,
            "path": str(mhd),
            "parts": str(parts),
            "xyz": [list(c.xyz) for c in cands],
            "size": list(size),
            "dtype": dtype,
            "signature": cutout_files.signature(mhd),
            "key": cutout_files.key([list(c.xyz) for c in cands], size, dtype),
        }
        prev = old_scans.get(uid)
        if prev and [prev["signature"], prev["key"]] == [task["signature"], task["key"]]:
            records[uid] = {**prev, "seriesuid": uid, "source": "store"}
            continue
        part_json = cutout_files.part(parts, uid).with_suffix(".json")
        if part_json.exists() and part_json.with_suffix(".npy").exists():
            rec = json.loads(part_json.read_text())
            if [rec["signature"], rec["key"]] == [task["signature"], task["key"]]:
                records[uid] = {**rec, "source": "part"}
                continue
        tasks.append(task)

    bar = cutout_files.Progress(len(tasks), progress)
    if workers > 1 and len(tasks) > 1:
        # Spawn workers that exit if this process is killed.
        with workers_lib.process_pool(min(workers, len(tasks))) as pool:
            for rec in pool.map(_process_scan, tasks):
                records[rec["seriesuid"]] = {**rec, "source": "new"}
                bar.update()
    else:
        for task in tasks:
            rec = _process_scan(task)
            records[rec["seriesuid"]] = {**rec, "source": "new"}
            bar.update()

    # ---- Assemble rows in candidate-CSV order of series, then candidate order. ----
    columns: dict[str, list] = {c: [] for c in CSV_COLUMNS}
    skipped_candidates, new_scans, sources = [], {}, []
    n_rows = 0
    for uid, cands in by_series.items():
        rec = records.get(uid)
        if rec is None:
            continue
        if "error" in rec:
            skipped_scans.append(
                {"seriesuid": uid, "reason": rec["error"], "n_candidates": len(cands)}
            )
            continue
        for o in rec["outside"]:
            c = cands[o["index"]]
            skipped_candidates.append(
                {
                    "seriesuid": uid,
                    "coordX": c.xyz[0],
                    "coordY": c.xyz[1],
                    "coordZ": c.xyz[2],
                    "reason": f"outside its scan: voxel {o['center']} not in shape {rec['shape']}",
                }
            )
        kept = rec["kept"]
        sources.append((rec, n_rows))
        new_scans[uid] = {
            k: rec[k] for k in ("signature", "key", "kept", "centers", "starts", "outside", "shape")
        }
        new_scans[uid]["rows"] = [n_rows, n_rows + len(kept)]
        for i, centre, start in zip(kept, rec["centers"], rec["starts"], strict=True):
            c = cands[i]
            values = [
                n_rows,
                uid,
                *c.xyz,
                c.label,
                c.diameter_mm,
                c.malignancy,
                scans[uid][0],
                *centre,
                *start,
            ]
            for name, v in zip(CSV_COLUMNS, values, strict=True):
                columns[name].append(v)
            n_rows += 1

    report = {
        "n_rows": n_rows,
        "n_scans": len(new_scans),
        "n_scans_new": sum(r["source"] == "new" for r, _ in sources),
        "n_scans_reused": sum(r["source"] != "new" for r, _ in sources),
        "skipped_scans": skipped_scans,
        "skipped_candidates": skipped_candidates,
    }
    for s in skipped_scans:
        logging.warning("LUNA cutouts: skipped scan %s: %s", s["seriesuid"], s["reason"])
    for s in skipped_candidates:
        logging.warning("LUNA cutouts: skipped candidate of %s: %s", s["seriesuid"], s["reason"])
    if n_rows == 0:
        cutout_files.atomic_json(out_dir / "report.json", report)
        raise errors.DataError(f"No cutout could be made from {root}; see {out_dir}/report.json.")

    # ---- Write the new cutouts under a temporary name, then commit. ----
    tmp_npy = out_dir / f".cutouts.tmp-{os.getpid()}.npy"
    store = np.lib.format.open_memmap(tmp_npy, mode="w+", dtype=dtype, shape=(n_rows, *size))
    old_cutouts = np.load(out_dir / "cutouts.npy", mmap_mode="r") if old else None
    for rec, row0 in sources:
        n = len(rec["kept"])
        if rec["source"] == "store":
            a, b = old_scans[rec["seriesuid"]]["rows"]
            store[row0 : row0 + n] = old_cutouts[a:b]
        elif n:
            part = cutout_files.part(parts, rec["seriesuid"]).with_suffix(".npy")
            store[row0 : row0 + n] = np.load(part, mmap_mode="r")[:n]
    store.flush()
    del store, old_cutouts

    manifest = {
        "format": cutout_files.STORE_FORMAT,
        "size": list(size),
        "dtype": dtype,
        "hu_range": [HU_MIN, HU_MAX],
        "root": str(root),
        "columns": columns,
        "scans": new_scans,
    }
    # Commit order: drop the marker, replace data, write the marker last.
    (out_dir / "candidates.json").unlink(missing_ok=True)
    os.replace(tmp_npy, out_dir / "cutouts.npy")
    tmp_csv = out_dir / f".candidates.csv.tmp-{os.getpid()}"
    with open(tmp_csv, "w") as f:
        f.write(",".join(CSV_COLUMNS) + "\n")
        for i in range(n_rows):
            f.write(",".join(str(columns[c][i]) for c in CSV_COLUMNS) + "\n")
    os.replace(tmp_csv, out_dir / "candidates.csv")
    cutout_files.atomic_json(out_dir / "report.json", report)
    cutout_files.atomic_json(out_dir / "candidates.json", manifest)
    shutil.rmtree(parts, ignore_errors=True)

    if strict and (skipped_scans or skipped_candidates):
        raise errors.DataError(
            f"{len(skipped_scans)} scan(s) and {len(skipped_candidates)} candidate(s) skipped; "
            f"see {out_dir}/report.json."
        )
    return report
