"""UNet++ (Zhou et al. 2018, arXiv:1807.10165) for 2D and 3D segmentation.

Nested, dense skip pathways: node ``X^{i,j}`` (level ``i`` from the top, ``j`` convolution
blocks along the skip) sees every earlier node of its level and the upsampled node below,

    X^{i,0} = block(pool(X^{i-1,0}))                         (the encoder; X^{0,0} reads x)
    X^{i,j} = block(concat[X^{i,0}, ..., X^{i,j-1}, up(X^{i+1,j-1})])   for j >= 1,

with ``i + j <= L = depth - 1``. The output is a 1x1 conv of ``X^{0,L}``. With
``deep_supervision`` every top node ``X^{0,1..L}`` has its own head; all of these outputs are at
the input's full resolution. One module serves both ranks (``[B, H, W, C]`` or
``[B, D, H, W, C]``); spatial sizes must be divisible by ``2**(depth-1)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax import registry
from medjax.models import layers, pooling, segmentation


class UNetPlusPlus(nn.Module):
    """UNet++ with optional deep supervision over the top row of nested nodes.

    Blocks are ``layers.ConvBlock`` (two conv-norm-ReLU) and upsampling is
    ``layers.UpsampleMatmul`` (a 2x transposed conv), exactly as in ``unet.UNet``; with
    ``depth=2`` the two networks are the same. Node ``X^{i,j}`` has ``features[i]`` channels.

    Parameter count (2D, ``depth=3, features=4`` -> (4, 8, 16), 1 input channel, K=1,
    ``norm="none"``; a 3x3 conv a->b has 9ab+b parameters, a 1x1 conv a->b has ab+b):
      X00 1->4->4: 40+148 = 188;  X10 4->8->8: 296+584 = 880;  X20 8->16->16: 1168+2320 = 3488;
      X01 up 8->4*4: 144, block 8->4->4: 292+148 = 440  (584);
      X11 up 16->8*4: 544, block 16->8->8: 1160+584 = 1744  (2288);
      X02 up 8->4*4: 144, block 12->4->4: 436+148 = 584  (728);
      head 4->1: 5.   Total **8161**; with deep supervision one more head on X01: **8166**.

    Attributes:
      out_channels: number of output logits K (1: binary with sigmoid; >1: softmax classes).
      features: channels per level, e.g. ``(16, 32, 64, 128)``; its length is the depth.
      norm: ``batch`` | ``instance`` | ``group`` | ``none``.
      residual: residual encoder blocks ``X^{i,0}`` (nnU-Net's ResEnc flavour).
      deep_supervision: in training return the logits of ``X^{0,L}, X^{0,L-1}, ..., X^{0,1}``
        (a list; all at full resolution; the first is the final output, so the list follows
        ``unet.UNet``'s "main output first" order that ``losses.compound.deep_supervision``
        weights by position). In evaluation only ``X^{0,L}``'s logits are returned (the
        paper's pruning is not offered).
      remat: rematerialise each node's block in the backward pass.
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
        depth = len(self.features)
        segmentation.check_input(x, 2 ** (depth - 1), f"UNetPlusPlus of depth {depth}")
        block = nn.remat(layers.ConvBlock, static_argnums=(2,)) if self.remat else layers.ConvBlock
        if self.dtype is not None:
            x = x.astype(self.dtype)
        last = depth - 1
        nodes: dict[tuple[int, int], jax.Array] = {}
        for i, f in enumerate(self.features):
            inp = x if i == 0 else pooling.max_pool2(nodes[i - 1, 0])
            nodes[i, 0] = block(
                f, self.norm, self.residual, self.dtype, self.conv_impl, name=f"x{i}_0"
            )(inp, train)
        # Column by column: X^{i,j} needs X^{i+1,j-1}, which the previous column made.
        for j in range(1, depth):
            for i in range(depth - j):
                f = self.features[i]
                up = layers.UpsampleMatmul(f, self.dtype, name=f"up{i}_{j}")(nodes[i + 1, j - 1])
                inp = jnp.concatenate([nodes[i, k] for k in range(j)] + [up], axis=-1)
                nodes[i, j] = block(
                    f, self.norm, False, self.dtype, self.conv_impl, name=f"x{i}_{j}"
                )(inp, train)
        logits = segmentation.head(self.out_channels, self.dtype, "head", self.head_prior)(
            nodes[0, last]
        )
        logits = logits.astype(jnp.float32)
        # Heads are created at init whatever ``train`` is: the trainer initialises with
        # train=False and must still find the deep-supervision heads' parameters later.
        if self.deep_supervision and (train or self.is_initializing()):
            outputs = [
                segmentation.head(self.out_channels, self.dtype, f"ds{j}", self.head_prior)(
                    nodes[0, j]
                )
                for j in reversed(range(1, last))
            ]
            if train:
                return [logits] + [o.astype(jnp.float32) for o in outputs]
        return logits


get_unetpp = registry.register("models.unetpp", "models.UNetPlusPlus", "models.unet_plus_plus")(
    segmentation.factory(UNetPlusPlus)
)
