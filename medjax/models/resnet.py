"""ResNet-18/34/50/101/152 (He et al. 2016, torchvision's v1.5 layout), 2D and 3D.

The same module builds 2D kernels for ``[B, H, W, C]`` and 3D kernels for ``[B, D, H, W, C]``.
With ``depth``, ``width=64``, ``norm="batch"``, 3 input channels and 1000 classes the parameter
count is torchvision's: 11,689,512 (ResNet-18) and 25,557,032 (ResNet-50); bottleneck blocks
stride in the 3x3 conv (v1.5).

``small_input=True`` replaces the ImageNet stem (7x7 stride-2 conv + 3x3 stride-2 max-pool, a 4x
downsampling) by one 3x3 stride-1 conv, as for CIFAR: medical cutouts of 32-64 voxels would
otherwise be reduced to a few voxels before the first residual stage.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from medjax import errors, registry
from medjax.models import classifiers

# (block type, blocks per stage) per depth, as in torchvision.
STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
_EXPANSION = {"basic": 1, "bottleneck": 4}
# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu") for every conv.
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features: int, kernel: int, nd: int, strides: int = 1, name: str | None = None):
    return nn.Conv(
        features,
        (kernel,) * nd,
        strides=(strides,) * nd,
        padding=classifiers.pad_same(kernel, nd),
        use_bias=False,  # a norm follows every conv
        kernel_init=_CONV_INIT,
        name=name,
    )


class ResidualBlock(nn.Module):
    """Basic (two 3x3 convs) or bottleneck (1x1, 3x3, 1x1 x4) residual block.

    Attributes:
      features: inner width; the block outputs ``features * expansion`` channels.
      strides: stride of the (middle) 3x3 conv and of the projection shortcut.
      kind: ``"basic"`` or ``"bottleneck"``.
      norm: see ``classifiers.make_norm``.
    """

    features: int
    strides: int
    kind: str
    norm: str

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """``[B, *spatial, C] -> [B, *ceil(spatial / strides), features * expansion]``."""
        nd = x.ndim - 2
        out_features = self.features * _EXPANSION[self.kind]

        def norm(f: int, name: str, **kw) -> nn.Module:
            return classifiers.make_norm(self.norm, f, train, name=name, **kw)

        residual = x
        if self.kind == "basic":
            y = _conv(self.features, 3, nd, self.strides, name="conv1")(x)
            y = nn.relu(norm(self.features, "norm1")(y))
            y = _conv(self.features, 3, nd, name="conv2")(y)
            y = norm(self.features, "norm2")(y)
        else:
            y = _conv(self.features, 1, nd, name="conv1")(x)
            y = nn.relu(norm(self.features, "norm1")(y))
            y = _conv(self.features, 3, nd, self.strides, name="conv2")(y)
            y = nn.relu(norm(self.features, "norm2")(y))
            y = _conv(out_features, 1, nd, name="conv3")(y)
            y = norm(out_features, "norm3")(y)
        if self.strides != 1 or x.shape[-1] != out_features:
            residual = _conv(out_features, 1, nd, self.strides, name="proj_conv")(x)
            residual = norm(out_features, "proj_norm")(residual)
        return nn.relu(y + residual)


class ResNet(nn.Module):
    """ResNet classifier, 2D or 3D by input rank.

    Attributes:
      depth: 18, 34, 50, 101 or 152.
      num_classes: logits per example.
      in_channels: expected input channels (checked when set).
      width: channels of the stem and first stage (64 in the paper); stage ``i`` has
        ``width * 2**i`` (times 4 for bottlenecks).
      norm: ``"batch"``, ``"group"`` or ``"instance"``.
      small_input: 3x3 stride-1 stem without max-pool (for small medical inputs).
      dropout: dropout before the head; with ``rate > 0`` training needs ``rngs={"dropout": k}``.
    """

    depth: int = 18
    num_classes: int = 2
    in_channels: int | None = None
    width: int = 64
    norm: str = "batch"
    small_input: bool = False
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits for ``float32[B, *spatial, C]`` (any spatial size >= 1) -> ``float32[B, K]``."""
        nd = classifiers.spatial_rank(x, self.in_channels, "ResNet")
        kind, stages = STAGES[self.depth]
        if self.small_input:
            x = _conv(self.width, 3, nd, name="stem_conv")(x)
            x = nn.relu(classifiers.make_norm(self.norm, self.width, train, name="stem_norm")(x))
        else:
            x = _conv(self.width, 7, nd, strides=2, name="stem_conv")(x)
            x = nn.relu(classifiers.make_norm(self.norm, self.width, train, name="stem_norm")(x))
            x = nn.max_pool(x, (3,) * nd, strides=(2,) * nd, padding=((1, 1),) * nd)
        for i, num_blocks in enumerate(stages):
            for j in range(num_blocks):
                x = ResidualBlock(
                    self.width * 2**i,
                    strides=2 if i > 0 and j == 0 else 1,
                    kind=kind,
                    norm=self.norm,
                    name=f"stage{i + 1}_block{j + 1}",
                )(x, train)
        x = classifiers.global_avg_pool(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="head")(x)


@registry.register("models.resnet")
def get_resnet(
    depth: int = 18,
    num_classes: int = 2,
    in_channels: int | None = None,
    width: int = 64,
    norm: str = "batch",
    small_input: bool = False,
    dropout: float = 0.0,
) -> ResNet:
    """Factory of ``ResNet`` (see its attributes).

    Raises:
      ConfigError: unknown ``depth`` or ``norm``.
    """
    if depth not in STAGES:
        raise errors.ConfigError(
            f"Unknown model.kwargs.depth {depth!r} for resnet; expected one of {sorted(STAGES)}."
        )
    return ResNet(
        depth=depth,
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
        norm=classifiers.check_norm(norm),
        small_input=small_input,
        dropout=dropout,
    )
