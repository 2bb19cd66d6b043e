"""Attention UNet (Oktay et al. 2018, arXiv:1804.03999) for 2D and 3D segmentation.

A UNet whose skip connections pass through additive attention gates: each gate scales the
encoder features of one level by coefficients in (0, 1) computed from those features and a
gating signal taken from the next coarser decoder level. One module serves both ranks; the input
decides: ``[B, H, W, C]`` or ``[B, D, H, W, C]``. Spatial sizes must be divisible by
``2**(depth-1)``, as for ``unet.UNet``.

Also home of the two checks the segmentation zoo shares (``check_input``, ``resolve_norm``), so
that ``unetpp`` and ``deeplab`` validate their knobs exactly as this factory does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax import errors, registry
from medjax.models import layers, unet


def check_input(x: jax.Array, divisor: int, model: str) -> None:
    """Raises ConfigError unless ``x`` is ``[B, *spatial, C]`` with spatial sizes % divisor == 0.

    Args:
      x: the model input, ``[B, H, W, C]`` or ``[B, D, H, W, C]``.
      divisor: every spatial size must be a multiple of it (1: any size).
      model: the model's name, for the message.
    """
    if x.ndim not in (4, 5):
        raise errors.ConfigError(
            f"{model} input must be [B, H, W, C] or [B, D, H, W, C], got {x.shape}."
        )
    if any(s % divisor for s in x.shape[1:-1]):
        raise errors.ConfigError(
            f"{model} needs spatial sizes divisible by {divisor}, got {x.shape[1:-1]}; "
            f"choose data.patch_size accordingly."
        )


def resolve_norm(norm: str, use_batch_norm: bool | None, last_activation: str) -> str:
    """The seed's ``use_batch_norm`` switch wins over ``norm``; both names are validated.

    Args:
      norm: ``batch`` | ``instance`` | ``group`` | ``none``.
      use_batch_norm: None keeps ``norm``; True -> ``batch``; False -> ``none``.
      last_activation: ``sigmoid`` | ``softmax`` | ``none`` (how predictions read the logits).

    Returns:
      The norm name to build.

    Raises:
      ConfigError: an unknown norm or activation name.
    """
    if use_batch_norm is not None:
        norm = "batch" if use_batch_norm else "none"
    if norm not in layers.NORMS:
        raise errors.ConfigError(f"model.kwargs.norm={norm!r}; expected one of {layers.NORMS}.")
    if last_activation not in unet.ACTIVATIONS:
        raise errors.ConfigError(
            f"model.kwargs.last_activation={last_activation!r}; expected one of {unet.ACTIVATIONS}."
        )
    return norm


def head(out_channels: int, dtype: Any, name: str) -> nn.Module:
    """The 1x1 conv that turns features into logits (cast to float32 by the caller)."""
    return nn.Dense(out_channels, dtype=dtype, name=name)


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

    Returns logits ``float32[B, *spatial, K]`` (a list of them with deep supervision in training).
    """

    out_channels: int = 1
    features: Sequence[int] = (16, 32, 64, 128)
    norm: str = "batch"
    residual: bool = False
    deep_supervision: bool = False
    remat: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | list[jax.Array]:
        check_input(
            x, 2 ** (len(self.features) - 1), f"AttentionUNet of depth {len(self.features)}"
        )
        block = nn.remat(layers.ConvBlock, static_argnums=(2,)) if self.remat else layers.ConvBlock
        if self.dtype is not None:
            x = x.astype(self.dtype)
        skips = []
        for level, f in enumerate(self.features):
            if level > 0:
                x = layers.max_pool2(x)
            x = block(f, self.norm, self.residual, self.dtype, name=f"enc{level}")(x, train)
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
            x = block(f, self.norm, False, self.dtype, name=f"dec{level}")(x, train)
            if with_ds and level > 0:
                outputs.append(head(self.out_channels, self.dtype, f"ds{level}")(x))
        logits = head(self.out_channels, self.dtype, "head")(x).astype(jnp.float32)
        if self.deep_supervision and train:
            return [logits] + [o.astype(jnp.float32) for o in outputs[::-1]]
        return logits


@registry.register("models.attention_unet", "models.AttentionUNet")
def get_attention_unet(
    *,
    in_channels: int = 1,
    out_channels: int = 1,
    depth: int = 4,
    features: int | Sequence[int] = 16,
    max_features: int = 320,
    use_batch_norm: bool | None = None,
    norm: str = "batch",
    residual: bool = False,
    deep_supervision: bool = False,
    remat: bool = False,
    last_activation: str = "sigmoid",
    dtype: str | None = None,
) -> AttentionUNet:
    """Builds an Attention UNet with the knobs of ``unet.get_unet``.

    Args:
      in_channels: input channels (checked by the trainer against the data).
      out_channels: logits K (1: sigmoid; >1: softmax over K classes).
      depth: number of resolution levels; spatial sizes must be divisible by ``2**(depth-1)``.
      features: channels of the first level (doubled per level, capped at ``max_features``) or
        one value per level.
      max_features: cap of the doubled channels.
      use_batch_norm: the seed's switch; True -> ``norm="batch"``, False -> ``norm="none"``.
      norm, residual, deep_supervision, remat: see ``AttentionUNet``.
      last_activation: ``sigmoid`` | ``softmax`` | ``none``; losses always take logits.
      dtype: compute dtype name; None follows the inputs and parameters.

    Returns:
      The module; ``apply(variables, x float32[B, *spatial, C], train=bool)`` gives logits
      ``float32[B, *spatial, K]``.

    Raises:
      ConfigError: unknown norm or activation, or ``features`` of the wrong length.
    """
    del in_channels
    return AttentionUNet(
        out_channels=out_channels,
        features=unet.level_features(features, depth, max_features),
        norm=resolve_norm(norm, use_batch_norm, last_activation),
        residual=residual,
        deep_supervision=deep_supervision,
        remat=remat,
        dtype=None if dtype is None else jnp.dtype(dtype),
    )
