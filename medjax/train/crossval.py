"""k-fold cross-validation runs: every fold in turn, and the summary over the folds.

``train_folds(config, workdir)`` (``data.fold="all"``) trains fold k into ``<workdir>/fold_<k>``
with the one trainer (``loop.train_and_evaluate``), then evaluates its best checkpoint on its
validation cases (``<workdir>/fold_<k>/eval/<val split>-step<N>/``). ``summarize(workdir)``
(``--mode=cv_summary``, and at the end of ``train_folds``) collects those: per fold, and the
mean +- sd (sample sd, ddof=1) over the folds of every validation metric, plus the out-of-fold
per-case rows of all folds pooled into one mean per metric ("pooled": every case once, as if
one validation set). Written to ``<workdir>/cv_summary.json``.

``choose_postprocessing(config, workdir)`` (``--mode=choose_postprocessing``) picks nnU-Net's
per-class post-processing on the out-of-fold predictions of every fold (or on the validation
split of a single run) and stores it as ``<workdir>/postprocessing.json``
(``medjax.plan.postprocessing``).
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import re
from typing import Any

import ml_collections
import numpy as np

from medjax import distributed, errors, progress
from medjax.data import splits as splits_lib
from medjax.models import spec as model_spec

SUMMARY_FILE = "cv_summary.json"


def fold_dir(workdir: str, fold: int) -> str:
    """``<workdir>/fold_<k>``."""
    return os.path.join(workdir, f"fold_{fold}")


def fold_config(config: ml_collections.ConfigDict, fold: int) -> ml_collections.ConfigDict:
    """``config`` for one fold: ``data.fold=k``, evaluated on that fold's validation cases."""
    out = config.copy_and_resolve_references()
    with out.unlocked():
        # A string: the field took str's type from "all" (ml_collections keeps the first type).
        out.data.fold = str(fold)
        out.eval.split = config.data.val_split
    return out


def train_folds(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains and validates every fold (``data.fold="all"``); returns ``summarize(workdir)``.

    A fold whose workdir holds a checkpoint resumes (the trainer's rule), so an interrupted
    cross-validation continues with the same command.
    """
    from medjax.train import loop

    if splits_lib.active_fold(config) != "all":
        raise errors.ConfigError(f"train_folds needs data.fold='all', got {config.data.fold!r}.")
    for fold in range(int(config.data.num_folds)):
        cfg = fold_config(config, fold)
        if distributed.is_main():
            progress.say(f"medjax: fold {fold} of {config.data.num_folds}")
        loop.train_and_evaluate(cfg, fold_dir(workdir, fold), evaluate_after=True)
    return summarize(workdir, config.data.val_split)


def _latest_eval(directory: str, split: str) -> str | None:
    """The ``eval/<split>-step<N>`` folder with the largest N, or None."""
    found = []
    for path in glob.glob(os.path.join(directory, "eval", f"{split}-step*")):
        m = re.fullmatch(rf"{re.escape(split)}-step(\d+)", os.path.basename(path))
        if m and os.path.exists(os.path.join(path, "metrics.json")):
            found.append((int(m.group(1)), path))
    return max(found)[1] if found else None


def _numeric(row: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in row.items():
        if isinstance(v, bool):  # flags such as metrics.json's "postprocessed" are no metric
            continue
        try:
            value = float(v)
        except (TypeError, ValueError):
            continue
        if k != "step" and math.isfinite(value):
            out[k] = value
    return out


def _defined(values: list[float]) -> np.ndarray:
    """``float64`` array of the non-NaN values."""
    values = np.asarray(values, np.float64)
    return values[~np.isnan(values)]


def summarize(workdir: str, split: str = "val") -> dict[str, Any]:
    """Collects the folds of ``workdir`` into ``<workdir>/cv_summary.json`` and prints it.

    Args:
      workdir: the cross-validation folder (with ``fold_<k>/eval/<split>-step<N>/``).
      split: the validation split's name.

    Returns:
      ``{"folds": {k: metrics}, "mean": {...}, "sd": {...}, "pooled": {...},
      "num_folds": n, "num_cases": N}``; a metric missing or NaN in some fold (or case) is
      averaged over the folds (cases) where it is defined.

    Raises:
      DataError: no fold of ``workdir`` has been evaluated.
    """
    folds: dict[str, dict[str, float]] = {}
    rows: list[dict[str, float]] = []
    for path in sorted(glob.glob(os.path.join(workdir, "fold_*"))):
        k = splits_lib.fold_number(os.path.basename(path))
        latest = _latest_eval(path, split) if k is not None else None
        if latest is None:
            continue
        with open(os.path.join(latest, "metrics.json")) as f:
            folds[str(k)] = _numeric(json.load(f))
        per_case = os.path.join(latest, "per_case.csv")
        if os.path.exists(per_case):
            with open(per_case, newline="") as f:
                rows.extend(_numeric(r) for r in csv.DictReader(f))
    if not folds:
        raise errors.DataError(
            f"{workdir}: no evaluated fold (fold_<k>/eval/{split}-step<N>/metrics.json); train "
            "with data.fold='all' first."
        )
    names = sorted({k for v in folds.values() for k in v})
    mean, sd = {}, {}
    for name in names:
        values = _defined([v[name] for v in folds.values() if name in v])
        mean[name] = float(values.mean()) if values.size else float("nan")
        sd[name] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    pooled = {}
    for name in sorted({k for r in rows for k in r}):
        # The evaluation's rule: a per-case HD95 of a case with one empty mask is NaN and left
        # out of the mean (its count is its own column), never a NaN for the whole column.
        values = _defined([r[name] for r in rows if name in r])
        pooled[name] = float(values.mean()) if values.size else float("nan")
    summary = {
        "num_folds": len(folds),
        "num_cases": len(rows),
        "folds": dict(sorted(folds.items(), key=lambda kv: int(kv[0]))),
        "mean": mean,
        "sd": sd,
        "pooled": pooled,
    }
    if distributed.is_main():
        tmp = os.path.join(workdir, f".{SUMMARY_FILE}.tmp-{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(tmp, os.path.join(workdir, SUMMARY_FILE))
        progress.say(describe(summary))
    return summary


def describe(summary: dict[str, Any]) -> str:
    """The summary as a table: one row per metric, one column per fold, then mean +- sd."""
    folds = list(summary["folds"])
    lines = [
        f"medjax: cross-validation over {summary['num_folds']} fold(s), "
        f"{summary['num_cases']} out-of-fold case(s)",
        "  metric".ljust(24) + "".join(f"fold {k}".rjust(10) for k in folds) + "   mean +- sd",
    ]
    for name, mean in summary["mean"].items():
        cells = "".join(
            f"{summary['folds'][k][name]:10.4f}" if name in summary["folds"][k] else " " * 10
            for k in folds
        )
        lines.append(f"  {name}".ljust(24) + cells + f"   {mean:.4f} +- {summary['sd'][name]:.4f}")
    return "\n".join(lines)


def _validation_pairs(
    config: ml_collections.ConfigDict, workdir: str
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Predicted and reference label maps of the validation split, from the best checkpoint."""
    from medjax.train import loop

    run = loop._Run(config, workdir, for_training=False)  # noqa: SLF001 - evaluate()'s setup
    try:
        if config.eval.step < 0:  # the best intact checkpoint, as --mode=eval picks it
            _, state, _ = run.ckpt.restore_intact(run.abstract_state, prefer="best")
        else:
            state, _ = run.ckpt.restore(config.eval.step, run.abstract_state)
        split = config.data.val_split
        preds = run.evaluate(state, split, keep_predictions=True).predictions
        source = run.task.data.source(split)
        indices = sorted(preds)
        return [preds[i] for i in indices], [np.asarray(source[i]["label"]) for i in indices]
    finally:
        run.ckpt.close()


def choose_postprocessing(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Chooses and stores the post-processing (``<workdir>/postprocessing.json``).

    With ``data.fold="all"`` on the out-of-fold validation predictions of every fold (each
    from its own best checkpoint), else on the validation split of the run in ``workdir``.
    Classes: 1 for a binary model (``model.num_classes=1``), else ``1..num_classes-1``.

    Raises:
      ConfigError: a region run (``data.regions``): its overlapping regions are no label map to
        clean component by component, so eval and predict never apply a choice to it.
    """
    from medjax.plan import postprocessing

    if config.data.get("regions"):
        raise errors.ConfigError(
            "--mode=choose_postprocessing: data.regions is set; post-processing applies to "
            "label maps of plain classes only (eval and predict skip it for region runs)."
        )
    if splits_lib.active_fold(config) == "all":
        runs = [
            (fold_config(config, k), fold_dir(workdir, k))
            for k in range(int(config.data.num_folds))
        ]
    else:
        runs = [(config, workdir)]
    preds, truths = [], []
    for cfg, directory in runs:
        p, t = _validation_pairs(cfg, directory)
        preds += p
        truths += t
    k = model_spec.num_classes(config)
    doc = postprocessing.choose(preds, truths, [1] if k == 1 else list(range(1, k)))
    postprocessing.save(doc, workdir)
    postprocessing.print_choice(doc)
    return doc
