"""Progress line and ETAs: formats checked against hand-computed strings."""

import io
import re

import pytest

from medjax import progress


@pytest.mark.parametrize(
    "seconds, text",
    [(0, "0s"), (9.4, "9s"), (65, "1m05s"), (3725, "1h02m"), (float("nan"), "?"), (-1, "?")],
)
def test_format_seconds(seconds, text):
    assert progress.format_seconds(seconds) == text


def test_progress_prints_counts_rate_and_eta_and_ends_the_line():
    out = io.StringIO()
    with progress.Progress(
        4, "eval val", unit="case", stream=out, min_interval=0.0, enabled=True
    ) as p:
        for _ in range(4):
            p.update()
    text = out.getvalue()
    lines = text.split("\r")[1:]
    assert len(lines) == 4 and text.endswith("\n")  # 4 updates, the last one ended
    assert re.fullmatch(r"eval val 2/4 \d+\.\d\d case/s ETA (\d+s|\?)", lines[1])
    assert lines[-1].startswith("eval val 4/4 ") and lines[-1].rstrip().endswith("ETA 0s")


def test_progress_close_draws_the_count_not_yet_shown():
    out = io.StringIO()
    p = progress.Progress(10, "x", stream=out, min_interval=1e9, enabled=True)
    p.update(3)  # drawn (first)
    p.update(2)  # too soon: not drawn
    p.close()
    assert [line.split()[1] for line in out.getvalue().split("\r")[1:]] == ["3/10", "5/10"]


def test_progress_is_silent_when_disabled():
    out = io.StringIO()
    with progress.Progress(2, "x", stream=out, enabled=False) as p:
        p.update(2)
    assert out.getvalue() == ""


def test_run_eta_extrapolates_the_step_rate():
    eta = progress.RunEta(total_steps=100, start_step=20)
    eta.t0 -= 10.0  # as if 10 s had passed
    # 30 steps in ~10 s -> the 50 steps left take ~16.7 s
    assert eta.seconds_left(50) == pytest.approx(50 * 10.0 / 30, rel=0.05)
    assert eta.line(50).startswith("run: step 50/100 (50%), ETA 1")
    assert eta.line(20).endswith("ETA ?")
