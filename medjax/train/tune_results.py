"""What a finished sweep leaves behind: one row per trial (its parameters, final and best
metric, status), the table printed at the end, the results files and the best trial's config.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import pprint
import sys
from typing import Any

import ml_collections

from medjax import errors
from medjax.train import tune_space


def trial_workdir(sweep_dir: str, trial_id: str) -> str:
    """The deterministic workdir of a trial: a restarted trial finds its checkpoint there."""
    return os.path.join(sweep_dir, "trials", trial_id)


def row(
    trial: Any,
    df: Any,
    params: list[tune_space.Param],
    config: ml_collections.ConfigDict,
    workdir: str,
) -> dict[str, Any]:
    """One line of the table from a Ray ``Trial`` and its results (a DataFrame or None)."""
    metric, mode = config.tune.metric, config.tune.mode
    trial_id = trial.trial_id
    values = [] if df is None or metric not in df else [v for v in df[metric] if v == v]
    epochs = 0 if df is None or "epoch" not in df else int(df["epoch"].max())
    if not values:  # Ray lost the results (a trial that ended as the sweep was interrupted)
        values, epochs = _own_record(trial_workdir(workdir, trial_id), metric)
    error = None
    if trial.status == "ERROR":
        status, error = "error", trial.get_pickled_error() or trial.get_error()
    elif os.path.exists(os.path.join(trial_workdir(workdir, trial_id), "tune_done.json")) or (
        # ASHA's top rung is at max_t: it may stop a trial at its last validation.
        trial.status == "TERMINATED"
        and epochs >= (trial.config or {}).get("train.epochs", config.train.epochs)
    ):
        status = "completed"
    elif trial.status == "TERMINATED":
        status = "pruned"  # stopped by the scheduler before its last epoch
    else:
        status = "unfinished"  # the sweep was interrupted: the same command resumes it
    row = {
        "trial": trial_id,
        "status": status,
        "epochs": epochs,
        f"best {metric}": (max if mode == "max" else min)(values) if values else None,
    }
    row.update({p.key: (trial.config or {}).get(p.key) for p in params})
    row["workdir"] = trial_workdir(workdir, trial_id)
    if error is not None:
        row["error"] = (str(error).strip().splitlines() or ["unknown error"])[-1][:300]
    return row


def _own_record(trial_dir: str, metric: str) -> tuple[list[float], int]:
    """The trial's validations of ``metric`` and its finished epochs, from its ``metrics.jsonl``
    (epochs: the distinct steps that logged ``train/lr_epoch``, once per finished epoch)."""
    values, epoch_steps = [], set()
    try:
        with open(os.path.join(trial_dir, "metrics.jsonl")) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill
                if metric in rec and rec[metric] == rec[metric]:
                    values.append(float(rec[metric]))
                if "train/lr_epoch" in rec:
                    epoch_steps.add(rec["step"])
    except OSError:
        return [], 0
    return values, len(epoch_steps)


def write_outputs(rows, params, config, workdir) -> dict[str, Any]:
    metric, mode = config.tune.metric, config.tune.mode
    col = f"best {metric}"
    rows = sorted(rows, key=lambda r: r["trial"])
    fields = ["trial", "status", "epochs", col, *(p.key for p in params), "workdir", "error"]
    csv_path = os.path.join(workdir, "trials.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    print_table(rows, fields[:-2])
    for r in rows:
        if r.get("error"):
            print(f"medjax: trial {r['trial']} failed: {r['error']}", file=sys.stderr)
    scored = [r for r in rows if r[col] is not None]
    unfinished = [r["trial"] for r in rows if r["status"] == "unfinished"]
    summary = {"rows": rows, "best": None, "csv": csv_path, "best_config": None}
    summary["finished"] = not unfinished
    if unfinished:
        print(
            f"medjax: the sweep stopped before trials {', '.join(unfinished)} finished; "
            "run the same command again to resume it.",
            file=sys.stderr,
        )
        if not scored:
            return summary
    if not scored:
        errs = [f"{r['trial']}: {r['error']}" for r in rows if r.get("error")]
        raise errors.TrainingError(
            f"No trial of the sweep in {workdir} reported {metric}."
            + (f" First error: {errs[0]}" if errs else "")
        )
    # The best so far when interrupted: its file is rewritten when the sweep finishes.
    best = (max if mode == "max" else min)(scored, key=lambda r: r[col])
    best_path = os.path.join(workdir, "best_config.py")
    write_best_config(best_path, config, {p.key: best[p.key] for p in params}, best, metric)
    print(
        f"medjax: best trial {best['trial']}: {metric}={best[col]:.4f}; table {csv_path}\n"
        f"  train it: python launch.py --config={best_path}\n"
        f"  view: tensorboard --logdir {os.path.join(workdir, 'trials')}",
        file=sys.stderr,
    )
    return {**summary, "best": best, "best_config": best_path}


def print_table(rows: list[dict[str, Any]], fields: list[str]) -> None:
    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(k)) for k in fields] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(fields)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(fields, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cs, widths, strict=True)) for cs in cells]
    print("\n".join(lines))


def write_best_config(
    path: str,
    config: ml_collections.ConfigDict,
    values: dict[str, Any],
    row: dict[str, Any],
    metric: str,
) -> None:
    """Writes ``config`` with ``values`` as a Python config file (``get_config()``) at ``path``.

    The file holds the sweep's whole config as a literal, then one assignment per tuned value,
    so it neither depends on the config file the sweep started from nor hides what was tuned.
    """
    literal = pprint.pformat(config.to_dict(), width=96, sort_dicts=False)
    try:
        ast.literal_eval(literal)
    except (ValueError, SyntaxError) as e:
        raise errors.ConfigError(
            f"The sweep's config cannot be written as Python literals for {path}: {e}"
        ) from e

    def target(key: str) -> str:
        parts = key.split(".")
        if all(p.isidentifier() for p in parts):
            return "c." + key
        return "c" + "".join(f"[{p!r}]" for p in parts)

    assigns = "\n".join(f"    {target(k)} = {v!r}" for k, v in values.items())
    text = f'''"""Best trial {row["trial"]} of the sweep in {os.path.dirname(path)}.

{metric} = {row[f"best {metric}"]:.4f} after {row["epochs"]} epoch(s) ({row["status"]}).
Train it:
    python launch.py --config={path} --workdir=runs/best

Written by ``launch.py --mode=tune``: the sweep's config with the trial's drawn values.
"""

import ml_collections

from medjax import config_lib

_SWEEP_CONFIG = {literal}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The sweep's config with the best trial's values; takes no argument."""
    config_lib.parse_arg(arg)
    c = ml_collections.ConfigDict(_SWEEP_CONFIG)
    # The best trial's values:
{assigns}
    return c
'''
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
