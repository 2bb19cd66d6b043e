"""Max pooling of ``[B, *spatial, C]`` (2D and 3D) with a written-out gradient.

``max_pool2`` halves every spatial axis; ``max_pool`` takes a factor per axis (nnU-Net's per-axis
pooling for thick slices). Both compute a reshape and a max, and give the gradient to the inputs
equal to their window's max (ties share it), which XLA's CPU select-and-scatter does slowly.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp


def _pairs(x: jax.Array) -> tuple[jax.Array, tuple[int, ...]]:
    """``[B, *S, C]`` cropped to even sizes and viewed as ``[B, s0, 2, s1, 2, ..., C]``."""
    half = [d // 2 for d in x.shape[1:-1]]
    x = x[(slice(None), *(slice(0, 2 * h) for h in half))]
    x = x.reshape(x.shape[0], *itertools.chain.from_iterable((h, 2) for h in half), x.shape[-1])
    return x, tuple(2 + 2 * a for a in range(len(half)))


@jax.custom_vjp
def max_pool2(x: jax.Array) -> jax.Array:
    """2x max pooling over every spatial axis of ``[B, *spatial, C]`` (odd sizes: floor).

    The same values as ``nn.max_pool(x, (2,)*nd, strides=(2,)*nd)``, computed as a reshape to
    ``[B, s0, 2, s1, 2, ..., C]`` and a max over the pairs. XLA's gradient of a windowed max
    (select-and-scatter) is slow on the CPU: fwd + bwd of a (2, 16, 48, 48, 32) input took 74 ms
    that way against 11 ms here, 15 vs 6 ms for (16, 64, 64, 16) (2 cores). The gradient is
    written out (``custom_vjp``): it goes to the inputs equal to their window's max, split
    equally among ties (select-and-scatter gives a tie to the first input; after a ReLU the usual
    ties are zeros, whose gradient the ReLU drops anyway). jnp.max's own gradient rule gave NaN
    gradients under ``jax_disable_most_optimizations`` (the test suite's setting) on XLA CPU.
    """
    pairs, axes = _pairs(x)
    return pairs.max(axis=axes)


def _max_pool2_fwd(x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    y = max_pool2(x)
    return y, (x, y)


def _max_pool2_bwd(res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array]:
    x, y = res
    pairs, axes = _pairs(x)
    hit = (pairs == jnp.expand_dims(y, axes)).astype(g.dtype)
    share = hit / jnp.maximum(hit.sum(axis=axes, keepdims=True), 1.0)
    grad = (share * jnp.expand_dims(g, axes)).reshape(
        x.shape[0], *(2 * (d // 2) for d in x.shape[1:-1]), x.shape[-1]
    )
    # The floor-cropped last row/column of an odd axis gets no gradient.
    pad = [(0, 0), *((0, d % 2) for d in x.shape[1:-1]), (0, 0)]
    return (jnp.pad(grad, pad),)


max_pool2.defvjp(_max_pool2_fwd, _max_pool2_bwd)


def _blocks(x: jax.Array, window: tuple[int, ...]) -> tuple[jax.Array, tuple[int, ...]]:
    """``[B, *S, C]`` cropped to multiples of ``window`` and viewed as ``[B, s0, w0, ..., C]``."""
    size = [d // w for d, w in zip(x.shape[1:-1], window, strict=True)]
    x = x[(slice(None), *(slice(0, s * w) for s, w in zip(size, window, strict=True)))]
    x = x.reshape(
        x.shape[0],
        *itertools.chain.from_iterable(zip(size, window, strict=True)),
        x.shape[-1],
    )
    return x, tuple(2 + 2 * a for a in range(len(size)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
    """Max pooling of ``[B, *spatial, C]`` with window = stride ``window[a]`` per spatial axis.

    ``max_pool2`` with a factor per axis (1: that axis is not pooled), e.g. ``(1, 2, 2)`` for
    thick slices; the same values as ``nn.max_pool(x, window, strides=window)`` (sizes that do
    not divide: floor) and the same written-out gradient (ties share it; see ``max_pool2``).
    """
    blocks, axes = _blocks(x, tuple(window))
    return blocks.max(axis=axes)


def _max_pool_fwd(x: jax.Array, window: tuple[int, ...]):
    y = max_pool(x, window)
    return y, (x, y)


def _max_pool_bwd(window: tuple[int, ...], res: tuple[jax.Array, jax.Array], g: jax.Array):
    x, y = res
    blocks, axes = _blocks(x, tuple(window))
    hit = (blocks == jnp.expand_dims(y, axes)).astype(g.dtype)
    share = hit / jnp.maximum(hit.sum(axis=axes, keepdims=True), 1.0)
    kept = [w * (d // w) for d, w in zip(x.shape[1:-1], window, strict=True)]
    grad = (share * jnp.expand_dims(g, axes)).reshape(x.shape[0], *kept, x.shape[-1])
    pad = [(0, 0), *((0, d - k) for d, k in zip(x.shape[1:-1], kept, strict=True)), (0, 0)]
    return (jnp.pad(grad, pad),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
