"""Per-case jobs in this process or in a pool of spawn workers, with a progress line.

The store's fingerprint and preprocessing passes share one ``Runner`` (a spawn worker costs
seconds to start).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Any

from medjax.data import workers
from medjax.data.progress import Progress


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
                self._pool = workers.process_pool(self.workers)  # spawn; exits with us
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
