"""DeepLabV3+ (Chen et al. 2018, arXiv:1802.02611) with a dilated ResNet encoder, 2D and 3D.

Encoder: a ResNet (He et al. 2016; torchvision layout, v1.5 bottlenecks) whose last stage
(output stride 16) or last two stages (output stride 8) trade their stride for dilation, as
torchvision's ``replace_stride_with_dilation``. ASPP on the deepest features: a 1x1 conv, three
3x3 atrous convs with rates ``(6, 12, 18) * 16 / output_stride`` and image pooling, fused by a
1x1 conv. Decoder: the ASPP output is upsampled to the stride-4 features of the first stage,
concatenated with their 48-channel 1x1 projection, refined by two 3x3 convs; the logits are
upsampled to the input size. All resampling is ``jax.image.resize(method="linear")``
(bi/trilinear with half-pixel centres, i.e. ``align_corners=False``).

Any spatial size works, odd ones included: strided layers give ``ceil(size / 2)`` and the
resizes restore exact sizes. The encoder is our own because ``models/resnet.py`` (the
classifier) neither dilates nor returns intermediate features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax import errors, registry
from medjax.models import layers, segmentation

# (block kind, blocks per stage) per ResNet depth. 10 is MedicalNet's (Med3D) smallest ResNet.
STAGES = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
OUTPUT_STRIDES = (8, 16)


class ConvNormAct(nn.Module):
    """Conv (any kernel, stride, dilation; symmetric padding) -> norm -> optional ReLU.

    The padding ``dilation * (kernel - 1) // 2`` keeps the size at stride 1 and gives
    ``ceil(size / stride)`` at stride 2 (the PyTorch layout the reference models use).
    """

    features: int
    kernel: int = 3
    strides: int = 1
    dilation: int = 1
    norm: str = "batch"
    act: bool = True
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """``[B, *S, C] -> [B, *ceil(S / strides), features]``."""
        nd = x.ndim - 2
        pad = self.dilation * (self.kernel - 1) // 2
        x = nn.Conv(
            self.features,
            (self.kernel,) * nd,
            strides=(self.strides,) * nd,
            kernel_dilation=(self.dilation,) * nd,
            padding=((pad, pad),) * nd,
            use_bias=self.norm == "none",  # a norm's offset makes a conv bias redundant
            dtype=self.dtype,
        )(x)
        x = layers.make_norm(self.norm, train)(x).astype(x.dtype)
        return nn.relu(x) if self.act else x


class ResBlock(nn.Module):
    """Basic (3x3, 3x3) or bottleneck (1x1, 3x3, 1x1 x4) residual block with dilation.

    Attributes:
      features: inner width; the block outputs ``features * (4 if bottleneck else 1)``.
      strides: stride of the first 3x3 conv (basic) or the middle one (bottleneck, v1.5).
      dilation: dilation of the 3x3 convs.
      bottleneck: block kind.
      norm: see ``layers.make_norm``.
      dtype: compute dtype; None follows inputs and parameters.
    """

    features: int
    strides: int = 1
    dilation: int = 1
    bottleneck: bool = False
    norm: str = "batch"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """``[B, *S, C] -> [B, *ceil(S / strides), out]``."""
        kw = {"norm": self.norm, "dtype": self.dtype}
        d = self.dilation
        if self.bottleneck:
            out = 4 * self.features
            y = ConvNormAct(self.features, 1, **kw)(x, train)
            y = ConvNormAct(self.features, 3, self.strides, d, **kw)(y, train)
            y = ConvNormAct(out, 1, act=False, **kw)(y, train)
        else:
            out = self.features
            y = ConvNormAct(self.features, 3, self.strides, d, **kw)(x, train)
            y = ConvNormAct(self.features, 3, 1, d, act=False, **kw)(y, train)
        if self.strides != 1 or x.shape[-1] != out:
            x = ConvNormAct(out, 1, self.strides, act=False, name="proj", **kw)(x, train)
        return nn.relu(y + x)


class DilatedResNet(nn.Module):
    """ResNet encoder returning the stride-4 features and the deepest (stride-OS) features.

    Stem: 7x7 stride-2 conv, norm, ReLU, 3x3 stride-2 max-pool (stride 4); stage 1 keeps the
    stride; stages 2-4 halve it until the output stride is reached, after which a stage's first
    block keeps the previous dilation and its later blocks double it (torchvision's rule).

    Attributes:
      stages: ``(block kind, blocks per stage)``, a value of ``STAGES``.
      widths: inner width of each of the 4 stages.
      output_stride: 8 or 16.
      norm: see ``layers.make_norm``.
      remat: rematerialise each residual block in the backward pass.
      dtype: compute dtype; None follows inputs and parameters.
    """

    stages: tuple[str, Sequence[int]] = STAGES[18]
    widths: Sequence[int] = (64, 128, 256, 512)
    output_stride: int = 16
    norm: str = "batch"
    remat: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        """``[B, *S, C]`` -> (``[B, *ceil(S/4), c1]``, ``[B, *ceil(S/OS), c4]``)."""
        nd = x.ndim - 2
        block = nn.remat(ResBlock, static_argnums=(2,)) if self.remat else ResBlock
        kind, blocks = self.stages
        x = ConvNormAct(self.widths[0], 7, 2, norm=self.norm, dtype=self.dtype, name="stem")(
            x, train
        )
        x = nn.max_pool(x, (3,) * nd, strides=(2,) * nd, padding=((1, 1),) * nd)
        stride, dilation, low_level = 4, 1, x
        for i, (width, num_blocks) in enumerate(zip(self.widths, blocks, strict=True)):
            first_stride, first_dilation = 1 if i == 0 else 2, dilation
            if first_stride == 2 and stride * 2 > self.output_stride:
                first_stride, dilation = 1, dilation * 2
            stride *= first_stride
            for j in range(num_blocks):
                x = block(
                    width,
                    first_stride if j == 0 else 1,
                    first_dilation if j == 0 else dilation,
                    kind == "bottleneck",
                    self.norm,
                    self.dtype,
                    name=f"stage{i + 1}_block{j + 1}",
                )(x, train)
            if i == 0:
                low_level = x
        return low_level, x


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three atrous 3x3, image pooling; fused by a 1x1.

    The image-pooling branch normalises a single voxel per channel. Instance norm would map it
    to a constant, so that branch uses no norm (and a conv bias) when ``norm="instance"``.
    The paper's dropout after the fusion is omitted.

    Attributes:
      features: channels of every branch and of the output (256 in the paper).
      rates: dilation rates of the three 3x3 branches (already scaled for the output stride).
      norm: see ``layers.make_norm``.
      dtype: compute dtype; None follows inputs and parameters.
    """

    features: int = 256
    rates: Sequence[int] = (6, 12, 18)
    norm: str = "batch"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """``[B, *S, C] -> [B, *S, features]``."""
        kw = {"norm": self.norm, "dtype": self.dtype}
        branches = [ConvNormAct(self.features, 1, **kw)(x, train)]
        branches += [ConvNormAct(self.features, 3, 1, r, **kw)(x, train) for r in self.rates]
        spatial_axes = tuple(range(1, x.ndim - 1))
        pooled = jnp.mean(x, axis=spatial_axes, keepdims=True)
        pool_norm = "none" if self.norm == "instance" else self.norm
        pooled = ConvNormAct(self.features, 1, norm=pool_norm, dtype=self.dtype, name="pool")(
            pooled, train
        )
        # Upsampling a 1-voxel map bi/trilinearly is a broadcast.
        branches.append(jnp.broadcast_to(pooled, (*x.shape[:-1], self.features)))
        x = jnp.concatenate(branches, axis=-1)
        return ConvNormAct(self.features, 1, name="project", **kw)(x, train)


def _resize(x: jax.Array, spatial: Sequence[int]) -> jax.Array:
    """Bi/trilinear resize of ``[B, *S, C]`` to ``[B, *spatial, C]`` (half-pixel centres)."""
    if tuple(x.shape[1:-1]) == tuple(spatial):
        return x
    return jax.image.resize(x, (x.shape[0], *spatial, x.shape[-1]), method="linear")


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+: dilated ResNet encoder, ASPP, low-level decoder, resized logits.

    Parameter count (2D, ``resnet_depth=10, features=4`` -> widths (4, 8, 16, 32),
    ``aspp_features=8, low_level_features=4``, 1 input channel, K=2, ``norm="none"`` so every
    conv has a bias; a kxk conv a->b has k*k*a*b+b parameters):
      stem 7x7 1->4: 200;  stage1 4->4->4: 148+148 = 296;
      stage2 3x3 4->8, 8->8, proj 4->8: 296+584+40 = 920;
      stage3 8->16, 16->16, proj: 1168+2320+144 = 3632;
      stage4 16->32, 32->32, proj: 4640+9248+544 = 14432;      encoder 19480
      ASPP: 1x1 32->8: 264; three 3x3 32->8: 3*2312 = 6936; pool 1x1: 264;
            project 40->8: 328;                                  ASPP 7792
      decoder: low-level 1x1 4->4: 20; 3x3 12->8: 872; 3x3 8->8: 584; classifier 8->2: 18
                                                                 decoder 1494
      Total **28766** (the count does not depend on the output stride).

    Attributes:
      out_channels: number of output logits K (1: binary with sigmoid; >1: softmax classes).
      resnet_depth: a key of ``STAGES``.
      widths: inner width of the 4 encoder stages.
      output_stride: 8 or 16; the encoder's deepest features are at ``ceil(size / OS)``.
      aspp_rates: atrous rates at output stride 16 (doubled at 8).
      aspp_features: channels of ASPP and of the decoder's 3x3 convs (256 in the paper).
      low_level_features: channels of the low-level projection (48 in the paper).
      norm: ``batch`` | ``instance`` | ``group`` | ``none``.
      remat: rematerialise each residual block in the backward pass.
      dtype: compute dtype; None follows inputs and parameters.
      head_prior: initial foreground probability of the head (``segmentation.head``); 0: none.

    Returns logits ``float32[B, *spatial, K]`` at the input's spatial size.
    """

    out_channels: int = 1
    resnet_depth: int = 50
    widths: Sequence[int] = (64, 128, 256, 512)
    output_stride: int = 16
    aspp_rates: Sequence[int] = (6, 12, 18)
    aspp_features: int = 256
    low_level_features: int = 48
    norm: str = "batch"
    remat: bool = False
    dtype: Any = None
    head_prior: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        segmentation.check_input(x, 1, "DeepLabV3Plus")
        spatial = x.shape[1:-1]
        if self.dtype is not None:
            x = x.astype(self.dtype)
        kw = {"norm": self.norm, "dtype": self.dtype}
        low, high = DilatedResNet(
            STAGES[self.resnet_depth],
            tuple(self.widths),
            self.output_stride,
            self.norm,
            self.remat,
            self.dtype,
            name="encoder",
        )(x, train)
        rates = tuple(r * 16 // self.output_stride for r in self.aspp_rates)
        high = ASPP(self.aspp_features, rates, name="aspp", **kw)(high, train)
        low = ConvNormAct(self.low_level_features, 1, name="low_level", **kw)(low, train)
        y = jnp.concatenate([_resize(high, low.shape[1:-1]), low], axis=-1)
        y = ConvNormAct(self.aspp_features, 3, name="decoder1", **kw)(y, train)
        y = ConvNormAct(self.aspp_features, 3, name="decoder2", **kw)(y, train)
        logits = segmentation.head(self.out_channels, self.dtype, "head", self.head_prior)(y)
        return _resize(logits.astype(jnp.float32), spatial)


@registry.register("models.deeplab", "models.deeplabv3plus", "models.DeepLabV3Plus")
def get_deeplab(
    *,
    in_channels: int = 1,
    num_classes: int = 1,
    resnet_depth: int = 50,
    features: int | Sequence[int] = 64,
    max_features: int = 512,
    output_stride: int = 16,
    aspp_rates: Sequence[int] = (6, 12, 18),
    aspp_features: int = 256,
    low_level_features: int = 48,
    use_batch_norm: bool | None = None,
    norm: str = "batch",
    deep_supervision: bool = False,
    remat: bool = False,
    dtype: str | None = None,
    head_prior: float = 0.0,
) -> DeepLabV3Plus:
    """Builds DeepLabV3+ with the options of ``segmentation.build`` that apply.

    ``depth`` is not one of them: the encoder always has a stem and 4 stages, and
    ``resnet_depth`` picks their blocks. Deep supervision is not defined for DeepLabV3+.

    Args:
      in_channels: input channels (the config's ``model.in_channels``; checked by the trainer
        against the data).
      num_classes: logits K (the config's ``model.num_classes``; 1: sigmoid; >1: softmax).
      resnet_depth: 10, 18, 34 (basic blocks), 50 or 101 (bottlenecks).
      features: width of the stem and stage 1 (doubled per stage, capped at ``max_features``;
        64 in the paper) or the 4 stage widths.
      max_features: cap of the doubled widths.
      output_stride: 8 or 16 (the paper trains at 16).
      aspp_rates: the three atrous rates at output stride 16.
      aspp_features: channels of ASPP and the decoder convs.
      low_level_features: channels of the low-level projection.
      use_batch_norm: the seed's switch; True -> ``norm="batch"``, False -> ``norm="none"``.
      norm: ``batch`` | ``instance`` | ``group`` | ``none``.
      deep_supervision: must be False.
      remat: rematerialise each residual block in the backward pass.
      dtype: compute dtype name; None follows the inputs and parameters.
      head_prior: initial foreground probability of the head (``segmentation.head``); 0: none.

    Returns:
      The module; ``apply(variables, x float32[B, *spatial, C], train=bool)`` gives logits
      ``float32[B, *spatial, K]`` for any spatial size.

    Raises:
      ConfigError: an unknown depth, output stride or norm; three rates not given;
        deep supervision asked for.
    """
    del in_channels
    if resnet_depth not in STAGES:
        raise errors.ConfigError(
            f"model.kwargs.resnet_depth={resnet_depth!r}; expected one of {sorted(STAGES)}."
        )
    if output_stride not in OUTPUT_STRIDES:
        raise errors.ConfigError(
            f"model.kwargs.output_stride={output_stride!r}; expected one of {OUTPUT_STRIDES}."
        )
    if len(aspp_rates) != 3:
        raise errors.ConfigError(f"model.kwargs.aspp_rates needs 3 rates, got {aspp_rates!r}.")
    if deep_supervision:
        raise errors.ConfigError(
            "model.deep_supervision=True is not supported by deeplab (one output scale)."
        )
    return DeepLabV3Plus(
        out_channels=num_classes,
        resnet_depth=resnet_depth,
        widths=segmentation.level_features(features, 4, max_features),
        output_stride=output_stride,
        aspp_rates=tuple(int(r) for r in aspp_rates),
        aspp_features=aspp_features,
        low_level_features=low_level_features,
        norm=segmentation.resolve_norm(norm, use_batch_norm),
        remat=remat,
        dtype=segmentation.compute_dtype(dtype),
        head_prior=float(head_prior),
    )
