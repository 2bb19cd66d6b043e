"""``init_from`` with ``init_params_only=False`` (issue 15 item 4): the whole state comes along
(the optimiser moments equal the source checkpoint's), but the step restarts at 0, so the new
run's schedule runs from its start and every epoch moves the weights."""

import json
import os

import jax
import numpy as np
from flax import traverse_util

from medjax.testing import configs
from medjax.train import checkpoint as ckpt_lib
from medjax.train import loop


def _config(**overrides):
    """Tiny U-Net, 2 epochs of 4 steps, a cosine decay that reaches 0 at the last step."""
    c = configs.tiny_unet(**overrides)
    c.schedule.name, c.schedule.warmup_steps = "cosine", 0
    return c


def _raw(workdir, step):
    ck = ckpt_lib.Checkpointer(os.path.join(workdir, "ckpt"), _config().ckpt, read_only=True)
    state = ck.restore_raw(step)
    ck.close()
    return state


def _flat(tree):
    return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def test_continued_run_restarts_its_schedule_and_moves_the_weights(tmp_path):
    source = str(tmp_path / "source")
    loop.train_and_evaluate(_config(), source)
    src = _raw(source, 8)
    assert src["step"] == 8  # where the source's schedule reaches 0

    config = _config(init_from=os.path.join(source, "ckpt", "8"), init_params_only=False)
    # At the start: the source's parameters and Adam moments, the step at 0.
    run = loop._Run(config, str(tmp_path / "probe"), for_training=True)
    start = loop._init_from(run, run.fresh_state(), config.init_from, False)
    run.ckpt.close()
    assert int(jax.device_get(start.step)) == 0
    params = _flat(start.params)
    for k, v in _flat(src["params"]).items():
        np.testing.assert_array_equal(params[k], v, err_msg=k)
    adam = start.opt_state[0]  # optax.adam = chain(scale_by_adam, scale_by_learning_rate)
    src_adam = src["opt_state"][0] if isinstance(src["opt_state"], list) else src["opt_state"]["0"]
    for name in ("mu", "nu"):
        got, want = _flat(getattr(adam, name)), _flat(src_adam[name])
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{name}/{k}")

    continued = str(tmp_path / "continued")
    loop.train_and_evaluate(config, continued)
    rows = [json.loads(x) for x in open(os.path.join(continued, "metrics.jsonl"))]
    train = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6, 8]
    assert all(r["train/lr"] > 0 and r["train/update_norm"] > 0 for r in train)
    # Every epoch changes the weights: source -> epoch 1 -> epoch 2.
    epochs = [src["params"], _raw(continued, 4)["params"], _raw(continued, 8)["params"]]
    for a, b in zip(epochs[:-1], epochs[1:], strict=True):
        pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
        assert max(float(np.max(np.abs(x - y))) for x, y in pairs) > 1e-6
