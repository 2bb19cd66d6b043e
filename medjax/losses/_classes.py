"""Turns logits, integer labels and an optional mask into float32 per-class arrays.

Shared by the region losses (``dice.py``) and the distribution losses (``ce.py``) so that the
``K == 1`` (sigmoid) versus ``K > 1`` (softmax) convention of docs/CONVENTIONS.md and the mask
broadcasting rule are written once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def check_shapes(logits: jax.Array, labels: jax.Array) -> None:
    """Raises ValueError unless ``logits`` is ``labels``' shape plus a trailing class axis.

    Shapes are static under jit, so this check costs nothing at run time.
    """
    if logits.ndim != labels.ndim + 1 or logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"Expected logits [B, *spatial, K] and labels [B, *spatial]; got logits "
            f"{logits.shape} and labels {labels.shape}."
        )
    if labels.ndim < 1:
        raise ValueError(f"Labels need a batch axis; got shape {labels.shape}.")


def voxel_weights(mask: jax.typing.ArrayLike | None, labels: jax.Array) -> jax.Array:
    """Float32 weights of ``labels``' shape: 1 where a voxel counts, 0 where it is masked out.

    Args:
      mask: ``None`` (all count), ``bool/float[B]`` (per example, e.g. the batch's ``valid``)
        or ``bool/float[B, *spatial]`` (per voxel).
      labels: ``int[B, *spatial]``; only its shape is used.

    Returns:
      ``float32[B, *spatial]``.
    """
    if mask is None:
        return jnp.ones(labels.shape, jnp.float32)
    mask = jnp.asarray(mask).astype(jnp.float32)
    if mask.shape == labels.shape[:1]:
        # A per-example mask: broadcast over every spatial axis.
        mask = mask.reshape(mask.shape + (1,) * (labels.ndim - 1))
    elif mask.shape != labels.shape:
        raise ValueError(
            f"mask must have shape [B] {labels.shape[:1]} or [B, *spatial] {labels.shape}; "
            f"got {mask.shape}."
        )
    return jnp.broadcast_to(mask, labels.shape)


def probs_and_targets(
    logits: jax.Array, labels: jax.Array, *, include_background: bool
) -> tuple[jax.Array, jax.Array]:
    """Class probabilities and one-hot targets, channels-last, in float32.

    ``K == 1``: the single channel is the sigmoid foreground probability and the target is
    ``labels != 0``. ``K > 1``: softmax over the last axis and a one-hot of ``labels``; with
    ``include_background=False`` class 0 is dropped from both (nnU-Net's ``do_bg=False``).

    Args:
      logits: ``float[B, *spatial, K]`` (any float dtype; computed in float32).
      labels: ``int[B, *spatial]`` class indices.
      include_background: keep class 0 for softmax; ignored for ``K == 1``.

    Returns:
      ``(probs, targets)``, both ``float32[B, *spatial, K']`` with ``K' = 1`` for sigmoid,
      ``K`` or ``K - 1`` for softmax.
    """
    check_shapes(logits, labels)
    logits = logits.astype(jnp.float32)
    num_classes = logits.shape[-1]
    if num_classes == 1:
        probs = jax.nn.sigmoid(logits)
        targets = (labels != 0).astype(jnp.float32)[..., None]
        return probs, targets
    probs = jax.nn.softmax(logits, axis=-1)
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if not include_background:
        probs, targets = probs[..., 1:], targets[..., 1:]
    return probs, targets


def spatial_axes(labels: jax.Array) -> tuple[int, ...]:
    """The spatial axes of ``labels [B, *spatial]`` (empty for classification ``[B]``)."""
    return tuple(range(1, labels.ndim))


def masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """Per-example weighted mean over spatial axes: ``sum(w * v) / sum(w)``.

    Examples whose weights are all zero (padding rows) give 0 rather than NaN, so they add
    nothing to a later sum and their gradient is zero.

    Args:
      values: ``float32[B, *spatial]``.
      weights: ``float32[B, *spatial]``.

    Returns:
      ``float32[B]``.
    """
    axes = spatial_axes(values)
    total = jnp.sum(values * weights, axis=axes)
    count = jnp.sum(weights, axis=axes)
    return total / jnp.where(count > 0, count, 1.0)
