"""What the user at a terminal reads (stderr): messages, progress lines with a rate and an ETA.

``say(message)`` is the one way library code talks to the user (warnings they must see at the
default verbosity, summaries, where files went): process 0 only. Diagnostics go to absl logging.

``Progress(total, name)`` prints ``\\r<name> i/N <rate>/s ETA 1m05s`` as work advances
(process 0 only, at most every ``min_interval`` seconds, and once at the end with a newline);
``RunEta`` turns the steps done so far into the whole run's remaining time.
"""

from __future__ import annotations

import sys
import time
from typing import IO

from medjax import distributed


def say(message: str) -> None:
    """Prints ``message`` for the user on stderr, from process 0 only (flushed at once)."""
    if distributed.is_main():
        print(message, file=sys.stderr, flush=True)


def format_seconds(seconds: float) -> str:
    """``3725 -> "1h02m"``, ``65 -> "1m05s"``, ``9.4 -> "9s"`` (``"?"`` when unknown)."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Progress:
    """A one-line progress counter: ``with Progress(n, "eval val") as p: ... p.update()``.

    Args:
      total: the number of units (cases, batches, windows).
      name: what is counted, printed first.
      unit: the unit's name in the rate.
      stream: where to print (default stderr).
      min_interval: seconds between redraws (the last one is always drawn).
      enabled: default: on for process 0 only.
    """

    def __init__(
        self,
        total: int,
        name: str,
        *,
        unit: str = "it",
        stream: IO[str] | None = None,
        min_interval: float = 0.5,
        enabled: bool | None = None,
    ):
        self.total, self.name, self.unit = int(total), name, unit
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval = min_interval
        self.enabled = distributed.is_main() if enabled is None else enabled
        self.done = 0
        self.start = time.perf_counter()
        self._last_draw = -float("inf")
        self._drawn = -1  # the count last drawn
        self._closed = False

    def line(self) -> str:
        """The current line (without ``\\r``): ``name i/N rate unit/s ETA t``."""
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        return (
            f"{self.name} {self.done}/{self.total} {rate:.2f} {self.unit}/s "
            f"ETA {format_seconds(eta)}"
        )

    def update(self, n: int = 1) -> None:
        """Counts ``n`` more units done and redraws if ``min_interval`` has passed."""
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self._last_draw >= self.min_interval or self.done >= self.total):
            self._last_draw, self._drawn = now, self.done
            print("\r" + self.line(), end="", file=self.stream, flush=True)

    def close(self) -> None:
        """Draws the final line and ends it (once)."""
        if self.enabled and not self._closed:
            line = "" if self._drawn == self.done else "\r" + self.line()
            print(line, file=self.stream, flush=True)
        self._closed = True

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RunEta:
    """The whole run's remaining time from its step rate since this process started.

    Args:
      total_steps: the run's last step.
      start_step: the step this process started (resumed) at.
    """

    def __init__(self, total_steps: int, start_step: int = 0):
        self.total, self.start_step = int(total_steps), int(start_step)
        self.t0 = time.perf_counter()

    def seconds_left(self, step: int) -> float:
        """Remaining seconds at ``step`` (NaN before the first step is done)."""
        done = step - self.start_step
        elapsed = time.perf_counter() - self.t0
        return (self.total - step) * elapsed / done if done > 0 else float("nan")

    def line(self, step: int) -> str:
        """``run: step 40/400 (10%), ETA 5m12s``."""
        pct = 100.0 * step / max(self.total, 1)
        return (
            f"run: step {step}/{self.total} ({pct:.0f}%), "
            f"ETA {format_seconds(self.seconds_left(step))}"
        )
