"""Faults speak one line: ``medjax error: ...`` naming the key or path, exit code 2, no traceback.

Each case runs ``python launch.py`` as a user would (all at once, to share the start-up time).
"""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cases(tmp):
    open(os.path.join(tmp, "a_file"), "w").close()
    return {
        "misspelt_key": ["--config.train.epoch=3", f"--workdir={tmp}/w1"],
        "batch_size_0": ["--config.train.batch_size=0", f"--workdir={tmp}/w2"],
        "eval_missing_workdir": ["--mode=eval", f"--workdir={tmp}/typo"],
        "workdir_under_a_file": [f"--workdir={tmp}/a_file/run"],
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("launch"))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    procs = {
        name: subprocess.Popen(
            [sys.executable, os.path.join(REPO, "launch.py"), "--config=configs/unet.py:tiny", *a],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, a in _cases(tmp).items()
    }
    out = {}
    for name, p in procs.items():
        _, err = p.communicate(timeout=300)
        out[name] = (p.returncode, err)
    return tmp, out


def _one_line(result):
    rc, err = result
    assert rc == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    lines = [x for x in err.strip().splitlines() if x.startswith("medjax error:")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def test_misspelt_config_key_names_the_key_and_the_fix(results):
    line = _one_line(results[1]["misspelt_key"])
    assert "--config.train.epoch" in line and "'epochs'" in line and "configs/common.py" in line
    assert len(results[1]["misspelt_key"][1].strip().splitlines()) == 1


def test_batch_size_zero_names_the_key(results):
    line = _one_line(results[1]["batch_size_0"])
    assert "train.batch_size=0" in line and "positive integer" in line


def test_eval_on_a_mistyped_workdir_does_not_create_it(results):
    tmp, out = results
    line = _one_line(out["eval_missing_workdir"])
    assert f"{tmp}/typo" in line
    assert not os.path.exists(os.path.join(tmp, "typo"))


def test_unwritable_workdir_names_the_path(results):
    # A path through a file fails for root too (chmod would not stop root, who runs the tests).
    tmp, out = results
    line = _one_line(out["workdir_under_a_file"])
    assert f"{tmp}/a_file/run" in line and "not a folder" in line
