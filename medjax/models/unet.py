"""UNet for 2D and 3D segmentation (the seed's ``UNET``, nnU-Net-style options).

One module serves both ranks; the input decides: ``[B, H, W, C]`` or ``[B, D, H, W, C]``.
Spatial sizes must be divisible by ``2**(depth-1)`` (the loader's patch size guarantees it), or
with ``pool_strides`` by the product of each axis's strides (nnU-Net's per-axis pooling for
anisotropic data, as ``medjax.plan`` plans it).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from medjax import errors, registry
from medjax.models import layers, pooling, segmentation


class UNet(nn.Module):
    """Encoder-decoder with skip connections.

    Attributes:
      out_channels: number of output logits K (1: binary with sigmoid; >1: softmax classes).
      features: channels per level, e.g. ``(16, 32, 64, 128)``; its length is the depth.
      norm: ``batch`` | ``instance`` | ``group`` | ``none``.
      residual: residual encoder blocks (nnU-Net's ResEnc flavour).
      deep_supervision: in training, also return logits of the coarser decoder levels
        (finest first), for a deep-supervision loss.
      remat: rematerialise each level's block in the backward pass (memory for big patches).
      dtype: compute dtype; None follows inputs and parameters (bf16 when the step casts them).
      conv_impl: convolution formulation (``layers``); the parameters do not depend on it.
      pool_strides: per level transition (``depth - 1`` of them) the pooling factor per spatial
        axis, e.g. ``((1, 2, 2), (2, 2, 2), ...)``; the decoder upsamples by the same factors.
        None: 2 on every axis at every transition.
      kernel_sizes: per level (``depth`` of them) the convolution kernel per spatial axis, e.g.
        ``((1, 3, 3), (3, 3, 3), ...)``; None: 3 everywhere.
      head_prior: initial foreground probability of the heads (``segmentation.head``); 0: none.

    Returns logits ``float32[B, *spatial, K]`` (a list of them with deep supervision in training).
    """

    out_channels: int = 1
    features: Sequence[int] = (16, 32, 64, 128)
    norm: str = "batch"
    residual: bool = False
    deep_supervision: bool = False
    remat: bool = False
    dtype: Any = None
    conv_impl: str = "auto"
    pool_strides: Sequence[Sequence[int]] | None = None
    kernel_sizes: Sequence[Sequence[int]] | None = None
    head_prior: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | list[jax.Array]:
        segmentation.check_input(x, 1, "UNet")
        nd, depth = x.ndim - 2, len(self.features)
        strides = (
            [(2,) * nd] * (depth - 1)
            if self.pool_strides is None
            else [tuple(int(s) for s in st) for st in self.pool_strides]
        )
        kernels = (
            [3] * depth
            if self.kernel_sizes is None
            else [tuple(int(k) for k in ks) for ks in self.kernel_sizes]
        )
        if len(strides) != depth - 1 or any(len(st) != nd for st in strides):
            raise errors.ConfigError(
                f"model.kwargs.pool_strides={self.pool_strides}: need {depth - 1} entries of "
                f"{nd} factors for depth {depth} on {nd}D inputs."
            )
        if len(kernels) != depth or any(k != 3 and len(k) != nd for k in kernels):
            raise errors.ConfigError(
                f"model.kwargs.kernel_sizes={self.kernel_sizes}: need {depth} entries of "
                f"{nd} sizes for depth {depth} on {nd}D inputs."
            )
        factor = tuple(int(np.prod([st[a] for st in strides])) for a in range(nd))
        if any(s % f for s, f in zip(x.shape[1:-1], factor, strict=True)):
            raise errors.ConfigError(
                f"UNet with depth {depth} needs spatial sizes divisible by "
                f"{factor[0] if len(set(factor)) == 1 else factor}, got {x.shape[1:-1]}; "
                f"choose data.patch_size accordingly."
            )
        block = nn.remat(layers.ConvBlock, static_argnums=(2,)) if self.remat else layers.ConvBlock
        if self.dtype is not None:
            x = x.astype(self.dtype)
        skips = []
        for level, f in enumerate(self.features):
            if level > 0:
                # The uniform 2x pool keeps its own (measured) path; a per-axis one the general.
                st = strides[level - 1]
                x = pooling.max_pool2(x) if st == (2,) * nd else pooling.max_pool(x, st)
            x = block(
                f,
                self.norm,
                self.residual,
                self.dtype,
                self.conv_impl,
                kernel_size=kernels[level],
                name=f"enc{level}",
            )(x, train)
            skips.append(x)
        x = skips.pop()
        outputs = []
        for level in reversed(range(len(self.features) - 1)):
            f = self.features[level]
            up = None if self.pool_strides is None else strides[level]
            x = layers.UpsampleMatmul(f, self.dtype, factors=up, name=f"up{level}")(x)
            x = jnp.concatenate([x, skips[level]], axis=-1)
            x = block(
                f,
                self.norm,
                False,
                self.dtype,
                self.conv_impl,
                kernel_size=kernels[level],
                name=f"dec{level}",
            )(x, train)
            if self.deep_supervision and level > 0:
                # Created at init too (train=False), so the parameters exist for training.
                outputs.append(self._head(x, f"ds{level}"))
        logits = self._head(x, "head")
        if self.deep_supervision and train:
            return [logits] + outputs[::-1]
        return logits

    def _head(self, x: jax.Array, name: str) -> jax.Array:
        head = segmentation.head(self.out_channels, self.dtype, name, self.head_prior)
        return head(x).astype(jnp.float32)


_shared_factory = segmentation.factory(UNet)


@registry.register("models.unet", "models.UNET")
def get_unet(
    *,
    pool_strides: Sequence[Sequence[int]] | None = None,
    kernel_sizes: Sequence[Sequence[int]] | None = None,
    **options: Any,
) -> UNet:
    """Builds a ``UNet``: the family's options (``segmentation.build``) plus per-axis pooling.

    Args:
      pool_strides, kernel_sizes: per-axis pooling and kernels (see ``UNet``); None: 2 and 3 on
        every axis. ``medjax.plan`` fills them from the dataset (``plan.auto=True``).
      **options: ``segmentation.build``'s (``head_prior`` among them).
    """
    return _shared_factory(**options).clone(
        pool_strides=_nested_tuple(pool_strides),
        kernel_sizes=_nested_tuple(kernel_sizes),
    )


# What registry.check_kwargs reads: every accepted keyword, by name.
get_unet.__signature__ = inspect.Signature(
    [
        *inspect.signature(_shared_factory).parameters.values(),
        *(
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None)
            for n in ("pool_strides", "kernel_sizes")
        ),
    ],
    return_annotation="UNet",
)


def _nested_tuple(values: Sequence[Sequence[int]] | None) -> tuple | None:
    """Lists (from JSON or the command line) as hashable tuples: module fields must hash."""
    return None if values is None else tuple(tuple(int(v) for v in row) for row in values)
