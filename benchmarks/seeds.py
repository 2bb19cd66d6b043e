r"""Seed robustness through ``launch.py``: one full run per seed, as a user would start it.

    python benchmarks/seeds.py [--config=configs/unet3d.py] [--seeds=0-9]
        [--flag=--config.plan.auto=True ...] [--workdir=DIR] [--keep]
        [--out=benchmarks/results.jsonl]

Each seed is ``python launch.py --config=... --workdir=<DIR>/seed<N> --config.seed=<N>`` plus
the ``--flag``\ s, in a fresh process (planning, preprocessing from the cached store,
compilation, training, validations, the best checkpoint's test evaluation: everything
``launch.py`` does, wall-clocked from outside). The table gives per seed the validation Dice at
each validation (so a run that takes off late shows), the best one, the test Dice of the best
checkpoint and the wall time; then mean / sd / min / max of the test Dice. Workdirs are removed
unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import run_all  # noqa: E402


def parse_seeds(text: str) -> list[int]:
    """``"0-9"`` or ``"0,2,5"`` (or a mix, ``"0-2,7"``) -> the seeds, in order."""
    seeds = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        first, dash, last = part.partition("-")
        seeds += list(range(int(first), int(last) + 1)) if dash else [int(first)]
    return seeds


def read_metrics(workdir: str) -> dict[str, Any]:
    """Validation curve, best validation Dice and test metrics from ``metrics.jsonl``."""
    curve, test = [], {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if "val/dice" in row:
                curve.append((int(row["step"]), float(row["val/dice"])))
            if "test/dice" in row:
                test = row
    return {
        "val_curve": curve,
        "val_dice": max((d for _, d in curve), default=float("nan")),
        "test_dice": float(test.get("test/dice", float("nan"))),
        "test_dice_per_case": float(test.get("test/dice_per_case", float("nan"))),
        "test_hd95_mm": float(test.get("test/hd95_mm", float("nan"))),
    }


def run_seed(config: str, seed: int, flags: Sequence[str], workdir: str) -> dict[str, Any]:
    """One ``launch.py`` run; its row (``ok=False`` and the last output lines on failure)."""
    cmd = [
        sys.executable,
        os.path.join(run_all.ROOT, "launch.py"),
        f"--config={config}",
        f"--workdir={workdir}",
        f"--config.seed={seed}",
        *flags,
    ]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=run_all.ROOT, capture_output=True, text=True)
    row: dict[str, Any] = {"seed": seed, "wall_s": time.time() - t0, "ok": proc.returncode == 0}
    if proc.returncode != 0:
        row["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return row
    row.update(read_metrics(workdir))
    plan = os.path.join(workdir, "plan_arch.json")
    if os.path.exists(plan):
        with open(plan) as f:
            p = json.load(f)
        row["plan"] = {k: p[k] for k in ("patch_size", "batch_size", "depth", "features")}
    return row


def print_rows(rows: Sequence[dict[str, Any]]) -> None:
    """The per-seed table, then the test Dice's summary."""
    print("\nseed | val Dice per validation | best val | test Dice | per case | HD95 mm | wall s")
    for r in rows:
        if not r["ok"]:
            print(f"{r['seed']} | FAILED: {' / '.join(r['error'])} | | | | | {r['wall_s']:.0f}")
            continue
        curve = " ".join(f"{d:.2f}" for _, d in r["val_curve"])
        print(
            f"{r['seed']} | {curve} | {r['val_dice']:.4f} | {r['test_dice']:.4f} | "
            f"{r['test_dice_per_case']:.4f} | {r['test_hd95_mm']:.2f} | {r['wall_s']:.0f}"
        )
    dice = [r["test_dice"] for r in rows if r["ok"]]
    if dice:
        failed = sum(not r["ok"] for r in rows)
        print(f"test Dice over {len(dice)} seeds: {run_all.spread(dice)}; failed runs: {failed}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/unet3d.py", help="launch.py's --config")
    parser.add_argument("--seeds", default="0-9", help="e.g. 0-9 or 0,3,5")
    parser.add_argument("--flag", action="append", default=[], help="a launch.py flag (repeatable)")
    parser.add_argument("--workdir", default="", help="where the workdirs go (temp)")
    parser.add_argument("--keep", action="store_true", help="keep the workdirs")
    parser.add_argument("--out", default=run_all.RESULTS, help="JSONL file ('' for none)")
    args = parser.parse_args(argv)
    root = args.workdir or tempfile.mkdtemp(prefix="medjax_seeds_")
    os.makedirs(root, exist_ok=True)
    rows = []
    for seed in parse_seeds(args.seeds):
        workdir = os.path.join(root, f"seed{seed}")
        row = run_seed(args.config, seed, args.flag, workdir)
        row.update(benchmark="seeds", config=args.config, flags=list(args.flag))
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "val_curve"}), flush=True)
        if args.out:
            run_all.write_rows([row], args.out)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print_rows(rows)


if __name__ == "__main__":
    main()
