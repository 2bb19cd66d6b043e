"""``--mode=predict`` for a LUNA16 run: a candidates list over ``.mhd/.raw`` scans ->
LUNA16's ``results.csv`` (``seriesuid, coordX, coordY, coordZ, probability``).

Each candidate is cut out of its scan exactly as the training store did
(``data.luna.cutouts.extract_cutout``: the run's cutout size, HU clipped to [-1000, 1000]),
scaled by 1/1000, and classified; the probability is the last class's (nodule for
``label_mode=nodule``), as evaluation reports it. An ensemble averages the members'. Scans
that are missing or unreadable and candidates outside their scan are listed in
``predictions.csv`` with the reason; every other candidate gets a row in ``results.csv``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from medjax import errors
from medjax.predict import model as model_lib


def _scores(member: model_lib.Member, cutouts: np.ndarray) -> np.ndarray:
    """``float64[N]`` probability of the last class for ``float32[N, D, H, W, 1]`` cutouts."""
    from medjax.metrics import classification

    batch = int(member.plan["inference"]["batch_size"])
    out = []
    for i in range(0, len(cutouts), batch):
        chunk = cutouts[i : i + batch]
        padded = np.zeros((batch, *chunk.shape[1:]), np.float32)
        padded[: len(chunk)] = chunk  # one shape for the jitted function
        logits = np.asarray(member.logits(padded))[: len(chunk)]
        out.append(classification.scores_from_logits(logits)[:, -1])
    return np.concatenate(out) if out else np.zeros(0)


def predict(
    members: Sequence[model_lib.Member], pcfg: ml_collections.ConfigDict, output: str
) -> dict[str, Any]:
    """Classifies every candidate of ``predict.candidates`` in the scans under
    ``predict.input``; writes ``results.csv`` and ``predictions.csv`` into ``output``."""
    from medjax.data.io import itk
    from medjax.data.luna import csvs, cutouts, froc, geometry
    from medjax.predict import runner

    plan = members[0].plan
    luna = plan["luna"]
    root = os.path.abspath(os.path.expanduser(pcfg.input))
    table = pcfg.get("candidates") or str(csvs.candidates_path(root))
    if not os.path.exists(table):
        raise errors.ConfigError(
            f"predict.candidates={table!r}: no such file; give the candidates list "
            "(seriesuid, coordX, coordY, coordZ)."
        )
    by_uid: dict[str, list[Any]] = {}
    for cand in csvs.read_candidates(table):
        by_uid.setdefault(cand.seriesuid, []).append(cand)
    scans = csvs.find_scans(root) if os.path.isdir(root) else {}
    results, rows = [], []
    size = tuple(luna["cutout_size_vox"])
    for uid, cands in by_uid.items():
        t0 = time.time()
        row: dict[str, Any] = {"seriesuid": uid, "candidates": len(cands), "outside": 0}
        try:
            if uid not in scans:
                raise errors.DataError(f"no scan {uid}.mhd under {root}/subset*/")
            row["source"] = str(scans[uid][1])
            scan = itk.read_itk(scans[uid][1])
            xyz = np.asarray([c.xyz for c in cands], np.float64)
            centres = geometry.world_to_voxel(xyz, scan)
            inside = geometry.inside(centres, scan.spatial_shape)
            kept = [c for c, k in zip(cands, inside, strict=True) if k]
            if kept:
                batch = np.stack(
                    [cutouts.extract_cutout(scan.array, c, size) for c in centres[inside]]
                )
                batch = (batch.astype(np.float32) * np.float32(luna["hu_scale"]))[..., None]
                probs = np.mean([_scores(m, batch) for m in members], axis=0)
                for cand, p in zip(kept, probs, strict=True):
                    results.append((uid, *cand.xyz, float(p)))
            row.update(status="ok", reason="", outside=int((~inside).sum()))
        except errors.MedjaxError as e:
            row.update(status="skipped", reason=f"{type(e).__name__}: {e}")
            print(f"medjax: skipped scan {uid}: {row['reason']}", file=sys.stderr)
        row["seconds"] = round(time.time() - t0, 3)
        rows.append(row)
    fields = ["seriesuid", "source", "status", "reason", "candidates", "outside", "seconds"]
    _, ok = runner.write_report(output, rows, [], fields)
    results_path = os.path.join(output, "results.csv")
    froc.write_results_csv(results_path, results)
    print(
        f"medjax: {len(results)} candidate(s) of {ok} scan(s) into {results_path}",
        file=sys.stderr,
    )
    return {"output": output, "csv": results_path, "ok": ok, "rows": rows, "results": results}
