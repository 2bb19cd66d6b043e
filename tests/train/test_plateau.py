"""Reduce-on-plateau: PyTorch's reduction epochs on scripted metrics, the scale in the jitted
update as data, and a short run that resumes mid-plateau and logs the effective rate."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from medjax import errors
from medjax.testing import configs
from medjax.train import checkpoint as ckpt_lib
from medjax.train import hooks, loop, optim


class TorchReduceLROnPlateau:
    """An independent reference: PyTorch 2.x ``ReduceLROnPlateau.step`` transcribed for one
    parameter group and ``threshold_mode="abs"`` (torch is not installed here), in float64."""

    def __init__(self, lr, mode, factor, patience, threshold, cooldown, min_lr, eps=1e-8):
        self.lr, self.mode, self.factor, self.patience = lr, mode, factor, patience
        self.threshold, self.cooldown, self.min_lr, self.eps = threshold, cooldown, min_lr, eps
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def is_better(self, a, best):
        if self.mode == "min":
            return a < best - self.threshold
        return a > best + self.threshold

    def step(self, metrics):
        current = float(metrics)
        if self.is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            new_lr = max(self.lr * self.factor, self.min_lr)
            if self.lr - new_lr > self.eps:
                self.lr = new_lr
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0


def _plateau_cfg(**kw):
    cfg = common.base_config().schedule.plateau
    for k, v in kw.items():
        cfg[k] = v
    return cfg


def _run_sequence(values, cfg, base_lr):
    tracker = optim.scale_by_plateau(cfg.mode).init(None)
    lrs = []
    for v in values:
        tracker = optim.update_plateau(tracker, v, cfg, base_lr)
        lrs.append(base_lr * float(tracker.scale))
    return lrs


def test_min_mode_reduces_at_pytorch_epochs_with_cooldown_and_floor():
    cfg = _plateau_cfg(mode="min", factor=0.5, patience=2, min_delta=0.1, cooldown=1, min_lr=0.02)
    values = [1.0, 0.95, 0.85, 0.80, 0.80, 0.79, 0.78, 0.77, 0.76, 0.76]
    values += [0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]
    lrs = _run_sequence(values, cfg, base_lr=0.1)
    # By hand (epochs 1-based): best 1.0 (e1), 0.85 (e3: 0.85 < 1.0 - 0.1); e4-e6 are bad,
    # the 3rd bad one (> patience 2) halves the rate at e6; e7 is the cooldown; e8-e10 bad ->
    # e10; e11 improves (0.5) during the cooldown; e12-e14 bad -> e14 (0.0125 floored at
    # min_lr 0.02); e15 cooldown; e16-e18 bad -> e18 would reduce but the floor holds it.
    expected = [0.1] * 5 + [0.05] * 4 + [0.025] * 4 + [0.02] * 5
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)
    torch = TorchReduceLROnPlateau(0.1, "min", 0.5, 2, 0.1, 1, 0.02)
    reference = []
    for v in values:
        torch.step(v)
        reference.append(torch.lr)
    np.testing.assert_allclose(lrs, reference, rtol=1e-6)


def test_max_mode_patience_zero_and_nan_is_not_an_improvement():
    cfg = _plateau_cfg(mode="max", factor=0.1, patience=0, min_delta=0.0, cooldown=0)
    values = [0.5, 0.6, 0.6, 0.7, 0.65, 0.8, float("nan"), 0.9]
    lrs = _run_sequence(values, cfg, base_lr=1.0)
    # e3 equals the best (not an improvement) and e5 is worse: with patience 0 each reduces;
    # e7 (NaN) too; e8 improves.
    np.testing.assert_allclose(lrs, [1, 1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-5)
    torch = TorchReduceLROnPlateau(1.0, "max", 0.1, 0, 0.0, 0, 0.0)
    for v, lr in zip(values, lrs, strict=True):
        torch.step(v)
        assert lr == pytest.approx(torch.lr, rel=1e-5)


def test_scale_multiplies_updates_as_data_without_recompiling():
    c = common.base_config()
    c.optim.name, c.optim.lr, c.optim.momentum = "sgd", 0.1, 0.0
    c.schedule.name, c.schedule.warmup_steps = "plateau", 4
    tx, schedule = optim.make_optimizer(c, total_steps=100)
    params = {"w": jnp.array([1.0, -2.0])}
    grads = {"w": jnp.array([0.5, 3.0])}
    opt_state = tx.init(params)
    assert float(optim.lr_scale(opt_state)) == 1.0
    update = jax.jit(lambda g, s: tx.update(g, s, params)[0])
    np.testing.assert_allclose(update(grads, opt_state)["w"], [0.0, 0.0])  # warmup step 0
    for _ in range(4):  # past the warmup: the rate is 0.1
        _, opt_state = tx.update(grads, opt_state, params)
    np.testing.assert_allclose(update(grads, opt_state)["w"], [-0.05, -0.3], rtol=1e-6)
    tracker = optim.plateau_tracker(opt_state)._replace(scale=jnp.float32(0.25))
    scaled = optim.replace_plateau_tracker(opt_state, tracker)
    np.testing.assert_allclose(update(grads, scaled)["w"], [-0.0125, -0.075], rtol=1e-6)
    assert update._cache_size() == 1  # a new scale is a new value, not a new program
    assert optim.effective_lr(schedule, scaled, 4) == pytest.approx(0.025)
    assert optim.effective_lr(schedule, scaled, 2) == pytest.approx(0.0125)  # warmup x scale
    # Other schedules have no tracker: scale 1.
    c.schedule.name = "constant"
    tx, _ = optim.make_optimizer(c, 100)
    assert optim.plateau_tracker(tx.init(params)) is None


def test_bad_plateau_config_names_the_key():
    c = common.base_config()
    c.schedule.name = "plateau"
    c.schedule.plateau.factor = 1.0
    with pytest.raises(errors.ConfigError, match=r"schedule\.plateau\.factor"):
        optim.make_optimizer(c, 10)
    c.schedule.plateau.factor, c.schedule.plateau.mode = 0.5, "down"
    with pytest.raises(errors.ConfigError, match=r"schedule\.plateau\.mode"):
        optim.make_optimizer(c, 10)
    c.schedule.plateau.mode = "min"
    with pytest.raises(errors.ConfigError, match=r"schedule\.plateau\.monitor.*val/dice"):
        hooks.Plateau(c)(None, {"val/dice": 0.5})


def _plateau_run_config(epochs):
    c = configs.tiny_unet()
    c.train.epochs = epochs
    c.train.steps_per_epoch = 1
    c.log.num_images = 0
    c.schedule.name = "plateau"
    # min_delta far above any loss change: only the first validation improves, so the
    # reductions do not depend on the (float) losses. patience 1: e1 best, e2 bad (1),
    # e3 bad (2 > 1) -> halve, e4 bad (1).
    c.schedule.plateau.update(
        monitor="val/loss", mode="min", factor=0.5, patience=1, min_delta=100.0, cooldown=0
    )
    return c


def _logged(workdir, key):
    lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    return {x["step"]: x[key] for x in lines if key in x}


def test_run_resumed_mid_plateau_continues_identically(tmp_path):
    workdir = str(tmp_path)
    loop.train_and_evaluate(_plateau_run_config(2), workdir)  # stops with num_bad = 1
    config = _plateau_run_config(4)
    loop.train_and_evaluate(config, workdir)  # resumes at step 2
    lr = config.optim.lr
    # The rate in force after each epoch's validation (e3 halves it only if the resumed
    # tracker still held num_bad = 1 and e1's best) and in each step (epoch e's single step
    # runs with the scale left by validation e-1).
    expected_epoch = {1: lr, 2: lr, 3: lr / 2, 4: lr / 2}
    expected_step = {1: lr, 2: lr, 3: lr, 4: lr / 2}
    lr_epoch, train_lr = _logged(workdir, "train/lr_epoch"), _logged(workdir, "train/lr")
    assert lr_epoch.keys() == expected_epoch.keys()
    for step, value in expected_epoch.items():
        assert lr_epoch[step] == pytest.approx(value, rel=1e-6), step
        assert train_lr[step] == pytest.approx(expected_step[step], rel=1e-6), step
    # The checkpoint carries the tracker: e4 was the 1st bad validation since the reduction.
    ck = ckpt_lib.Checkpointer(os.path.join(workdir, "ckpt"), config.ckpt, read_only=True)
    saved = ck.restore_raw(4)["opt_state"]  # raw: (optimiser state, plateau fields)
    ck.close()
    tracker = optim.PlateauState(**saved[1])
    val_loss = _logged(workdir, "val/loss")
    assert float(tracker.scale) == 0.5 and int(tracker.num_bad) == 1
    assert int(tracker.cooldown) == 0
    assert float(tracker.best) == pytest.approx(val_loss[1], rel=1e-6)  # e1's, in float32
