"""Vision Transformer (Dosovitskiy et al. 2021), 2D and 3D patch embedding.

A non-overlapping conv (kernel = stride = patch) embeds ``[B, *spatial, C]`` into tokens, a
learned position embedding is added, then pre-LayerNorm encoder blocks (multi-head
self-attention and a GELU MLP, each residual) and a final LayerNorm; the head reads the class
token or the mean of the patch tokens. ViT-B/16 (patch 16, width 768, depth 12, 12 heads, MLP
3072, class token) at 224^2 x 3 with 1000 classes has 86,567,656 parameters, as timm's
``vit_base_patch16_224``. The position embedding has one entry per token, so a model is tied to
the input size it was initialised with; every spatial size must be a multiple of the patch.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax import errors, registry
from medjax.models import classifiers

POOLS = ("cls", "mean")


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: ``x + MHSA(LN(x))`` then ``x + MLP(LN(x))``.

    Attributes:
      num_heads: attention heads (must divide the width).
      mlp_dim: hidden width of the MLP.
      dropout: dropout on the attention weights and after each MLP layer.
    """

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """``float32[B, N, width] -> float32[B, N, width]``."""
        y = nn.LayerNorm(epsilon=1e-6, name="ln1")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dropout_rate=self.dropout, name="attn"
        )(y, y, deterministic=not train)
        x = x + y
        y = nn.LayerNorm(epsilon=1e-6, name="ln2")(x)
        y = nn.gelu(nn.Dense(self.mlp_dim, name="mlp1")(y), approximate=False)
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        y = nn.Dense(x.shape[-1], name="mlp2")(y)
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        return x + y


class ViT(nn.Module):
    """ViT classifier, 2D or 3D by input rank.

    Attributes:
      num_classes: logits per example.
      in_channels: expected input channels (checked when set).
      patch_size: patch edge, one int for all axes or one per spatial axis.
      width: token dimension.
      depth: number of encoder blocks.
      num_heads: attention heads.
      mlp_dim: MLP hidden width.
      pool: ``"cls"`` (a learned class token) or ``"mean"`` (mean of the patch tokens).
      dropout: dropout rate; ``> 0`` means training needs ``rngs={"dropout": key}``.
    """

    num_classes: int = 2
    in_channels: int | None = None
    patch_size: int | Sequence[int] = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    pool: str = "cls"
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits for ``float32[B, *spatial, C]`` -> ``float32[B, K]``.

        Raises:
          ValueError: a spatial size is not a multiple of the patch size.
        """
        nd = classifiers.spatial_rank(x, self.in_channels, "ViT")
        patch = (
            (self.patch_size,) * nd if isinstance(self.patch_size, int) else tuple(self.patch_size)
        )
        if len(patch) != nd or any(s % p for s, p in zip(x.shape[1:-1], patch, strict=True)):
            raise ValueError(
                f"ViT: input spatial shape {x.shape[1:-1]} must be a multiple of the patch "
                f"size {patch}."
            )
        x = nn.Conv(self.width, patch, strides=patch, padding="VALID", name="patch_embed")(x)
        x = x.reshape(x.shape[0], -1, self.width)
        if self.pool == "cls":
            cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.width))
            x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.width)), x], axis=1)
        pos = self.param(
            "pos_embed", nn.initializers.normal(stddev=0.02), (1, x.shape[1], self.width)
        )
        x = nn.Dropout(self.dropout, deterministic=not train)(x + pos)
        for i in range(self.depth):
            x = EncoderBlock(self.num_heads, self.mlp_dim, self.dropout, name=f"block{i + 1}")(
                x, train
            )
        x = nn.LayerNorm(epsilon=1e-6, name="ln_final")(x)
        x = x[:, 0] if self.pool == "cls" else jnp.mean(x, axis=1)
        # Zero head as big_vision: initial logits are 0, so the initial loss is log(K).
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="head")(x)


@registry.register("models.vit")
def get_vit(
    num_classes: int = 2,
    in_channels: int | None = None,
    patch_size: int | Sequence[int] = 16,
    width: int = 768,
    depth: int = 12,
    num_heads: int = 12,
    mlp_dim: int = 3072,
    pool: str = "cls",
    dropout: float = 0.0,
) -> ViT:
    """Factory of ``ViT`` (see its attributes; the defaults are ViT-B/16).

    Raises:
      ConfigError: unknown ``pool`` or a ``width`` not divisible by ``num_heads``.
    """
    if pool not in POOLS:
        raise errors.ConfigError(f"Unknown model.kwargs.pool {pool!r}; expected one of {POOLS}.")
    if width % num_heads:
        raise errors.ConfigError(
            f"model.kwargs.width={width} must be divisible by model.kwargs.num_heads={num_heads}."
        )
    return ViT(
        num_classes=num_classes,
        in_channels=in_channels,
        patch_size=patch_size if isinstance(patch_size, int) else tuple(patch_size),
        width=width,
        depth=depth,
        num_heads=num_heads,
        mlp_dim=mlp_dim,
        pool=pool,
        dropout=dropout,
    )
