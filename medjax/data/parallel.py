"""Per-case jobs in this process or in a pool of spawn workers, with a progress line.

The store's fingerprint and preprocessing passes share one ``Runner`` (a spawn worker costs
seconds to start). The progress line is the command line's display (stderr, at most one line a
second), the one place in the data library that prints.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any


class Progress:
    """A one-line progress display on stderr (cases done, rate, ETA)."""

    def __init__(self, total: int, name: str):
        self.total, self.name, self.done, self.start = total, name, 0, time.time()
        self._last = 0.0

    def update(self) -> None:
        """Counts one finished case; redraws the line at most once a second (and at the end)."""
        self.done += 1
        now = time.time()
        if self.done < self.total and now - self._last < 1.0:
            return
        self._last = now
        elapsed = now - self.start
        rate = self.done / max(elapsed, 1e-9)
        eta = (self.total - self.done) / max(rate, 1e-9)
        end = "\n" if self.done == self.total else ""
        print(
            f"\r{self.name}: {self.done}/{self.total} cases, {rate:.1f}/s, ETA {eta:.0f}s",
            end=end,
            file=sys.stderr,
            flush=True,
        )


class Runner:
    """Runs per-case jobs in this process (``workers=0``) or in one pool of spawn workers."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def map(self, fn: Callable[..., Any], jobs: Sequence[tuple], name: str) -> list:
        """``[fn(*job) for job in jobs]`` with a progress line; order kept.

        ``fn`` must be a picklable module-level function when ``workers > 0``.
        """
        progress = Progress(len(jobs), name)
        if self.workers > 0 and len(jobs) > 1:
            if self._pool is None:
                ctx = multiprocessing.get_context("spawn")  # fork after jax starts threads: unsafe
                self._pool = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=ctx)
            futures = [self._pool.submit(fn, *job) for job in jobs]
            for _ in concurrent.futures.as_completed(futures):
                progress.update()
            return [f.result() for f in futures]
        results = []
        for job in jobs:
            results.append(fn(*job))
            progress.update()
        return results

    def close(self) -> None:
        """Stops the worker processes (if any were started)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
