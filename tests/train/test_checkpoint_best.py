"""``Checkpointer.best_step``: the step the training summary names is the one eval restores.

Real orbax checkpoints of a small pytree; the expected step is worked out by hand (a new best
only on a strict improvement, so a tie keeps the earlier step; NaN never wins). The training
summary reads ``best_step()`` itself, so a writer and a fresh reader agreeing is the whole check.
"""

import math

import ml_collections
import numpy as np
import pytest

from medjax.train import checkpoint as ckpt_lib


def _ckpt_config(monitor, mode):
    return ml_collections.ConfigDict(
        {"monitor": monitor, "mode": mode, "save_top_k": 5, "save_last": 1, "every_epochs": 1}
    )


@pytest.mark.parametrize(
    "mode, values, expected",
    [
        ("max", [0.5, 0.7, 0.6, 0.7], 20),  # 0.7 first reached at step 20, again at 40
        ("min", [0.9, 0.4, 0.4, 0.8], 20),
        ("max", [0.3, 0.3, 0.3, 0.3], 10),  # all tied: the first
        ("max", [0.2, math.nan, 0.6, 0.6], 30),  # NaN never wins
    ],
)
def test_best_step_on_ties_is_the_earliest_like_the_summary(tmp_path, mode, values, expected):
    ck = ckpt_lib.Checkpointer(str(tmp_path / "ckpt"), _ckpt_config("val/m", mode))
    steps = [10, 20, 30, 40]
    for step, value in zip(steps, values, strict=True):
        state = {"w": np.full((2,), step, np.float32)}
        ck.save(step, state, {"next_index": step}, metrics={"val/m": value})
    ck.wait()
    assert ck.best_step() == expected
    ck.close()
    # A fresh reader (what --mode=eval opens) agrees.
    reader = ckpt_lib.Checkpointer(
        str(tmp_path / "ckpt"), _ckpt_config("val/m", mode), read_only=True
    )
    assert reader.best_step() == expected
    reader.close()
