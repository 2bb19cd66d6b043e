"""Pieces shared by the classification zoo (``luna``, ``resnet``, ``efficientnet``, ``vit``).

What belongs here: the normalisation switch, the input-rank and channel checks, global pooling
and parameter counting. Each architecture lives in its own module and registers itself as
``models.<name>``; all of them take ``[B, *spatial, C]`` channels-last input with 2 or 3 spatial
axes (the rank picks 2D or 3D kernels) and return logits ``float32[B, K]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax import errors

NORMS = ("batch", "group", "instance")


def check_norm(norm: str) -> str:
    """Returns ``norm`` if it is a known kind; raises ``ConfigError`` naming the allowed ones."""
    if norm not in NORMS:
        raise errors.ConfigError(f"Unknown model.kwargs.norm {norm!r}; expected one of {NORMS}.")
    return norm


def make_norm(
    norm: str,
    features: int,
    train: bool,
    *,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    name: str | None = None,
    scale_init: Callable[..., Any] = nn.initializers.ones,
) -> nn.Module:
    """A normalisation layer over the last (channel) axis.

    Args:
      norm: ``"batch"`` (running statistics in ``batch_stats``; training needs
        ``mutable=["batch_stats"]``), ``"group"`` (``gcd(32, features)`` groups, so it always
        divides the channels) or ``"instance"`` (one group per channel, no mutable state;
        it maps a ``1 x 1 x 1`` feature map to its bias, so the input must stay larger than one
        voxel through the last stage).
      features: number of channels the layer will see.
      train: batch statistics if True, running averages otherwise (batch norm only).
      momentum: running-average decay (torch's ``momentum=0.1`` is ``0.9`` here).
      epsilon: variance floor.
      name: submodule name.
      scale_init: initialiser of the scale (``zeros`` gives zero-init residual branches).

    Returns:
      A module mapping ``[B, *spatial, features]`` to the same shape.
    """
    check_norm(norm)
    if norm == "batch":
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=momentum,
            epsilon=epsilon,
            scale_init=scale_init,
            name=name,
        )
    groups = features if norm == "instance" else math.gcd(32, features)
    return nn.GroupNorm(num_groups=groups, epsilon=epsilon, scale_init=scale_init, name=name)


def spatial_rank(x: jax.Array, in_channels: int | None, model: str) -> int:
    """Number of spatial axes of a ``[B, *spatial, C]`` input (2 or 3), checking the channels.

    Raises:
      ValueError: the input has neither 2 nor 3 spatial axes.
      ConfigError: ``in_channels`` is set and differs from ``C``.
    """
    nd = x.ndim - 2
    if nd not in (2, 3):
        raise ValueError(f"{model} expects [B, H, W, C] or [B, D, H, W, C], got shape {x.shape}.")
    if in_channels is not None and x.shape[-1] != in_channels:
        raise errors.ConfigError(
            f"{model}: model.in_channels={in_channels} but the input has "
            f"{x.shape[-1]} channels (shape {x.shape})."
        )
    return nd


def global_avg_pool(x: jax.Array) -> jax.Array:
    """``[B, *spatial, C] -> [B, C]``: mean over the spatial axes."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))


def count_params(params: Any) -> int:
    """Total number of scalars in a parameter pytree (arrays or ``ShapeDtypeStruct``s).

    Pass ``variables["params"]`` to count trainable parameters only (torch's
    ``sum(p.numel() for p in model.parameters())``); batch-norm statistics are not parameters.
    """
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))


def pad_same(kernel: int, nd: int) -> tuple[tuple[int, int], ...]:
    """Symmetric padding ``(k - 1) // 2`` per axis, so strided convs round sizes as torch does."""
    return (((kernel - 1) // 2, (kernel - 1) // 2),) * nd
