r"""Accuracy side by side: medjax and a MONAI pipeline, same data, same recipe (issue 17, item 6).

    python benchmarks/accuracy.py [--config=configs/unet3d.py] [--steps=400] [--seeds=0,1,2]
        [--only=medjax|monai] [--set=optim.lr=1e-3 ...] [--out=benchmarks/results.jsonl]
        [--dry_run]

Trains medjax through its own trainer (``train.loop.train_and_evaluate``, as ``launch.py``
does: validation, best checkpoint by ``val/dice``, then the test split) and, beside it, the same
recipe in PyTorch/MONAI (``benchmarks/accuracy_monai.py``: DynUNet of the same widths and
depth, DiceCE, Adam with the same warmup + cosine schedule, the same batch size, patch size,
foreground share and augmentations as far as MONAI has them). Both read the same preprocessed
cases from medjax's store with the same train/val/test split, validate at the same steps, test
the weights of their best validation, and are scored by the same code: medjax's sliding-window
evaluation accumulator (``evaluate.segmentation.VolumeEvaluation``: Dice pooled over the split's
voxels, per-case Dice, HD95 in mm).

``--steps`` is rounded to whole epochs of ``train.steps_per_epoch`` (the config's, else
``num_train // batch``); validations every quarter of the run (the config's ``val_every`` when
it has 20 epochs). Seeds run in turn, medjax then MONAI, so both see the same machine load.
``--dry_run`` runs the ``:tiny`` variant for 2 steps (seconds; used to check the script).
Needs ``pip install -e ".[bench]"`` for the MONAI side; without it that side is skipped (said).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import accuracy_monai, run_all  # noqa: E402
from medjax import xla_env  # noqa: E402, F401 - XLA's CPU flags before JAX starts

COLUMNS = (
    ("side", "{:<7}"),
    ("seed", "{:>4}"),
    ("steps", "{:>5}"),
    ("val_dice", "{:>8.4f}"),
    ("best_step", "{:>9}"),
    ("test_dice", "{:>9.4f}"),
    ("test_dice_per_case", "{:>18.4f}"),
    ("test_hd95_mm", "{:>12.2f}"),
    ("wall_s", "{:>7.0f}"),
    ("params", "{:>7}"),
)


def _override(config: Any, assignment: str) -> None:
    """``"optim.lr=1e-3"`` -> ``config.optim.lr = 1e-3`` (a Python literal, else a string)."""
    key, _, text = assignment.partition("=")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    *parents, leaf = key.strip().split(".")
    node = config
    for name in parents:
        node = getattr(node, name)
    # ``*.kwargs`` sections are free-form (a component's options); elsewhere a typo fails.
    if not hasattr(node, leaf) and parents[-1:] != ["kwargs"]:
        raise SystemExit(f"--set {assignment!r}: the config has no key {key!r}")
    setattr(node, leaf, value)


def recipe(
    config_arg: str, steps: int, seed: int, overrides: Sequence[str] = ()
) -> tuple[Any, int, int]:
    """The config of one run: ``config_arg``'s with ``overrides`` (``key=value``), ``steps``
    rounded to epochs, ``seed``.

    Returns:
      ``(config, total_steps, val_every_steps)``; validations every quarter of the run.
    """
    path, _, arg = config_arg.partition(":")
    spec = importlib.util.spec_from_file_location("accuracy_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg or None)
    for assignment in overrides:
        _override(config, assignment)
    config.seed = int(seed)
    num_train = int(config.data.synthetic_kwargs.get("num_train", 0)) or 40
    spe = config.train.steps_per_epoch or max(1, num_train // config.train.batch_size)
    spe = min(spe, steps)
    epochs = max(1, round(steps / spe))
    val_every = max(1, epochs // 4)
    config.train.steps_per_epoch = spe
    config.train.epochs = epochs
    config.train.val_every = val_every
    config.ckpt.every_epochs = val_every  # the best validation is always a checkpoint
    config.log.num_images = 0
    config.eval.write_predictions = False
    return config, spe * epochs, spe * val_every


def model_params(config: Any, task: Any) -> int:
    """The medjax model's parameter count (shapes only, nothing computed)."""
    import jax
    import numpy as np

    from medjax.train import loop

    model = loop.build_model(config)
    x = jax.ShapeDtypeStruct(task.input_shape(), np.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    return int(sum(np.prod(v.shape) for v in jax.tree.leaves(variables.get("params", {}))))


def run_medjax(config: Any, task: Any, total_steps: int, workroot: str) -> dict[str, Any]:
    """One medjax run through its trainer in a fresh workdir (removed afterwards)."""
    from medjax.train import loop

    workdir = tempfile.mkdtemp(prefix="medjax_", dir=workroot)
    t0 = time.time()
    try:
        summary = loop.train_and_evaluate(config, workdir, evaluate_after=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    test = summary["eval"]
    return {
        "val_dice": float(summary["best_value"]),
        "best_step": summary["best_step"],
        "test_dice": float(test["dice"]),
        "test_dice_per_case": float(test["dice_per_case"]),
        "test_hd95_mm": float(test.get("hd95_mm", float("nan"))),
        "wall_s": time.time() - t0,
        "steps": int(summary["final_step"]),
        "params": model_params(config, task),
    }


def print_rows(rows: Sequence[dict[str, Any]]) -> None:
    """The per-run table, then mean / sd / min / max of the test Dice per side."""
    head = " | ".join(name for name, _ in COLUMNS)
    print("\n" + head)
    for r in rows:
        cells = []
        for name, fmt in COLUMNS:
            value = r.get(name)
            cells.append("-" if value is None else fmt.format(value).strip())
        print(" | ".join(cells))
    for side in sorted({r["side"] for r in rows}):
        dice = [r["test_dice"] for r in rows if r["side"] == side]
        val = [r["val_dice"] for r in rows if r["side"] == side]
        print(
            f"{side}: test Dice {run_all.spread(dice)} (val mean {statistics.mean(val):.4f}, "
            f"{len(dice)} seeds)"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/unet3d.py", help="path[:arg] of a config")
    parser.add_argument("--steps", type=int, default=400, help="training steps (whole epochs)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    parser.add_argument("--only", default="", choices=("", "medjax", "monai"))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="config override for both sides, e.g. --set=optim.lr=1e-3 (repeatable)",
    )
    parser.add_argument("--workdir", default="", help="where the runs' workdirs go (temp)")
    parser.add_argument("--out", default=run_all.RESULTS, help="JSONL file ('' for none)")
    parser.add_argument("--dry_run", action="store_true", help=":tiny for 2 steps (seconds)")
    args = parser.parse_args(argv)
    run_all.ensure_importable()
    # PyTorch's OpenMP threads spin while waiting by default, which starves the other side's
    # threads on a loaded machine (benchmarks/peers_torch.py); set before torch is imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    config_arg, steps = args.config, args.steps
    if args.dry_run:
        config_arg, steps = f"{args.config.partition(':')[0]}:tiny", 2
        args.out = ""  # a check, not a result
    sides = [args.only] if args.only else ["medjax", "monai"]
    if "monai" in sides and (why := accuracy_monai.available()):
        print(f"MONAI side skipped: {why}")
        sides.remove("monai")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    from medjax.tasks import segmentation

    workroot = args.workdir or tempfile.mkdtemp(prefix="medjax_accuracy_")
    os.makedirs(workroot, exist_ok=True)  # a --workdir that does not exist yet
    rows = []
    for seed in seeds:
        config, total, val_every = recipe(config_arg, steps, seed, args.set)
        if args.dry_run:
            config.model.kwargs.depth = 3  # MONAI's DynUNet needs 3 levels; 16x32x32 allows it
        task = segmentation.SegmentationTask(config)
        print(f"seed {seed}: {total} steps, validation every {val_every} ({config_arg})")
        for side in sides:
            if side == "medjax":
                row = run_medjax(config, task, total, workroot)
            else:
                row = accuracy_monai.train_and_evaluate(config, task, total, val_every)
            row = {"benchmark": "accuracy", "side": side, "seed": seed, "config": config_arg, **row}
            row["overrides"] = list(args.set)
            row["loadavg"] = os.getloadavg()[0]
            print(f"  {side}: " + ", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            rows.append(row)
            run_all.write_rows([row], args.out or None)
    if not args.workdir:
        shutil.rmtree(workroot, ignore_errors=True)
    print_rows(rows)


if __name__ == "__main__":
    main()
