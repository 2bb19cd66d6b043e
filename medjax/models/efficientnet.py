"""EfficientNet B0-B3 (Tan & Le 2019), 2D and 3D, with MBConv blocks and squeeze-excitation.

The B0 stages and the compound scaling (channels ``x width`` rounded to multiples of 8, layers
``ceil(x depth)``) follow the paper and torchvision's ``efficientnet_b*``: with 3 input channels
and 1000 classes B0 has 5,288,548 parameters (batch-norm statistics excluded), as torchvision.
Kernels are 2D or 3D from the input rank; ``resolution`` in ``VARIANTS`` is the paper's input
size, a hint for configs (the network itself accepts any size).

Dropout and stochastic depth default to 0 so training needs no ``dropout`` key; the paper uses
``VARIANTS[v].dropout`` before the head and 0.2 stochastic depth.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax import errors, registry
from medjax.models import classifiers


@dataclasses.dataclass(frozen=True)
class Variant:
    """Compound-scaling coefficients of one EfficientNet variant (paper, Table/Sec. 3.3)."""

    width: float
    depth: float
    resolution: int
    dropout: float


VARIANTS = {
    "b0": Variant(1.0, 1.0, 224, 0.2),
    "b1": Variant(1.0, 1.1, 240, 0.2),
    "b2": Variant(1.1, 1.2, 260, 0.3),
    "b3": Variant(1.2, 1.4, 300, 0.3),
}

# B0 stages: (expand ratio, kernel, stride, output channels, layers).
B0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
_STEM, _HEAD = 32, 1280
# torchvision: kaiming_normal_(mode="fan_out") convs; Dense uniform(+-1/sqrt(out)).
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# TF reference batch norm: decay 0.99, eps 1e-3.
_BN = dict(momentum=0.99, epsilon=1e-3)


def round_channels(channels: float, divisor: int = 8) -> int:
    """Nearest multiple of ``divisor``, at most 10% below ``channels`` (``round_filters``)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


class MBConv(nn.Module):
    """Mobile inverted bottleneck: expand 1x1, depthwise kxk, squeeze-excite, project 1x1.

    Attributes:
      features: output channels.
      expand: expansion ratio of the hidden width.
      kernel: depthwise kernel size.
      strides: depthwise stride.
      norm: see ``classifiers.make_norm``.
      drop_path: probability of dropping the residual branch per example in training.
    """

    features: int
    expand: int
    kernel: int
    strides: int
    norm: str
    drop_path: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """``[B, *spatial, C] -> [B, *ceil(spatial / strides), features]``."""
        nd = x.ndim - 2
        in_features = x.shape[-1]
        hidden = in_features * self.expand

        def conv(f: int, k: int, name: str, strides: int = 1, groups: int = 1) -> nn.Module:
            return nn.Conv(
                f,
                (k,) * nd,
                strides=(strides,) * nd,
                padding=classifiers.pad_same(k, nd),
                feature_group_count=groups,
                use_bias=False,
                kernel_init=_CONV_INIT,
                name=name,
            )

        def norm(f: int, name: str) -> nn.Module:
            return classifiers.make_norm(self.norm, f, train, name=name, **_BN)

        y = x
        if self.expand != 1:
            y = nn.silu(norm(hidden, "expand_norm")(conv(hidden, 1, "expand_conv")(y)))
        y = conv(hidden, self.kernel, "dw_conv", self.strides, groups=hidden)(y)
        y = nn.silu(norm(hidden, "dw_norm")(y))
        # Squeeze-excitation: squeeze width is a quarter of the block's *input* channels.
        s = jnp.mean(y, axis=tuple(range(1, nd + 1)), keepdims=True)
        s = nn.silu(nn.Conv(max(1, in_features // 4), (1,) * nd, name="se_reduce")(s))
        y = y * nn.sigmoid(nn.Conv(hidden, (1,) * nd, name="se_expand")(s))
        y = norm(self.features, "project_norm")(conv(self.features, 1, "project_conv")(y))
        if self.strides == 1 and in_features == self.features:
            if train and self.drop_path > 0:
                keep = 1.0 - self.drop_path
                mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
                mask = jax.random.bernoulli(self.make_rng("dropout"), keep, mask_shape)
                y = jnp.where(mask, y / keep, 0.0)
            y = y + x
        return y


class EfficientNet(nn.Module):
    """EfficientNet classifier, 2D or 3D by input rank.

    Attributes:
      variant: ``"b0"`` .. ``"b3"`` (scaling coefficients in ``VARIANTS``).
      num_classes: logits per example.
      in_channels: expected input channels (checked when set).
      width_scale: extra channel multiplier on top of the variant's (``< 1`` for tiny tests and
        small medical models); channels are still rounded to multiples of 8.
      depth_scale: extra layer multiplier on top of the variant's (layers stay >= 1 per stage;
        ``0.1`` gives one block per stage).
      norm: ``"batch"``, ``"group"`` or ``"instance"``.
      dropout: dropout before the head.
      stochastic_depth: drop-path rate of the last block (linearly ramped from 0 over blocks).
        Either rate ``> 0`` means training needs ``rngs={"dropout": key}``.
    """

    variant: str = "b0"
    num_classes: int = 2
    in_channels: int | None = None
    width_scale: float = 1.0
    depth_scale: float = 1.0
    norm: str = "batch"
    dropout: float = 0.0
    stochastic_depth: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits for ``float32[B, *spatial, C]`` (any spatial size >= 1) -> ``float32[B, K]``."""
        nd = classifiers.spatial_rank(x, self.in_channels, "EfficientNet")
        v = VARIANTS[self.variant]
        width = v.width * self.width_scale

        stem = round_channels(_STEM * width)
        x = nn.Conv(
            stem,
            (3,) * nd,
            strides=(2,) * nd,
            padding=classifiers.pad_same(3, nd),
            use_bias=False,
            kernel_init=_CONV_INIT,
            name="stem_conv",
        )(x)
        x = nn.silu(classifiers.make_norm(self.norm, stem, train, name="stem_norm", **_BN)(x))

        layers = [math.ceil(n * v.depth * self.depth_scale) for *_, n in B0_STAGES]
        total, index = sum(layers), 0
        for i, ((expand, kernel, stride, out, _), n) in enumerate(
            zip(B0_STAGES, layers, strict=True)
        ):
            for j in range(n):
                x = MBConv(
                    round_channels(out * width),
                    expand,
                    kernel,
                    stride if j == 0 else 1,
                    self.norm,
                    drop_path=self.stochastic_depth * index / total,
                    name=f"stage{i + 1}_block{j + 1}",
                )(x, train)
                index += 1

        head = round_channels(_HEAD * width)
        x = nn.Conv(head, (1,) * nd, use_bias=False, kernel_init=_CONV_INIT, name="head_conv")(x)
        x = nn.silu(classifiers.make_norm(self.norm, head, train, name="head_norm", **_BN)(x))
        x = classifiers.global_avg_pool(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="head")(x)


@registry.register("models.efficientnet")
def get_efficientnet(
    variant: str = "b0",
    num_classes: int = 2,
    in_channels: int | None = None,
    width_scale: float = 1.0,
    depth_scale: float = 1.0,
    norm: str = "batch",
    dropout: float = 0.0,
    stochastic_depth: float = 0.0,
) -> EfficientNet:
    """Factory of ``EfficientNet`` (see its attributes).

    Raises:
      ConfigError: unknown ``variant`` or ``norm``.
    """
    variant = variant.lower()
    if variant not in VARIANTS:
        raise errors.ConfigError(
            f"Unknown model.kwargs.variant {variant!r} for efficientnet; "
            f"expected one of {sorted(VARIANTS)}."
        )
    return EfficientNet(
        variant=variant,
        num_classes=num_classes,
        in_channels=in_channels,
        width_scale=width_scale,
        depth_scale=depth_scale,
        norm=classifiers.check_norm(norm),
        dropout=dropout,
        stochastic_depth=stochastic_depth,
    )
