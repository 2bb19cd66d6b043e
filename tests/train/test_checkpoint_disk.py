"""A full disk during a save: one CheckpointError naming the folder; the last checkpoint stays.

A real full disk (a 256 KiB tmpfs), not a simulated one: the save of step 2 runs out of space
in TensorStore's writer thread. With ``save_last=1`` orbax would delete step 1 once step 2 is
finalised: it must not, since step 2 never is.
"""

import os
import subprocess

import ml_collections
import numpy as np
import pytest

from medjax import errors
from medjax.train import checkpoint as ckpt_lib


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = str(tmp_path / "disk")
    os.makedirs(mnt)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mnt], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {r.stderr.decode()[:200]}")
    yield mnt
    subprocess.run(["umount", "-l", mnt], check=False)


def test_disk_full_during_save_keeps_the_previous_checkpoint(tiny_disk):
    cfg = ml_collections.ConfigDict(
        {"monitor": "val/m", "mode": "max", "save_top_k": 0, "save_last": 1}
    )
    ckpt = os.path.join(tiny_disk, "ckpt")
    ck = ckpt_lib.Checkpointer(ckpt, cfg)
    small = {"w": np.arange(64, dtype=np.float32)}
    ck.save(1, small, {"next_index": 1}, metrics={"val/m": 0.5})
    ck.wait()
    big = {"w": np.random.default_rng(0).random(200_000).astype(np.float32)}  # 800 KB
    with pytest.raises(errors.CheckpointError) as e:
        ck.save(2, big, {"next_index": 2}, metrics={"val/m": 0.9})
        ck.wait()
    msg = str(e.value)
    assert f"{ckpt}/2" in msg and "disk is full" in msg and "\n" not in msg
    ck._manager.close()
    # Step 1 is whole and restorable by a new run; the unfinished step 2 is not a checkpoint.
    reader = ckpt_lib.Checkpointer(ckpt, cfg, read_only=True)
    assert reader.all_steps() == [1]
    state, data = reader.restore(1, {"w": np.zeros(64, np.float32)})
    reader.close()
    np.testing.assert_array_equal(state["w"], small["w"])
    assert data == {"next_index": 1}
