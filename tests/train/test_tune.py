"""--mode=tune: a 4-trial ASHA sweep on a local Ray, the best config file, the missing extra."""

import csv
import glob
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from configs import unet
from medjax import errors
from medjax.train import tune_results

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(*params):
    c = unet.get_config("tiny")
    c.tune.params = tuple(params)
    c.lock()
    return c


def test_row_falls_back_on_the_trials_own_record_when_ray_lost_its_results(tmp_path):
    """A trial that finished as the sweep was interrupted can come back from Ray without
    results: its row reads the trial's metrics.jsonl (hand-written here) instead."""
    import json
    import types

    c = _config()
    metric = c.tune.metric
    trial_dir = tmp_path / "trials" / "t1"
    trial_dir.mkdir(parents=True)
    recs = [
        {"step": 2, "train/loss": 1.0},
        {"step": 2, metric: 0.3},
        {"step": 2, "train/lr_epoch": 0.01},
        {"step": 4, metric: 0.5},
        {"step": 4, "train/lr_epoch": 0.01},
        {"step": 4, "train/lr_epoch": 0.01},  # the same epoch logged again after a resume
    ]
    (trial_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n{cut")
    (trial_dir / "tune_done.json").write_text("{}")
    trial = types.SimpleNamespace(trial_id="t1", status="TERMINATED", config={})
    row = tune_results.row(trial, None, [], c, str(tmp_path))
    assert row["status"] == "completed" and row["epochs"] == 2
    assert row[f"best {metric}"] == pytest.approx({"max": 0.5, "min": 0.3}[c.tune.mode])


def test_best_config_file_round_trips(tmp_path):
    c = _config("optim.lr=loguniform(1e-4, 1e-2)", "model.kwargs.features=choice(4, 8)")
    values = {"optim.lr": 0.00123, "model.kwargs.features": 8}
    row = {"trial": "abc_00001", "epochs": 2, "status": "completed", "best val/dice": 0.5}
    path = str(tmp_path / "best_config.py")
    tune_results.write_best_config(path, c, values, row, "val/dice")
    spec = importlib.util.spec_from_file_location("best_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    got = module.get_config()
    expected = c.copy_and_resolve_references()
    expected.optim.lr, expected.model.kwargs.features = 0.00123, 8
    assert got.to_dict() == expected.to_dict()
    assert got.data.patch_size == (32, 32) and isinstance(got.augment, tuple | list)
    with pytest.raises(errors.ConfigError):
        module.get_config("tiny")


# ---------------------------------------------------------------------------------------------
# launch.py --mode=tune.
# ---------------------------------------------------------------------------------------------


def _env():
    cache = os.environ["MEDJAX_CACHE"]
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "",
        # The trials (Ray workers) inherit these: fast compiles, shared across trials and runs.
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
        "JAX_COMPILATION_CACHE_DIR": os.path.join(cache, "jax"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
    }


def _launch(*args, prefix=()):
    return subprocess.run(
        [sys.executable, *prefix, os.path.join(REPO, "launch.py"), *args],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )


# A 4-trial space with a value that cannot learn (lr=0): ASHA stops it at a rung (epoch 1 or 2)
# where its validation loss is worse than the median of the trials that got there before it.
SWEEP = (
    "--config=configs/unet.py:tiny",
    "--mode=tune",
    "--config.tune.params=('optim.lr=grid(0.01, 0.0)',)",
    "--config.tune.num_samples=2",
    "--config.tune.metric=val/loss",
    "--config.tune.mode=min",
    "--config.tune.max_concurrent=1",  # trials in order: lr 0.01, 0, 0.01, 0
    "--config.tune.resources_per_trial.cpus=2",
    "--config.schedule.name=constant",
    "--config.schedule.warmup_steps=0",
    "--config.train.epochs=3",
    "--config.train.steps_per_epoch=2",
    "--config.log.num_images=0",
)


def test_interrupted_sweep_resumes_prunes_and_its_best_config_trains(tmp_path):
    sweep = str(tmp_path / "sweep")
    args = [sys.executable, os.path.join(REPO, "launch.py"), *SWEEP, f"--workdir={sweep}"]
    # Ctrl-C once the first trial has checkpointed its first epoch (step 2), mid-trial.
    with open(tmp_path / "first.err", "w") as err:
        p = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + 300
        while not glob.glob(os.path.join(sweep, "trials", "*", "ckpt", "2")):
            assert p.poll() is None and time.time() < deadline, (tmp_path / "first.err").read_text()
            time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=120) == 130  # the exit status of an interrupted command
    assert "run the same command again to resume" in (tmp_path / "first.err").read_text()

    # The same command restores Ray's experiment; the cut trial resumes from its checkpoint.
    r = _launch(*SWEEP, f"--workdir={sweep}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming the sweep" in r.stderr
    with open(os.path.join(sweep, "trials.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4, rows
    logs = [open(os.path.join(row["workdir"], "train.log")).read() for row in rows]
    assert re.search(r"resuming \S+ from step [1-9]", logs[0]), logs[0][-2000:]
    # Every lr=0 trial is stopped at a rung: its loss is worse than the median of the trials
    # that reached the rung before it. (The second lr=0.01 trial may be stopped too, at the
    # epoch-2 rung, when its loss there is a hair worse than the first one's.)
    stalled = [r for r in rows if float(r["optim.lr"]) == 0.0]
    assert len(stalled) == 2, rows
    assert all(r["status"] == "pruned" and int(r["epochs"]) < 3 for r in stalled), rows
    good = [r for r in rows if float(r["optim.lr"]) == 0.01]
    assert good[0]["status"] == "completed" and good[0]["epochs"] == "3", rows
    assert float(good[0]["best val/loss"]) < min(
        float(r["best val/loss"]) for r in rows if float(r["optim.lr"]) == 0.0
    )
    for row in rows:  # each trial trained in its own workdir, with its own TensorBoard logs
        files = os.listdir(row["workdir"])
        assert "metrics.jsonl" in files and any(f.startswith("events.out") for f in files)
    assert "trial" in r.stdout and "pruned" in r.stdout  # the printed table

    best = os.path.join(sweep, "best_config.py")
    run = str(tmp_path / "best")
    t = _launch(
        f"--config={best}",
        f"--workdir={run}",
        "--config.train.epochs=1",
        "--config.train.steps_per_epoch=1",
    )
    assert t.returncode == 0, t.stderr[-3000:]
    with open(os.path.join(run, "config.json")) as f:
        trained = f.read()
    assert '"lr": 0.01' in trained and os.path.isdir(os.path.join(run, "ckpt"))


def test_without_ray_the_error_names_the_extra(tmp_path):
    # A None entry in sys.modules makes `import ray` raise ImportError, as if not installed.
    wrapper = tmp_path / "no_ray.py"
    wrapper.write_text(
        "import os, runpy, sys\n"
        "sys.modules['ray'] = None\n"
        "sys.argv = sys.argv[1:]\n"
        "sys.path[0] = os.path.dirname(sys.argv[0])  # as if launch.py were run itself\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    r = _launch(
        "--config=configs/unet.py:tiny",
        "--mode=tune",
        "--config.tune.params=('optim.lr=choice(0.1, 0.01)',)",
        f"--workdir={tmp_path}/sweep",
        prefix=(str(wrapper),),
    )
    assert r.returncode == 2, r.stderr[-3000:]
    assert "medjax error:" in r.stderr and "pip install 'medjax[tune]'" in r.stderr
