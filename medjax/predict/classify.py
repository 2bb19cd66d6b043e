"""``--mode=predict`` for a classification run: a folder of images -> class probabilities.

Each image goes through the run's recorded preprocessing (its ``target_size`` gives the whole-
image shape the model was trained on), then the model, whole; an ensemble averages the
members' probabilities. ``predictions.csv`` has one row per case: ``case_id``, ``source``,
``status``, ``reason``, ``predicted`` (the class name), ``p_<class name>`` per class,
``seconds``. Cases that cannot be read or do not fit the model are skipped with their reason.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from medjax import errors
from medjax.predict import inputs as inputs_lib
from medjax.predict import model as model_lib


def class_probabilities(member: model_lib.Member, image: Any, where: str) -> np.ndarray:
    """``float32[K']`` class probabilities of one image (``K' = 2`` for a sigmoid head).

    Raises:
      DataError: the image's shape or channels after preprocessing differ from the model's.
    """
    from medjax.data.preprocess import pipeline as pp

    plan = member.plan
    array, _, _ = pp.preprocess_case(image, None, plan["spec"])
    want = (*plan["patch_size"], plan["channels"])
    if tuple(array.shape) != tuple(want):
        raise errors.DataError(
            f"{where}: shape {tuple(array.shape)} after preprocessing, the model takes {want}."
        )
    batch = np.zeros((int(plan["inference"]["batch_size"]), *array.shape), np.float32)
    batch[0] = array  # padded to the evaluation batch: the jitted function's one shape
    logits = np.asarray(member.logits(batch))[0]
    if logits.shape[-1] == 1:
        p = float(model_lib.probabilities(logits)[0])
        return np.asarray([1.0 - p, p], np.float32)
    return model_lib.probabilities(logits)


def predict(
    members: Sequence[model_lib.Member], pcfg: ml_collections.ConfigDict, output: str
) -> dict[str, Any]:
    """Predicts every image of ``pcfg.input``; writes ``<output>/predictions.csv``."""
    from medjax.predict import runner

    names = list(members[0].plan["label_names"])
    cases, ignored = inputs_lib.find_cases(pcfg.input)
    rows: list[dict[str, Any]] = []
    progress = runner._Progress(max(len(cases), 1))
    for case in cases:
        t0 = time.time()
        row: dict[str, Any] = {"case_id": case.id, "source": case.source}
        try:
            image = runner.read_case(case)
            probs = np.mean([class_probabilities(m, image, case.source) for m in members], axis=0)
            row.update(status="ok", reason="", predicted=names[int(np.argmax(probs))])
            row.update({f"p_{n}": round(float(p), 6) for n, p in zip(names, probs, strict=True)})
        except errors.MedjaxError as e:
            row.update(status="skipped", reason=f"{type(e).__name__}: {e}")
            progress.say(f"medjax: skipped {case.source}: {row['reason']}")
        row["seconds"] = round(time.time() - t0, 3)
        rows.append(row)
        progress.update(case.id)
    fields = ["case_id", "source", "status", "reason", "predicted"]
    fields += [f"p_{n}" for n in names] + ["seconds"]
    path, ok = runner.write_report(output, rows, ignored, fields)
    print(f"medjax: classified {ok} of {len(cases)} case(s); {path}", file=sys.stderr)
    return {"output": output, "csv": path, "ok": ok, "rows": rows}
