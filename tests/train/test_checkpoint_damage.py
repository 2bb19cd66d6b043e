"""Damaged checkpoints never make a workdir unusable: the newest intact one is used, with a warning.

Real orbax checkpoints of a tiny run (steps 4 and 8), copied and damaged the ways a disk, a
killed process or a careless user damages them.
"""

import glob
import os
import shutil

import numpy as np
import pytest

from medjax import errors
from medjax.testing import configs
from medjax.train import checkpoint as ckpt_lib
from medjax.train import loop


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-epoch run (checkpoints at steps 4 and 8) and the model's restore target."""
    workdir = str(tmp_path_factory.mktemp("run"))
    loop.train_and_evaluate(configs.tiny_unet(), workdir)
    run = loop._Run(configs.tiny_unet(), workdir, for_training=False)
    run.ckpt.close()
    return workdir, run.abstract_state


def _copy(trained, tmp_path):
    dst = str(tmp_path / "run")
    shutil.copytree(trained[0], dst)
    return dst, os.path.join(dst, "ckpt")


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _truncate_arrays(step_dir):
    """Cuts every array data file of the step in half (as a full disk or a crash would)."""
    chunks = glob.glob(os.path.join(step_dir, "state", "d", "*"))
    chunks += glob.glob(os.path.join(step_dir, "state", "ocdbt.process_*", "d", "*"))
    assert chunks
    for f in chunks:
        _truncate(f)


def _garble(path):
    with open(path, "w") as f:
        f.write('{"step": 8, "trunc')


DAMAGES = {
    "truncated_array_file": lambda d: _truncate_arrays(d),
    "garbled_state_metadata": lambda d: _garble(os.path.join(d, "state", "_METADATA")),
    "garbled_iterator_state": lambda d: _garble(os.path.join(d, "data", "metadata")),
    "garbled_metrics": lambda d: _garble(os.path.join(d, "metrics", "metrics")),
    "deleted_state_dir": lambda d: shutil.rmtree(os.path.join(d, "state")),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_latest_falls_back_to_previous_step_with_a_warning(
    trained, tmp_path, damage, capfd
):
    _, ckpt = _copy(trained, tmp_path)
    DAMAGES[damage](os.path.join(ckpt, "8"))
    ck = ckpt_lib.Checkpointer(ckpt, configs.tiny_unet().ckpt, read_only=True)
    step, state, data = ck.restore_intact(trained[1])
    ck.close()
    assert step == 4 and int(np.asarray(state.step)) == 4
    assert data == {"next_index": 4}  # the iterator position saved with step 4 (4 batches)
    err = capfd.readouterr().err
    assert "checkpoint step 8" in err and "damaged" in err
    # Read only (eval, init_from): nothing in the workdir is moved or deleted.
    assert os.path.isdir(os.path.join(ckpt, "8")) or damage == "deleted_state_dir"


def test_resume_continues_from_the_newest_intact_checkpoint(trained, tmp_path, capfd):
    workdir, ckpt = _copy(trained, tmp_path)
    _truncate_arrays(os.path.join(ckpt, "8"))
    summary = loop.train_and_evaluate(configs.tiny_unet(train__epochs=3), workdir)
    err = capfd.readouterr().err
    assert "checkpoint step 8" in err and "cannot be read" in err  # names step and array
    assert "from step 4" in err
    assert summary["final_step"] == 12
    # The damaged step was moved aside (kept for inspection) and saved again by the new run.
    assert glob.glob(os.path.join(workdir, "ckpt_damaged", "8-*", "state"))
    assert os.path.isdir(os.path.join(ckpt, "8")) and os.path.isdir(os.path.join(ckpt, "12"))


def test_eval_uses_the_best_intact_checkpoint(trained, tmp_path):
    _, ckpt = _copy(trained, tmp_path)
    ck = ckpt_lib.Checkpointer(ckpt, configs.tiny_unet().ckpt, read_only=True)
    best = ck.best_step()
    ck.close()
    _garble(os.path.join(ckpt, str(best), "state", "_METADATA"))
    ck = ckpt_lib.Checkpointer(ckpt, configs.tiny_unet().ckpt, read_only=True)
    step, _, _ = ck.restore_intact(trained[1], prefer="best")
    ck.close()
    assert step == ({4, 8} - {best}).pop()


def test_all_damaged_is_one_clear_error(trained, tmp_path):
    _, ckpt = _copy(trained, tmp_path)
    _truncate_arrays(os.path.join(ckpt, "8"))
    _garble(os.path.join(ckpt, "4", "state", "_METADATA"))
    ck = ckpt_lib.Checkpointer(ckpt, configs.tiny_unet().ckpt)
    with pytest.raises(errors.CheckpointError) as e:
        ck.restore_intact(trained[1])
    msg = str(e.value)
    assert "\n" not in msg and "No intact checkpoint" in msg
    assert "step 4 (state/_METADATA" in msg and "step 8 (state array" in msg
    # Nothing was moved: the next run says the same instead of silently starting over.
    assert os.path.isdir(os.path.join(ckpt, "4")) and os.path.isdir(os.path.join(ckpt, "8"))
    # Every step damaged in its metadata: the folder cannot even be opened for a fresh start.
    _garble(os.path.join(ckpt, "8", "state", "_METADATA"))
    with pytest.raises(errors.CheckpointError, match="No intact checkpoint"):
        ckpt_lib.Checkpointer(ckpt, configs.tiny_unet().ckpt)


def test_unfinished_save_is_ignored_and_cleaned_when_training(trained, tmp_path):
    """A kill during the save of step 12 leaves only its tmp folder: steps 4 and 8 stay whole."""
    _, ckpt = _copy(trained, tmp_path)
    tmp = os.path.join(ckpt, "12.orbax-checkpoint-tmp-1764000000000000")
    shutil.copytree(os.path.join(ckpt, "8"), tmp)
    os.remove(os.path.join(tmp, "commit_success.txt"))
    _truncate_arrays(tmp)
    reader = ckpt_lib.Checkpointer(ckpt, configs.tiny_unet().ckpt, read_only=True)
    assert reader.all_steps() == [4, 8]
    reader.close()
    assert os.path.isdir(tmp)  # a reader never deletes
    writer = ckpt_lib.Checkpointer(ckpt, configs.tiny_unet().ckpt)
    step, _, _ = writer.restore_intact(trained[1])
    writer.close()
    assert step == 8 and writer.all_steps() == [4, 8]
    assert not os.path.exists(tmp)


def test_a_different_model_is_not_mistaken_for_damage(trained, tmp_path):
    workdir, ckpt = _copy(trained, tmp_path)
    run = loop._Run(configs.tiny_unet(model__kwargs__features=8), workdir, for_training=False)
    with pytest.raises(errors.CheckpointError, match="does not match this model") as e:
        run.ckpt.restore_intact(run.abstract_state)
    run.ckpt.close()
    assert "BatchNorm_0/bias: saved (4,), model (8,)" in str(e.value)
    assert sorted(os.listdir(ckpt)) == ["4", "8"]
