"""Two processes on the loopback address (JAX's distributed runtime, 2 CPU devices each) train
exactly like one process with 4 devices; killing both and restarting resumes (issue 8); they
evaluate a classification run exactly like one process (issue 14)."""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from flax import traverse_util

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS_PER_EPOCH, EPOCHS = 3, 3
ARGS = [
    "--config=configs/unet.py:tiny",
    f"--config.train.epochs={EPOCHS}",
    f"--config.train.steps_per_epoch={STEPS_PER_EPOCH}",
    "--config.train.log_every_steps=1",
]


def _env(devices: int) -> dict[str, str]:
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        # As in conftest: compile fast, and the restarted processes reuse compiled programs.
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "true",
        "JAX_COMPILATION_CACHE_DIR": os.path.join(os.environ["MEDJAX_CACHE"], "jax"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_pair(workdir: str, args: list[str] = ARGS) -> list[subprocess.Popen]:
    port = _free_port()
    return [
        subprocess.Popen(
            [
                sys.executable,
                "launch.py",
                *args,
                f"--workdir={workdir}",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={pid}",
            ],
            cwd=REPO,
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in range(2)
    ]


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        errs.append(err)
    return errs


def _losses(workdir: str) -> dict[int, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def _final_params(workdir: str) -> dict[str, np.ndarray]:
    import ml_collections

    from medjax.train import checkpoint

    cfg = ml_collections.ConfigDict({"monitor": "", "mode": "max", "save_top_k": 0, "save_last": 1})
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "ckpt"), cfg, read_only=True)
    state = ckpt.restore_raw(EPOCHS * STEPS_PER_EPOCH)
    ckpt.close()
    flat = traverse_util.flatten_dict(state["params"], sep="/")
    return {k: np.asarray(v) for k, v in flat.items()}


@pytest.fixture
def reference(tmp_path) -> str:
    """One process, 4 devices: the run two processes must reproduce."""
    workdir = str(tmp_path / "one_process")
    run = subprocess.run(
        [sys.executable, "launch.py", *ARGS, f"--workdir={workdir}"],
        cwd=REPO,
        env=_env(4),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return workdir


def _assert_same_training(workdir: str, reference: str) -> None:
    ref, got = _losses(reference), _losses(workdir)
    assert sorted(got) == sorted(ref) == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    np.testing.assert_allclose(
        [got[s] for s in sorted(got)], [ref[s] for s in sorted(ref)], rtol=1e-5
    )
    ref_params, params = _final_params(reference), _final_params(workdir)
    assert params.keys() == ref_params.keys()
    for k in ref_params:
        np.testing.assert_allclose(params[k], ref_params[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_two_processes_train_like_one_and_resume_after_both_are_killed(reference, tmp_path):
    workdir = str(tmp_path / "two_processes")
    procs = _start_pair(workdir)
    ckpt = os.path.join(workdir, "ckpt")
    deadline = time.time() + 300
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if os.path.isdir(ckpt) and any(d.isdigit() for d in os.listdir(ckpt)):
            break
        time.sleep(0.1)
    assert all(p.poll() is None for p in procs), "the run ended before it could be killed"
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.communicate()
    killed_at = max(int(d) for d in os.listdir(ckpt) if d.isdigit())
    assert killed_at < EPOCHS * STEPS_PER_EPOCH
    errs = _finish(_start_pair(workdir))
    assert f"resuming {workdir} from step {killed_at}" in errs[0]
    # Same losses at every step (before the kill and after the restart) and same final weights.
    _assert_same_training(workdir, reference)
    # Evaluation is reduced exactly across processes: the same test metrics as one process.
    [ref_eval] = os.listdir(os.path.join(reference, "eval"))
    with open(os.path.join(reference, "eval", ref_eval, "metrics.json")) as f:
        ref_metrics = json.load(f)
    with open(os.path.join(workdir, "eval", ref_eval, "metrics.json")) as f:
        metrics = json.load(f)
    for k, v in ref_metrics.items():
        if isinstance(v, str):  # "split": pytest 9.2 refuses approx() of a string
            assert metrics[k] == v, k
        else:
            assert metrics[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    # Progress and summaries come from process 0 only.
    assert "training finished" in errs[0] and "training finished" not in errs[1]
    assert "epoch 1/" not in errs[1] and "resuming" not in errs[1]


def test_two_processes_evaluate_classification_like_one(tmp_path):
    """A classification run (one step) evaluated on its validation split (15 cases: two batches
    of 8) by one process (8 devices, in this process) and by two processes (2 devices each): the
    same metrics and per-case probabilities, the padded last batch included (the runner gathers
    with ``to_host``)."""
    from medjax.testing import configs
    from medjax.train import loop

    config = configs.load_config("resnet", "tiny")
    config.train.epochs, config.train.steps_per_epoch = 1, 1
    config.eval.split = "val"
    one = tmp_path / "one_process"
    loop.train_and_evaluate(config, str(one))
    ref = loop.evaluate(config, str(one))
    two = tmp_path / "two_processes"
    shutil.copytree(one, two, ignore=shutil.ignore_patterns("eval"))
    args = [
        "--config=configs/resnet.py:tiny",
        "--config.train.epochs=1",
        "--config.train.steps_per_epoch=1",
        "--config.eval.split=val",
        "--mode=eval",
    ]
    _finish(_start_pair(str(two), args))
    out = os.path.relpath(ref["dir"], one)
    with open(two / out / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["num_examples"] == ref["num_examples"] > config.eval.batch_size  # 2 batches
    for k, v in ref.items():
        if k != "dir":
            assert metrics[k] == pytest.approx(v, rel=1e-5, abs=1e-6, nan_ok=True), k
    rows = {}
    for d in (one, two):
        with open(d / out / "per_case.csv") as f:
            rows[d] = list(csv.DictReader(f))
    assert [r["id"] for r in rows[two]] == [r["id"] for r in rows[one]]
    for a, b in zip(rows[one], rows[two], strict=True):
        assert float(b["p_lesion"]) == pytest.approx(float(a["p_lesion"]), rel=1e-5, abs=1e-6)
