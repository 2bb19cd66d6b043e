"""What the command line shows of long data passes: a progress line and summary notices.

The one place in the data library that prints: a display for a person watching a terminal, not
a log record (library code logs with absl).
"""

from __future__ import annotations

import sys
import time


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


def notice(text: str) -> None:
    """One ``medjax: <text>`` line on stderr: a summary the person at the terminal must see
    (bad cases skipped, preprocessing chosen from the fingerprint), whatever the log level."""
    print(f"medjax: {text}", file=sys.stderr, flush=True)
