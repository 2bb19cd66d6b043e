"""medjax.data.workers: a spawn worker goes when its parent is SIGKILLed (no orphans).

Grain's loader workers get the same ``exit_with_parent`` through ``mp_prefetch``; that path is
checked end to end by ``tests/test_kill_resume.py`` (launch.py with 2 workers, SIGKILL).
"""

import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The parent: a pool of one worker, the worker's pid on stdout, then SIGKILL of itself.
_PARENT = """
import os, signal, sys
from medjax.data import workers
pool = workers.process_pool(1)
print(pool.submit(os.getpid).result(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


def test_pool_worker_exits_when_its_parent_is_killed():
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT],
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        stdout=subprocess.PIPE,
        text=True,
    )
    # One line only: an orphan would hold the pipe open, so never read to its end.
    worker = int(parent.stdout.readline())
    assert parent.wait(timeout=120) == -signal.SIGKILL
    deadline = time.time() + 60  # generous for a busy machine: it goes within a second
    while time.time() < deadline and _alive(worker):
        time.sleep(0.1)
    orphan = _alive(worker)
    if orphan:  # never leave it behind, even when the test fails
        os.kill(worker, signal.SIGKILL)
    parent.stdout.close()
    assert worker != parent.pid and not orphan, f"pool worker {worker} outlived its parent"
