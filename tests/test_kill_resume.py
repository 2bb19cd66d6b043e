"""SIGKILL in mid-training, then the same command again: it resumes from the last checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sigkill_then_rerun_resumes_and_finishes(tmp_path):
    workdir = str(tmp_path / "run")
    cmd = [
        sys.executable,
        os.path.join(REPO, "launch.py"),
        "--config=configs/unet.py:tiny",
        "--config.train.epochs=6",
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
    proc.send_signal(signal.SIGKILL)
    proc.wait()
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
