"""Optimisers and learning-rate schedules from the config, both by registry name."""

from __future__ import annotations

import re
from typing import Any

import jax
import ml_collections
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
    """Gradient clipping -> the named optimiser, with frozen parameters masked out.

    Returns:
      The transformation and the schedule (the step logs ``schedule(step)``).
    """
    schedule = make_schedule(config, total_steps)
    tx = registry.get(f"optimizers.{config.optim.name}")(schedule, config.optim)
    if config.optim.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(config.optim.grad_clip_norm), tx)
    if config.optim.freeze:
        tx = freeze(tx, config.optim.freeze)
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


def param_paths(params: Any) -> list[str]:
    """``/``-joined paths of all parameters (to write ``optim.freeze`` patterns)."""
    return list(traverse_util.flatten_dict(jax.device_get(params), sep="/"))
