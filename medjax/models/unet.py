"""UNet for 2D and 3D segmentation (the seed's ``UNET``, nnU-Net-style options).

One module serves both ranks; the input decides: ``[B, H, W, C]`` or ``[B, D, H, W, C]``.
Spatial sizes must be divisible by ``2**(depth-1)`` (the loader's patch size guarantees it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax import registry
from medjax.models import layers, segmentation


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

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | list[jax.Array]:
        depth = len(self.features)
        segmentation.check_input(x, 2 ** (depth - 1), f"UNet with depth {depth}")
        block = nn.remat(layers.ConvBlock, static_argnums=(2,)) if self.remat else layers.ConvBlock
        if self.dtype is not None:
            x = x.astype(self.dtype)
        skips = []
        for level, f in enumerate(self.features):
            if level > 0:
                x = layers.max_pool2(x)
            x = block(f, self.norm, self.residual, self.dtype, self.conv_impl, name=f"enc{level}")(
                x, train
            )
            skips.append(x)
        x = skips.pop()
        outputs = []
        for level in reversed(range(len(self.features) - 1)):
            f = self.features[level]
            x = layers.UpsampleMatmul(f, self.dtype, name=f"up{level}")(x)
            x = jnp.concatenate([x, skips[level]], axis=-1)
            x = block(f, self.norm, False, self.dtype, self.conv_impl, name=f"dec{level}")(x, train)
            if self.deep_supervision and level > 0:
                # Created at init too (train=False), so the parameters exist for training.
                outputs.append(self._head(x, f"ds{level}"))
        logits = self._head(x, "head")
        if self.deep_supervision and train:
            return [logits] + outputs[::-1]
        return logits

    def _head(self, x: jax.Array, name: str) -> jax.Array:
        return segmentation.head(self.out_channels, self.dtype, name)(x).astype(jnp.float32)


get_unet = registry.register("models.unet", "models.UNET")(segmentation.factory(UNet))
