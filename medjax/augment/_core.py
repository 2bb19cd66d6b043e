"""Shared pieces of the augmentation ops: config checking, random ranges, random application.

Every op in ``intensity.py`` and ``spatial.py`` is a factory ``get_<op>(p=..., **ranges)`` that
returns ``fn(key, sample) -> sample`` for ONE example. ``sample`` holds ``image [*spatial, C]`` and
optionally ``label``: a map ``int[*spatial]`` (segmentation) that spatial ops move with the image,
or a per-example class ``int[]`` (classification) that every op passes through. Other keys pass
through untouched.

This module does not register anything (the package auto-import skips ``_``-prefixed modules).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from medjax import errors

Sample = dict[str, Any]
AugmentFn = Callable[[jax.Array, Sample], Sample]


def check_probability(p: float, op: str) -> float:
    """Returns ``p`` as a float after checking it lies in ``[0, 1]``.

    Raises:
      ConfigError: ``p`` is outside ``[0, 1]``.
    """
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise errors.ConfigError(f"augment.{op}: p={p} must lie in [0, 1].")
    return p


def as_range(
    value: float | Sequence[float], name: str, op: str, *, symmetric: bool = False
) -> tuple[float, float]:
    """Turns a config value into a ``(low, high)`` range.

    Args:
      value: a pair ``(low, high)`` or one number. One number means the fixed value ``(v, v)``,
        or ``(-v, v)`` when ``symmetric`` (albumentations' ``*_limit`` convention).
      name: the kwarg's name, for the error message.
      op: the op's name, for the error message.
      symmetric: read one number ``v`` as ``(-v, v)``.

    Returns:
      ``(low, high)`` as Python floats with ``low <= high``.

    Raises:
      ConfigError: not a number or a pair, or ``low > high``.
    """
    if isinstance(value, int | float):
        v = float(value)
        return (-abs(v), abs(v)) if symmetric else (v, v)
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError) as e:
        raise errors.ConfigError(
            f"augment.{op}: {name}={value!r} must be a number or a pair (low, high)."
        ) from e
    if low > high:
        raise errors.ConfigError(f"augment.{op}: {name}={value!r} has low > high.")
    return low, high


def uniform(key: jax.Array, bounds: tuple[float, float], shape: tuple[int, ...] = ()) -> jax.Array:
    """Draws ``float32[*shape]`` uniformly from ``[low, high)`` (exactly ``low`` if equal)."""
    low, high = bounds
    if high == low:  # A fixed value: no draw, and nothing random to compile.
        return jnp.full(shape, low, jnp.float32)
    return jax.random.uniform(key, shape, jnp.float32, low, high)


def uniform_around_one(
    key: jax.Array, bounds: tuple[float, float], shape: tuple[int, ...] = ()
) -> jax.Array:
    """nnU-Net's factor draw: half the time from ``[low, 1)``, else from ``[max(low, 1), high)``.

    A plain uniform draw over e.g. ``(0.7, 1.5)`` would raise the factor above one 80% of the
    time; nnU-Net's gamma and contrast transforms balance shrinking and growing this way.

    Returns:
      ``float32[*shape]``.
    """
    low, high = bounds
    if low >= 1.0 or high <= 1.0:  # One side is empty: nnU-Net falls back to the other one.
        return uniform(key, (low, high), shape)
    k_side, k_below, k_above = jax.random.split(key, 3)
    below = uniform(k_below, (low, 1.0), shape)
    above = uniform(k_above, (1.0, high), shape)
    return jnp.where(jax.random.uniform(k_side, shape) < 0.5, below, above)


def spatial_ndim(sample: Sample) -> int:
    """Number of spatial axes of ``sample["image"]`` (``[*spatial, C]``): 2 or 3."""
    return sample["image"].ndim - 1


def has_label_map(sample: Sample) -> bool:
    """True when ``sample["label"]`` is a per-voxel map that spatial ops must move."""
    label = sample.get("label")
    return label is not None and label.ndim == spatial_ndim(sample)


def compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """float32, or wider if the image is wider: bf16 images are computed in f32, then cast back."""
    return jnp.promote_types(dtype, jnp.float32)


def with_probability(p: float, transform: AugmentFn) -> AugmentFn:
    """Wraps ``transform`` so it is applied to a sample with probability ``p``.

    The choice is a traced ``jnp.where``: under ``vmap`` each example decides on its own, and
    nothing branches in Python on a traced value. Both outcomes are computed (as ``lax.cond``
    would also do once vmapped). ``p`` of 0 or 1 is resolved when the op is built.

    Args:
      p: probability in ``[0, 1]`` (already checked).
      transform: ``fn(key, sample) -> sample`` that always applies the op.

    Returns:
      ``fn(key, sample) -> sample``.
    """
    if p <= 0.0:

        def identity(key: jax.Array, sample: Sample) -> Sample:
            del key
            return sample

        return identity
    if p >= 1.0:
        return transform

    def maybe(key: jax.Array, sample: Sample) -> Sample:
        k_apply, k_op = jax.random.split(key)
        out = transform(k_op, sample)
        apply = jax.random.uniform(k_apply) < p
        return {
            k: v if v is sample.get(k) else jnp.where(apply, v, sample[k]) for k, v in out.items()
        }

    return maybe
