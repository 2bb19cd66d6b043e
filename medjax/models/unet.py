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

from medjax import errors, registry
from medjax.models import layers

ACTIVATIONS = ("sigmoid", "softmax", "none")


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
        if x.ndim not in (4, 5):
            raise errors.ConfigError(
                f"UNet input must be [B, H, W, C] or [B, D, H, W, C], got {x.shape}."
            )
        factor = 2 ** (len(self.features) - 1)
        if any(s % factor for s in x.shape[1:-1]):
            raise errors.ConfigError(
                f"UNet with depth {len(self.features)} needs spatial sizes divisible by {factor}, "
                f"got {x.shape[1:-1]}."
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
        outputs = []
        for level in reversed(range(len(self.features) - 1)):
            f = self.features[level]
            x = layers.UpsampleMatmul(f, self.dtype, name=f"up{level}")(x)
            x = jnp.concatenate([x, skips[level]], axis=-1)
            x = block(f, self.norm, False, self.dtype, name=f"dec{level}")(x, train)
            if self.deep_supervision and level > 0:
                # Created at init too (train=False), so the parameters exist for training.
                outputs.append(self._head(x, f"ds{level}"))
        logits = self._head(x, "head")
        if self.deep_supervision and train:
            return [logits] + outputs[::-1]
        return logits

    def _head(self, x: jax.Array, name: str) -> jax.Array:
        return nn.Dense(self.out_channels, dtype=self.dtype, name=name)(x).astype(jnp.float32)


def level_features(features: int | Sequence[int], depth: int, max_features: int = 320) -> tuple:
    """``features=16, depth=4`` -> ``(16, 32, 64, 128)``, capped at ``max_features``."""
    if isinstance(features, int):
        return tuple(min(features * 2**i, max_features) for i in range(depth))
    features = tuple(int(f) for f in features)
    if len(features) != depth:
        raise errors.ConfigError(f"model.features has {len(features)} levels but depth={depth}.")
    return features


@registry.register("models.unet", "models.UNET")
def get_unet(
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
) -> UNet:
    """Builds a UNet with the seed's knobs.

    Args:
      in_channels: input channels (checked by the trainer against the data).
      out_channels: logits K; ``last_activation`` must be ``sigmoid`` for K=1, ``softmax`` for K>1
        (it says how predictions turn logits into probabilities; losses always take logits).
      depth: number of resolution levels.
      features: channels of the first level (doubled per level) or one value per level.
      use_batch_norm: the seed's switch; True -> ``norm="batch"``, False -> ``norm="none"``.
      norm, residual, deep_supervision, remat: see ``UNet``.
      dtype: compute dtype name (``float32`` | ``bfloat16``); None follows the inputs and
        parameters, which is how ``train.precision=bfloat16`` runs (the step casts both).
    """
    del in_channels
    if use_batch_norm is not None:
        norm = "batch" if use_batch_norm else "none"
    if last_activation not in ACTIVATIONS:
        raise errors.ConfigError(
            f"model.kwargs.last_activation={last_activation!r}; expected one of {ACTIVATIONS}."
        )
    return UNet(
        out_channels=out_channels,
        features=level_features(features, depth, max_features),
        norm=norm,
        residual=residual,
        deep_supervision=deep_supervision,
        remat=remat,
        dtype=None if dtype is None else jnp.dtype(dtype),
    )
