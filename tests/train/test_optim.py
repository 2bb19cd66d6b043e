"""Schedules against their formulas; early stopping on a scripted metric sequence; freezing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from medjax import errors
from medjax.train import hooks, optim


def _config(**schedule):
    c = common.base_config()
    c.optim.lr = 0.1
    for k, v in schedule.items():
        c.schedule[k] = v
    return c


def test_poly_schedule_matches_nnunet_formula():
    sched = optim.make_schedule(_config(name="poly", power=0.9), total_steps=100)
    for step in (0, 1, 10, 50, 99, 100):
        assert float(sched(step)) == pytest.approx(0.1 * (1 - step / 100) ** 0.9, abs=1e-7)


def test_cosine_schedule_with_warmup_matches_formula():
    sched = optim.make_schedule(_config(name="cosine", warmup_steps=10, end_factor=0.0), 110)
    assert float(sched(5)) == pytest.approx(0.05, rel=1e-6)
    for step in (10, 35, 60, 110):
        t = (step - 10) / 100
        assert float(sched(step)) == pytest.approx(0.05 * (1 + np.cos(np.pi * t)), abs=1e-7)


def test_step_schedule_and_missing_interval():
    sched = optim.make_schedule(_config(name="step", step_every_steps=10, step_factor=0.5), 100)
    assert [float(sched(s)) for s in (0, 9, 10, 25)] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    with pytest.raises(errors.ConfigError, match="step_every_steps"):
        optim.make_schedule(_config(name="step"), 100)
    with pytest.raises(errors.ConfigError, match="Registered schedules"):
        optim.make_schedule(_config(name="cosinus"), 100)


def test_early_stopping_stops_at_the_right_epoch():
    cfg = common.base_config().train.early_stopping
    cfg.monitor, cfg.mode, cfg.patience, cfg.min_delta = "val/dice", "max", 2, 0.01
    stopper = hooks.EarlyStopping(cfg)
    # Improves until epoch 3 (0.6); 0.605 is within min_delta; epoch 5 is the 2nd bad epoch.
    sequence = [0.3, 0.5, 0.6, 0.605, 0.59, 0.9]
    stops = [stopper.should_stop({"val/dice": v}) for v in sequence]
    assert stops.index(True) == 4
    cfg.mode = "min"
    stopper = hooks.EarlyStopping(cfg)
    assert [stopper.should_stop({"val/dice": v}) for v in (1.0, 0.5, 0.6, 0.7)] == [
        False,
        False,
        False,
        True,
    ]


def test_freeze_zeroes_updates_of_matching_parameters():
    params = {"block1": {"kernel": jnp.ones(3)}, "head": {"kernel": jnp.ones(2)}}
    tx = optim.freeze(optax.sgd(1.0), r"^block1/")
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(jnp.abs(updates["block1"]["kernel"]).sum()) == 0.0
    np.testing.assert_allclose(updates["head"]["kernel"], -1.0)
