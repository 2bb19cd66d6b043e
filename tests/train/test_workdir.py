"""One run per workdir (a lock naming its holder) and resumes only with the same config."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from medjax import errors
from medjax.testing import configs
from medjax.train import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}


def test_second_run_into_a_locked_workdir_stops_with_one_line_naming_the_holder(tmp_path):
    workdir = str(tmp_path / "run")
    workdir_lib.lock(workdir)
    try:
        r = subprocess.run(
            [
                sys.executable,
                os.path.join(REPO, "launch.py"),
                "--config=configs/unet.py:tiny",
                f"--workdir={workdir}",
            ],
            cwd=REPO,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        workdir_lib.release(workdir)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medjax error:"), r.stderr[-2000:]
    assert f"pid {os.getpid()}" in lines[0] and f"host {socket.gethostname()}" in lines[0]
    assert "Traceback" not in r.stderr
    # The refused run wrote nothing there (no config.json, checkpoints or logs).
    assert sorted(os.listdir(workdir)) == [workdir_lib.LOCK_FILE]


def test_lock_of_a_killed_run_is_free_again(tmp_path):
    workdir = str(tmp_path / "run")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            # Another run's lock, as workdir.lock takes it (stdlib only: starts fast).
            "import fcntl, json, os, sys, time; os.makedirs(sys.argv[1]); "
            "f = open(os.path.join(sys.argv[1], 'run.lock'), 'a+'); "
            "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); "
            "json.dump({'host': 'h', 'pid': os.getpid(), 'since': 's'}, f); f.flush(); "
            "print('locked', flush=True); time.sleep(120)",
            workdir,
        ],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(workdir_lib.WorkdirBusyError, match=f"pid {holder.pid}"):
        workdir_lib.lock(workdir)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    workdir_lib.lock(workdir)  # the OS dropped the dead process's lock
    with open(os.path.join(workdir, workdir_lib.LOCK_FILE)) as f:
        assert json.load(f)["pid"] == os.getpid()
    workdir_lib.lock(workdir)  # re-entrant in the holding process
    workdir_lib.release(workdir)


def test_resume_with_another_loss_or_optimiser_is_refused_naming_the_keys(tmp_path):
    workdir = str(tmp_path)
    old = configs.tiny_unet()
    workdir_lib.check_and_save_config(old, workdir, resuming=False)
    new = configs.tiny_unet(optim__lr=0.01, loss__name="dice")
    with pytest.raises(errors.ConfigError) as e:
        workdir_lib.check_and_save_config(new, workdir, resuming=True)
    msg = str(e.value)
    assert "loss.name: 'dice_ce' -> 'dice'" in msg and "optim.lr: 0.003 -> 0.01" in msg
    assert "train.allow_config_change=True" in msg and "\n" not in msg
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["optim"]["lr"] == 0.003  # not overwritten by the refused run
    # Keys that may change on resume: the run's length, logging, eval.
    longer = configs.tiny_unet(train__epochs=9, log__num_images=0, eval__split="val")
    workdir_lib.check_and_save_config(longer, workdir, resuming=True)
    # The override continues, warning with the same list, and records the new config.
    new.train.allow_config_change = True
    workdir_lib.check_and_save_config(new, workdir, resuming=True)
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["optim"]["lr"] == 0.01
    # Without a checkpoint there is nothing to resume: any config starts afresh.
    workdir_lib.check_and_save_config(old, workdir, resuming=False)


def test_a_fresh_run_refused_by_its_config_leaves_no_workdir(tmp_path):
    from medjax.train import loop

    config = configs.tiny_unet()
    config.task = "no_such_task"
    workdir = tmp_path / "new"
    with pytest.raises(errors.ConfigError, match="no_such_task"):
        loop.train_and_evaluate(config, str(workdir))
    assert not workdir.exists()  # not a folder holding only run.lock
    # An existing folder with files of its own is never removed.
    (workdir / "notes").mkdir(parents=True)
    (workdir / "notes" / "mine.txt").write_text("keep")
    with pytest.raises(errors.ConfigError):
        loop.train_and_evaluate(config, str(workdir))
    assert (workdir / "notes" / "mine.txt").read_text() == "keep"
