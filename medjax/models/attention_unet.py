"""Attention UNet (Oktay et al. 2018, arXiv:1804.03999) for 2D and 3D segmentation.

A UNet whose skip connections pass through additive attention gates: each gate scales the
encoder features of one level by coefficients in (0, 1) computed from those features and a
gating signal taken from the next coarser decoder level. One module serves both ranks; the input
decides: ``[B, H, W, C]`` or ``[B, D, H, W, C]``. Spatial sizes must be divisible by
``2**(depth-1)``, as for ``unet.UNet``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax import errors, registry
from medjax.models import layers, pooling, segmentation


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018, eq. 1-2) on a skip connection.

    On the gating grid: ``q = psi(relu(W_x(x) + W_g(g)))``, ``alpha = sigmoid(q)``; alpha is
    resampled (bi/trilinear, half-pixel centres) to the skip's grid and the gate returns
    ``x * alpha``. ``W_g`` and ``psi`` are 1x1 convs with bias. ``W_x`` maps the skip onto the
    gating grid: a conv with kernel 2 and stride 2 and no bias, as in the authors' code
    (``sub_sample_kernel_size=2``); a strided 1x1 conv would ignore all but one voxel of each
    2^nd block. The coefficients are sown as ``intermediates/alpha`` for inspection.

    Attributes:
      inter_features: channels F_int of the joint space (the authors use half the skip's).
      dtype: compute dtype; None follows inputs and parameters.
    """

    inter_features: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, g: jax.Array) -> jax.Array:
        """Gates ``x [B, *2S, C_x]`` with ``g [B, *S, C_g]``; returns ``[B, *2S, C_x]``."""
        nd = x.ndim - 2
        if tuple(x.shape[1:-1]) != tuple(2 * s for s in g.shape[1:-1]):
            raise errors.ConfigError(
                f"AttentionGate needs the skip at twice the gating size, got skip "
                f"{x.shape[1:-1]} and gate {g.shape[1:-1]}."
            )
        theta = nn.Conv(
            self.inter_features,
            (2,) * nd,
            strides=(2,) * nd,
            padding="VALID",
            use_bias=False,
            dtype=self.dtype,
            name="W_x",
        )(x)
        phi = nn.Dense(self.inter_features, dtype=self.dtype, name="W_g")(g)
        q = nn.Dense(1, dtype=self.dtype, name="psi")(nn.relu(theta + phi))
        alpha = nn.sigmoid(q.astype(jnp.float32))
        alpha = jax.image.resize(alpha, (*x.shape[:-1], 1), method="linear")
        self.sow("intermediates", "alpha", alpha)
        return x * alpha.astype(x.dtype)


class AttentionUNet(nn.Module):
    """UNet with an attention gate on every skip, gated by the next coarser decoder level.

    Parameter count (2D, ``depth=2, features=4``, 1 input channel, K=1, ``norm="none"``): the
    plain UNet's 1657 (see ``tests/models/test_unet.py``) plus one gate with F_int = 2:
    ``W_x`` 2*2*4*2 = 32, ``W_g`` 8*2+2 = 18, ``psi`` 2*1+1 = 3, i.e. 1657 + 53 = **1710**.

    Attributes:
      out_channels: number of output logits K (1: binary with sigmoid; >1: softmax classes).
      features: channels per level, e.g. ``(16, 32, 64, 128)``; its length is the depth.
      norm: ``batch`` | ``instance`` | ``group`` | ``none`` (conv blocks; gates have no norm).
      residual: residual encoder blocks (nnU-Net's ResEnc flavour).
      deep_supervision: in training, also return logits of the coarser decoder levels
        (finest first), as ``unet.UNet`` does.
      remat: rematerialise each level's block in the backward pass.
      dtype: compute dtype; None follows inputs and parameters.
      conv_impl: formulation of the blocks' convolutions (``layers``); same parameters.
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
    head_prior: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | list[jax.Array]:
        segmentation.check_input(
            x, 2 ** (len(self.features) - 1), f"AttentionUNet of depth {len(self.features)}"
        )
        block = nn.remat(layers.ConvBlock, static_argnums=(2,)) if self.remat else layers.ConvBlock
        if self.dtype is not None:
            x = x.astype(self.dtype)
        skips = []
        for level, f in enumerate(self.features):
            if level > 0:
                x = pooling.max_pool2(x)
            x = block(f, self.norm, self.residual, self.dtype, self.conv_impl, name=f"enc{level}")(
                x, train
            )
            skips.append(x)
        x = skips.pop()
        # Heads are created at init whatever ``train`` is: the trainer initialises with
        # train=False and must still find the deep-supervision heads' parameters later.
        with_ds = self.deep_supervision and (train or self.is_initializing())
        outputs = []
        for level in reversed(range(len(self.features) - 1)):
            f = self.features[level]
            # The gate reads x before it is upsampled: the gating signal is the coarser level.
            skip = AttentionGate(max(f // 2, 1), self.dtype, name=f"gate{level}")(skips[level], x)
            x = layers.UpsampleMatmul(f, self.dtype, name=f"up{level}")(x)
            x = jnp.concatenate([x, skip], axis=-1)
            x = block(f, self.norm, False, self.dtype, self.conv_impl, name=f"dec{level}")(x, train)
            if with_ds and level > 0:
                outputs.append(
                    segmentation.head(self.out_channels, self.dtype, f"ds{level}", self.head_prior)(
                        x
                    )
                )
        logits = segmentation.head(self.out_channels, self.dtype, "head", self.head_prior)(
            x
        ).astype(jnp.float32)
        if self.deep_supervision and train:
            return [logits] + [o.astype(jnp.float32) for o in outputs[::-1]]
        return logits


get_attention_unet = registry.register("models.attention_unet", "models.AttentionUNet")(
    segmentation.factory(AttentionUNet)
)
