"""System metrics: host CPU and memory, device memory, and how long the step waits for data.

``SystemMonitor.next(it, step)`` replaces the loop's ``next(it)``: it times the wait for the
batch and, every ``log.system_every_steps`` steps, writes ``system/...`` scalars to the writer
(process 0 only; host-side reads, no device transfer):

- ``system/cpu_percent``: this process's CPU use since the last write (100 = one core busy),
- ``system/rss_gb``: this process's resident memory,
- ``system/<device>/bytes_in_use_gb``, ``.../peak_bytes_in_use_gb``: per local device, where
  ``jax.Device.memory_stats()`` reports them (GPU/TPU; the CPU backend reports nothing),
- ``system/data_wait_fraction``: time spent in ``next(it)`` over wall time between writes.

The interval ending at step ``s`` (a multiple of ``every``) is written, at step ``s``, when the
step after it asks for its batch: a process's last interval is not written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import jax

from medjax import distributed

_GB = 1024.0**3


def host_stats() -> tuple[float, float]:
    """``(cpu_seconds, rss_bytes)`` of this process (psutil when installed, else ``/proc``)."""
    try:
        import psutil

        p = psutil.Process()
        t = p.cpu_times()
        return t.user + t.system, float(p.memory_info().rss)
    except ImportError:
        t = os.times()
        with open("/proc/self/statm") as f:
            rss_pages = int(f.read().split()[1])
        return t.user + t.system, float(rss_pages * os.sysconf("SC_PAGE_SIZE"))


def device_memory() -> dict[str, float]:
    """``{"system/<platform><id>/bytes_in_use_gb": ..., ...peak...}`` for local devices that
    report memory stats (an empty dict on the CPU backend)."""
    out = {}
    for d in jax.local_devices():
        stats = d.memory_stats()
        if not stats:
            continue
        name = f"system/{d.platform}{d.id}"
        for key in ("bytes_in_use", "peak_bytes_in_use"):
            if key in stats:
                out[f"{name}/{key}_gb"] = stats[key] / _GB
    return out


class SystemMonitor:
    """Times ``next(it)`` and writes ``system/...`` every ``every`` steps (0 = off).

    Args:
      every: ``log.system_every_steps``.
      writer: a ``MetricWriter`` (anything with ``write_scalars(step, dict)``).
    """

    def __init__(self, every: int, writer: Any):
        self.every = every if distributed.is_main() else 0
        self.writer = writer
        self._wait = 0.0
        self._t0 = time.perf_counter()
        self._cpu0, _ = host_stats()
        self._last_step: int | None = None

    def next(self, it: Iterator[Any], step: int) -> Any:
        """``next(it)`` for the step that starts at ``step`` (steps done so far)."""
        if not self.every:
            return next(it)
        if step % self.every == 0 and self._last_step is not None and step > self._last_step:
            self.write(step)
        elif self._last_step is None:
            self._reset(step)
        t = time.perf_counter()
        batch = next(it)
        self._wait += time.perf_counter() - t
        return batch

    def write(self, step: int) -> dict[str, float]:
        """Writes (and returns) the metrics of the interval since the last write."""
        now = time.perf_counter()
        cpu, rss = host_stats()
        wall = max(now - self._t0, 1e-9)
        scalars = {
            "system/cpu_percent": 100.0 * (cpu - self._cpu0) / wall,
            "system/rss_gb": rss / _GB,
            "system/data_wait_fraction": min(self._wait / wall, 1.0),
            **device_memory(),
        }
        self.writer.write_scalars(step, scalars)
        self._reset(step)
        return scalars

    def _reset(self, step: int) -> None:
        self._t0 = time.perf_counter()
        self._cpu0, _ = host_stats()
        self._wait = 0.0
        self._last_step = step
