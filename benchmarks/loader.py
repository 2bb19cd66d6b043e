"""Grain loader throughput: patches/s and patches/s per CPU core over a built store.

    python benchmarks/loader.py [--configs=unet,unet3d] [--workers=0,1,2] [--batches=20]

For each config (``configs/<name>.py``) the task's own training dataset is built exactly as the
trainer builds it (the store is preprocessed on first use and cached), with
``config.data.num_workers`` set to each worker count; then at least ``--batches`` global batches
(and at least 2 s) are drawn after a warm-up that lets every worker deliver (worker start-up is
not throughput). Host numpy only: no device transfer, no augmentation (those run on the device,
in the train step).

Cores used = ``max(workers, 1)``: with workers the main process only unpickles batches. On a
machine shared with other jobs, per-core figures are lower bounds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import run_all  # noqa: E402


def measure(
    config_name: str,
    workers: int,
    batches: int,
    batch_size: int | None = None,
    min_seconds: float = 2.0,
) -> dict:
    """Patches/s of one config's training dataset with ``workers`` Grain worker processes.

    Args:
      config_name: a file ``configs/<config_name>.py`` (its default variant).
      workers: ``config.data.num_workers`` (0: loaded in this process).
      batches: least number of timed global batches.
      batch_size: global batch size; None keeps the config's ``train.batch_size``.
      min_seconds: least timed duration.

    Returns:
      A result row: ``value`` is patches/s, ``per_core`` patches/s per CPU core used.
    """
    from medjax import registry
    from medjax.testing import configs as configs_lib

    config = configs_lib.load_config(config_name)
    config.data.num_workers = workers
    bs = batch_size or config.train.batch_size
    task = registry.get(f"tasks.{config.task}")(config)
    it = iter(task.train_dataset(global_batch_size=bs, seed=0))
    try:
        t = time.perf_counter()
        for _ in range(2 + 2 * workers):  # every worker delivers at least once before timing
            batch = next(it)
        warm_s = time.perf_counter() - t
        t = time.perf_counter()
        drawn, elapsed = 0, 0.0
        # At least `batches` and at least `min_seconds`: fast loaders need many draws to time.
        while drawn < batches or elapsed < min_seconds:
            batch = next(it)
            drawn += 1
            elapsed = time.perf_counter() - t
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
    rate = drawn * bs / elapsed
    cores = max(workers, 1)
    image = batch["image"]
    return {
        "benchmark": "loader",
        "setting": f"{config_name} {tuple(image.shape[1:-1])} b{bs} workers={workers}",
        "value": rate,
        "unit": "patches/s",
        "extra": f"{rate / cores:.1f}/s/core, {rate * image[0].nbytes / 1e6:.0f} MB/s",
        "config": config_name,
        "workers": workers,
        "batch": bs,
        "patch": list(image.shape[1:-1]),
        "per_core": rate / cores,
        "warmup_s": warm_s,
    }


def run(
    config_names: Sequence[str],
    workers: Sequence[int],
    *,
    batches: int = 20,
    out: str | None = run_all.RESULTS,
) -> list[dict[str, Any]]:
    """``measure`` for every config x worker count; rows are appended to ``out``."""
    run_all.ensure_importable()
    rows = [measure(c, w, batches) for c in config_names for w in workers]
    run_all.write_rows(rows, out)
    return rows


def main() -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="unet,unet3d")
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--out", default=run_all.RESULTS, help="JSONL file ('' for none)")
    args = parser.parse_args()
    rows = run(
        args.configs.split(","),
        [int(w) for w in args.workers.split(",")],
        batches=args.batches,
        out=args.out,
    )
    run_all.print_table(rows, "Grain loader (host only)")


if __name__ == "__main__":
    main()
