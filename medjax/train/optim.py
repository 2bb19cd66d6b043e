"""Optimisers and learning-rate schedules from the config, both by registry name.

Also the reduce-on-plateau rate (``schedule.name="plateau"``): a scale on every update, kept
with its tracker in the optimiser state (``PlateauState``) and stepped by the loop after each
validation through ``update_plateau``.
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from medjax import errors, registry


@registry.register("schedules.constant")
def get_constant(*, lr: float, total_steps: int, cfg: ml_collections.ConfigDict) -> optax.Schedule:
    """A constant rate (after an optional linear warmup)."""
    del total_steps
    return _with_warmup(optax.constant_schedule(lr), lr, cfg.warmup_steps)


@registry.register("schedules.cosine")
def get_cosine(*, lr: float, total_steps: int, cfg: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup to ``lr``, then cosine decay to ``lr * end_factor`` at ``total_steps``."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if cfg.warmup_steps else lr,
        peak_value=lr,
        warmup_steps=cfg.warmup_steps,
        decay_steps=max(total_steps, cfg.warmup_steps + 1),
        end_value=lr * cfg.end_factor,
    )


@registry.register("schedules.poly")
def get_poly(*, lr: float, total_steps: int, cfg: ml_collections.ConfigDict) -> optax.Schedule:
    """nnU-Net's polynomial decay: ``lr * (1 - step / total_steps) ** power``."""
    decay = optax.polynomial_schedule(
        init_value=lr,
        end_value=0.0,
        power=cfg.power,
        transition_steps=max(total_steps - cfg.warmup_steps, 1),
    )
    return _with_warmup(decay, lr, cfg.warmup_steps)


@registry.register("schedules.step")
def get_step(*, lr: float, total_steps: int, cfg: ml_collections.ConfigDict) -> optax.Schedule:
    """Multiply by ``step_factor`` every ``step_every_steps`` steps."""
    del total_steps
    every = cfg.step_every_steps
    if every <= 0:
        raise errors.ConfigError("schedule.step_every_steps must be > 0 for schedule.name='step'.")
    decay = optax.exponential_decay(lr, every, cfg.step_factor, staircase=True)
    return _with_warmup(decay, lr, cfg.warmup_steps)


@registry.register("schedules.plateau")
def get_plateau(*, lr: float, total_steps: int, cfg: ml_collections.ConfigDict) -> optax.Schedule:
    """Reduce-on-plateau: a constant ``lr`` (after an optional linear warmup) times a scale.

    The schedule is the step-dependent part only; ``make_optimizer`` appends
    ``scale_by_plateau``, whose scale the loop lowers when ``schedule.plateau.monitor`` stops
    improving (``update_plateau``). The rate in force is ``schedule(step) * scale``.
    """
    del total_steps
    check_plateau_config(cfg.plateau)
    return _with_warmup(optax.constant_schedule(lr), lr, cfg.warmup_steps)


def _with_warmup(schedule: optax.Schedule, lr: float, warmup_steps: int) -> optax.Schedule:
    if not warmup_steps:
        return schedule
    warmup = optax.linear_schedule(0.0, lr, warmup_steps)
    return optax.join_schedules([warmup, schedule], [warmup_steps])


@registry.register("optimizers.adam", "optimizers.Adam")
def get_adam(lr: optax.Schedule, cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam (with L2 weight decay added to the gradient when ``weight_decay`` > 0)."""
    tx = optax.adam(lr, b1=cfg.b1, b2=cfg.b2)
    if cfg.weight_decay:
        return optax.chain(optax.add_decayed_weights(cfg.weight_decay), tx)
    return tx


@registry.register("optimizers.adamw", "optimizers.AdamW")
def get_adamw(lr: optax.Schedule, cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW (decoupled weight decay)."""
    return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)


@registry.register("optimizers.sgd", "optimizers.SGD")
def get_sgd(lr: optax.Schedule, cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """SGD with (Nesterov) momentum, as nnU-Net trains (momentum 0.99, Nesterov)."""
    tx = optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
    if cfg.weight_decay:
        return optax.chain(optax.add_decayed_weights(cfg.weight_decay), tx)
    return tx


def make_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """The learning-rate schedule named by ``config.schedule.name``."""
    factory = registry.get(f"schedules.{config.schedule.name}")
    return factory(lr=config.optim.lr, total_steps=total_steps, cfg=config.schedule)


def make_optimizer(
    config: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Gradient clipping -> the named optimiser (frozen parameters masked out) -> plateau scale.

    The last only with ``schedule.name="plateau"``: its ``PlateauState`` then sits in the
    optimiser state (see ``plateau_tracker``).

    Returns:
      The transformation and the schedule (the step logs ``schedule(step)``).
    """
    schedule = make_schedule(config, total_steps)
    tx = registry.get(f"optimizers.{config.optim.name}")(schedule, config.optim)
    if config.optim.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(config.optim.grad_clip_norm), tx)
    if config.optim.freeze:
        tx = freeze(tx, config.optim.freeze)
    if config.schedule.name == "plateau":
        # Last in the chain: scaling the final update scales the rate of every optimiser here
        # (Adam, AdamW with its decoupled decay, SGD after momentum), and frozen zeros stay 0.
        tx = optax.chain(tx, scale_by_plateau(config.schedule.plateau.mode))
    return tx, schedule


def freeze(tx: optax.GradientTransformation, pattern: str) -> optax.GradientTransformation:
    """Parameters whose ``/``-joined path matches ``pattern`` get zero updates (fine-tuning)."""
    regex = re.compile(pattern)

    def labels(params: Any) -> Any:
        flat = traverse_util.flatten_dict(params, sep="/")
        return traverse_util.unflatten_dict(
            {k: "frozen" if regex.search(k) else "train" for k in flat}, sep="/"
        )

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


# ---------------------------------------------------------------------------------------------
# Reduce-on-plateau.
#
# Not optax.contrib.reduce_on_plateau: it takes the monitored ``value`` at every update and
# counts updates (the train step would need the validation metric at every step), it only
# minimises, and its ``plateau_count == patience`` reduces one validation earlier than
# PyTorch's ``num_bad_epochs > patience``. Here the scale is applied in the jitted step as data
# (a new scale is a new value, not a recompilation) and the tracker changes only when the loop
# feeds it a validation, with PyTorch's ReduceLROnPlateau rules (threshold_mode="abs").
# ---------------------------------------------------------------------------------------------

# PyTorch ReduceLROnPlateau's default ``eps``: a reduction smaller than this is skipped.
PLATEAU_EPS = 1e-8


class PlateauState(NamedTuple):
    """The reduce-on-plateau scale and tracker, all scalars (in the optimiser state).

    Attributes:
      scale: float32; every update is multiplied by it (the effective rate is
        ``schedule(step) * scale``).
      best: float32; the best monitored value so far (+inf for mode min, -inf for max, until
        the first validation).
      num_bad: int32; validations since the last improvement (PyTorch's ``num_bad_epochs``).
      cooldown: int32; validations left during which bad ones are not counted
        (PyTorch's ``cooldown_counter``).
    """

    scale: Any
    best: Any
    num_bad: Any
    cooldown: Any


def scale_by_plateau(mode: str) -> optax.GradientTransformation:
    """Multiplies updates by ``PlateauState.scale``; never changes the state itself.

    Args:
      mode: ``min`` or ``max`` (the starting ``best`` is +inf or -inf).
    """

    def init_fn(params: Any) -> PlateauState:
        del params
        return PlateauState(
            scale=jnp.ones((), jnp.float32),
            best=jnp.full((), math.inf if mode == "min" else -math.inf, jnp.float32),
            num_bad=jnp.zeros((), jnp.int32),
            cooldown=jnp.zeros((), jnp.int32),
        )

    def update_fn(updates: Any, state: PlateauState, params: Any = None) -> tuple:
        del params
        return jax.tree.map(lambda u: (u * state.scale).astype(u.dtype), updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def check_plateau_config(cfg: ml_collections.ConfigDict) -> None:
    """Raises ``ConfigError`` naming the ``schedule.plateau.*`` key that is out of range."""
    checks = [
        (bool(cfg.monitor), "monitor", "a validation metric name, e.g. 'val/loss'"),
        (cfg.mode in ("min", "max"), "mode", "'min' or 'max'"),
        (0.0 < cfg.factor < 1.0, "factor", "in (0, 1)"),
        (int(cfg.patience) == cfg.patience and cfg.patience >= 0, "patience", "an int >= 0"),
        (int(cfg.cooldown) == cfg.cooldown and cfg.cooldown >= 0, "cooldown", "an int >= 0"),
        (cfg.min_delta >= 0.0, "min_delta", ">= 0"),
        (cfg.min_lr >= 0.0, "min_lr", ">= 0"),
    ]
    for ok, key, allowed in checks:
        if not ok:
            raise errors.ConfigError(
                f"schedule.plateau.{key}={cfg[key]!r} is invalid: it must be {allowed}."
            )


def update_plateau(
    tracker: PlateauState, value: float, cfg: ml_collections.ConfigDict, base_lr: float
) -> PlateauState:
    """One ``ReduceLROnPlateau.step(value)`` (PyTorch, ``threshold_mode="abs"``), on the host.

    Pure: plain numbers in, numpy scalars out. An improvement is ``value < best - min_delta``
    (mode min) or ``value > best + min_delta`` (max); otherwise ``num_bad`` grows (a NaN value
    is never an improvement). During a cooldown bad validations are not counted. When
    ``num_bad > patience`` the scale becomes ``max(scale * factor, min_lr / base_lr)``, then
    the cooldown restarts and ``num_bad`` is reset.

    Args:
      tracker: the current ``PlateauState`` (numpy or fetched device scalars).
      value: the monitored validation metric.
      cfg: ``config.schedule.plateau``.
      base_lr: ``config.optim.lr`` (``min_lr`` is a rate; the state holds a scale).

    Returns:
      The next ``PlateauState`` as numpy float32/int32 scalars (best is compared in float64
      but stored in float32).
    """
    value = float(value)
    scale, best = float(tracker.scale), float(tracker.best)
    num_bad, cooldown = int(tracker.num_bad), int(tracker.cooldown)
    if cfg.mode == "min":
        improved = value < best - cfg.min_delta
    else:
        improved = value > best + cfg.min_delta
    if improved:
        best, num_bad = value, 0
    else:
        num_bad += 1
    if cooldown > 0:
        cooldown -= 1
        num_bad = 0  # bad validations during a cooldown do not count
    if num_bad > cfg.patience:
        min_scale = cfg.min_lr / base_lr if base_lr > 0 else 0.0
        new_scale = max(scale * cfg.factor, min_scale)
        if (scale - new_scale) * base_lr > PLATEAU_EPS:
            scale = new_scale
        cooldown, num_bad = int(cfg.cooldown), 0
    return PlateauState(np.float32(scale), np.float32(best), np.int32(num_bad), np.int32(cooldown))


def _is_plateau(x: Any) -> bool:
    return isinstance(x, PlateauState)


def plateau_tracker(opt_state: Any) -> PlateauState | None:
    """The ``PlateauState`` inside an optimiser state, or None (another schedule)."""
    found = [x for x in jax.tree.leaves(opt_state, is_leaf=_is_plateau) if _is_plateau(x)]
    return found[0] if found else None


def replace_plateau_tracker(opt_state: Any, tracker: PlateauState) -> Any:
    """``opt_state`` with its ``PlateauState`` replaced by ``tracker``."""
    return jax.tree.map(lambda x: tracker if _is_plateau(x) else x, opt_state, is_leaf=_is_plateau)


def lr_scale(opt_state: Any) -> jax.Array | float:
    """The factor on the schedule's rate: the plateau scale, or 1.0 without one (traceable)."""
    tracker = plateau_tracker(opt_state)
    return 1.0 if tracker is None else tracker.scale


def effective_lr(schedule: optax.Schedule, opt_state: Any, step: int) -> float:
    """The rate in force for the update at ``step``: ``schedule(step) * scale`` (host float)."""
    return float(schedule(step)) * float(jax.device_get(lr_scale(opt_state)))
