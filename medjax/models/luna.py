"""LunaModel: the nodule classifier of "Deep Learning with PyTorch" (ch. 11), in Flax.

Layer for layer the book's ``p2ch11/model.py`` (and ``/work/shared/bench``'s torch and Flax
versions): batch norm over the input channel, four blocks of ``[conv3 + bias, ReLU, conv3 + bias,
ReLU, max-pool 2]`` with ``channels * 2**i`` features, flatten, linear head. The book's weight
init is kept (Kaiming-normal fan-out kernels, biases ``N(-1/sqrt(fan_out), 1/sqrt(fan_out))``).
The book's softmax output is dropped: the loss takes logits.

Parameter count for the book's configuration (1 channel, 8 base channels, 2 classes, a
``32 x 48 x 48`` cutout, so the head sees ``64 * 2 * 3 * 3 = 1152`` features)::

    input batch norm      scale + bias                          2
    block1  1 ->  8       27*1*8   + 8  +  27*8*8   + 8     1,960
    block2  8 -> 16       27*8*16  + 16 +  27*16*16 + 16   10,400
    block3 16 -> 32       27*16*32 + 32 +  27*32*32 + 32   41,536
    block4 32 -> 64       27*32*64 + 64 +  27*64*64 + 64  166,016
    head   1152 -> 2      1152*2 + 2                        2,306
    total                                                 222,220

which is torch's ``sum(p.numel() for p in LunaModel().parameters())`` (the running mean and
variance are buffers there and ``batch_stats`` here). The head's input size follows the input
shape, as the flatten does in torch. ``num_blocks`` (4 in the book) is a sweep knob: fewer blocks
keep more resolution before the head, more need larger cutouts (``2**num_blocks`` per axis).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from medjax import errors, registry
from medjax.models import classifiers, conv_impls, pooling

# The book's init: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu").
_KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _book_bias(fan_out: int) -> nn.initializers.Initializer:
    """``normal_(bias, mean=-1/sqrt(fan_out), std=1/sqrt(fan_out))``, as the book writes it."""
    bound = 1.0 / np.sqrt(fan_out)

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return -bound + bound * jax.random.normal(key, shape, dtype)

    return init


class LunaBlock(nn.Module):
    """Two (conv 3, bias, ReLU) layers then a 2x max-pool (floor, as torch)."""

    features: int
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, *spatial, C] -> [B, *spatial // 2, features]``."""
        nd = x.ndim - 2
        for name in ("conv1", "conv2"):
            x = nn.Conv(
                self.features,
                (3,) * nd,
                padding=1,
                kernel_init=_KAIMING_FAN_OUT,
                bias_init=_book_bias(self.features * 3**nd),
                # "auto", 3D on CPU: shifted views + one matmul (1.5x per LunaModel step on 2
                # cores, benchmarks/RESULTS.md); XLA's convolution elsewhere. Same parameters.
                conv_general_dilated=conv_impls.conv_general_dilated_fn(self.conv_impl),
                name=name,
            )(x)
            x = nn.relu(x)
        return pooling.max_pool2(x)  # nn.max_pool's values, a faster CPU gradient


class LunaModel(nn.Module):
    """The book's LunaModel, ndim-generic.

    Attributes:
      num_classes: logits per example (2: nodule / not nodule).
      in_channels: expected input channels (checked when set; Flax infers it anyway).
      channels: features of the first block; block ``i`` has ``channels * 2**i``.
      num_blocks: conv blocks, each halving every spatial axis (4 in the book).
      dropout: dropout rate before the head (0 in the book); with ``rate > 0`` training needs
        ``rngs={"dropout": key}``.
      conv_impl: formulation of the convolutions (``layers``); the parameters do not depend on
        it.
    """

    num_classes: int = 2
    in_channels: int | None = 1
    channels: int = 8
    dropout: float = 0.0
    num_blocks: int = 4
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits for a batch of cutouts.

        Args:
          x: ``float32[B, D, H, W, C]`` or ``float32[B, H, W, C]``; each spatial size
            >= ``2**num_blocks`` (16 for the book's 4 blocks).
          train: batch statistics (update them with ``mutable=["batch_stats"]``) and dropout.

        Returns:
          ``float32[B, num_classes]`` logits.
        """
        classifiers.spatial_rank(x, self.in_channels, "LunaModel")
        if self.num_blocks < 1 or min(x.shape[1:-1]) < 2**self.num_blocks:
            # Each block halves every axis (floor): past that, the head would see no voxel.
            raise errors.ConfigError(
                f"LunaModel: model.kwargs.num_blocks={self.num_blocks} needs num_blocks >= 1 and "
                f"inputs of at least {2 ** max(self.num_blocks, 0)} voxels per spatial axis; "
                f"got shape {x.shape}."
            )
        # torch BatchNorm3d defaults: momentum 0.1 (= 0.9 decay here), eps 1e-5.
        x = nn.BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=1e-5, name="tail_batchnorm"
        )(x)
        for i in range(self.num_blocks):
            x = LunaBlock(self.channels * 2**i, self.conv_impl, name=f"block{i + 1}")(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(
            self.num_classes,
            kernel_init=_KAIMING_FAN_OUT,
            bias_init=_book_bias(self.num_classes),
            name="head_linear",
        )(x)


@registry.register("models.luna", "models.LunaModel")
def get_luna(
    num_classes: int = 2,
    in_channels: int | None = 1,
    channels: int = 8,
    dropout: float = 0.0,
    num_blocks: int = 4,
    conv_impl: str = "auto",
) -> LunaModel:
    """Factory of ``LunaModel`` (see its attributes): ``[B, *spatial, C]`` -> logits ``[B, K]``.

    Raises:
      ConfigError: an unknown ``conv_impl`` (the config's ``model.conv_impl``).
    """
    conv_impls.check_conv_impl(conv_impl, "model.conv_impl")
    return LunaModel(
        num_classes=num_classes,
        in_channels=in_channels,
        channels=channels,
        dropout=dropout,
        num_blocks=num_blocks,
        conv_impl=conv_impl,
    )
