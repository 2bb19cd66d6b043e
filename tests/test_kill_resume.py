"""SIGKILL in mid-training, then the same command again: it resumes from the last checkpoint.

The run loads with 2 Grain worker processes: the kill must take them down too (no orphans), and
the resume restores the loader's state into fresh workers.
"""

import json
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _children(pid):
    """Pids of the live (not zombie) child processes of ``pid``, from /proc."""
    out = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
        except OSError:  # it exited meanwhile
            continue
        if int(ppid) == pid and state != "Z":
            out.append(int(entry))
    return out


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigkill_then_rerun_resumes_and_finishes(tmp_path):
    workdir = str(tmp_path / "run")
    cmd = [
        sys.executable,
        os.path.join(REPO, "launch.py"),
        "--config=configs/unet.py:tiny",
        "--config.train.epochs=6",
        "--config.data.num_workers=2",
        f"--workdir={workdir}",
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = os.path.join(workdir, "ckpt")
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        steps = [d for d in os.listdir(ckpt) if d.isdigit()] if os.path.isdir(ckpt) else []
        if steps:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before a checkpoint could be interrupted"
    children = _children(proc.pid)  # 2 loader workers (and multiprocessing's resource tracker)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 60  # generous for a busy machine: they go within a second
    while time.time() < deadline and any(map(_alive, children)):
        time.sleep(0.2)
    orphans = [c for c in children if _alive(c)]
    for c in orphans:  # never leave them behind, even when the test fails
        os.kill(c, signal.SIGKILL)
    assert len(children) >= 2, f"expected the 2 loader workers, found children {children}"
    assert not orphans, f"processes {orphans} outlived the killed trainer"
    killed_at = max(int(d) for d in os.listdir(ckpt) if d.isdigit())
    assert killed_at < 24
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming" in rerun.stderr
    resumed_from = int(rerun.stderr.split("from step ")[1].split()[0])
    assert resumed_from >= killed_at
    steps = [
        json.loads(x)["step"]
        for x in open(os.path.join(workdir, "metrics.jsonl"))
        if "train/loss" in x
    ]
    assert steps[-1] == 24  # 6 epochs x 4 steps: finished where an uninterrupted run would
