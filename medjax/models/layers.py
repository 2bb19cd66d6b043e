"""Building blocks shared by the UNet family, written once for 2D and 3D (channels-last).

The spatial rank comes from the input: ``x`` is ``[B, *spatial, C]`` with 2 or 3 spatial axes.
Convolutions run in the formulation a model names (``conv_impl``, from the config's
``model.conv_impl``; see ``medjax.models.conv_impls``) with ``nn.Conv``'s parameters, so
checkpoints do not depend on it. Pooling lives in ``medjax.models.pooling``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from medjax import errors
from medjax.models import conv_impls

NORMS = ("batch", "instance", "group", "none")


def conv(
    features: int,
    kernel_size: int | Sequence[int],
    num_spatial: int,
    *,
    impl: str = "auto",
    **kwargs: Any,
) -> nn.Conv:
    """An ``nn.Conv`` ('SAME' padding unless given) whose convolution runs as ``impl``.

    Created inside a compact module it is auto-named ``Conv_<i>`` like any ``nn.Conv``, with
    the kernel ``[*k, C_in, C_out]`` and bias ``[C_out]``: checkpoints are shared across impls.

    Args:
      features: output channels ``C_out``.
      kernel_size: one size for every spatial axis, or one per axis.
      num_spatial: number of spatial axes (2 for ``[B, H, W, C]``, 3 for ``[B, D, H, W, C]``).
      impl: ``"xla"`` | ``"im2col"`` | ``"depth2d"`` | ``"auto"``, see
        ``conv_impls.conv_general_dilated_fn``.
      **kwargs: other ``nn.Conv`` fields (``strides``, ``use_bias``, ``dtype``, ``name``, ...).

    Returns:
      The module; call it on ``[B, *spatial, C_in]`` to get ``[B, *spatial_out, C_out]``.
    """
    if isinstance(kernel_size, int):
        kernel_size = (kernel_size,) * num_spatial
    kwargs.setdefault("padding", "SAME")
    return nn.Conv(
        features,
        tuple(kernel_size),
        conv_general_dilated=conv_impls.conv_general_dilated_fn(impl),
        **kwargs,
    )


def make_norm(norm: str, train: bool, groups: int = 8) -> Callable[[jax.Array], jax.Array]:
    """Returns a normalisation layer by name; statistics are computed in float32.

    ``instance`` is GroupNorm with one group per channel (nnU-Net's InstanceNorm); it needs no
    mutable state, which suits the small per-device batches of 3D training.
    """
    if norm == "batch":
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=jnp.float32)
    if norm == "instance":
        return nn.GroupNorm(num_groups=None, group_size=1, dtype=jnp.float32)
    if norm == "group":
        return lambda x: nn.GroupNorm(num_groups=min(groups, x.shape[-1]), dtype=jnp.float32)(x)
    if norm == "none":
        return lambda x: x
    raise errors.ConfigError(f"Unknown norm {norm!r}; expected one of {NORMS}.")


class ConvNormAct(nn.Module):
    """Conv (kernel 3, 'SAME') -> norm -> ReLU on ``[B, *spatial, C]``.

    ``impl`` picks the convolution's formulation (see the module docstring); the parameters are
    those of ``nn.Conv`` (``Conv_0/kernel [3, ..., 3, C_in, features]``) whatever it is.
    """

    features: int
    norm: str = "batch"
    strides: int = 1
    dtype: Any = None  # None: computed in the inputs' and parameters' dtype
    impl: str = "auto"
    # One size for every axis or one per axis, e.g. (1, 3, 3): in-plane only for thick slices.
    kernel_size: int | Sequence[int] = 3

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """``float[B, *spatial, C] -> [B, *spatial / strides, features]``."""
        nd = x.ndim - 2
        x = conv(
            self.features,
            self.kernel_size,
            nd,
            impl=self.impl,
            strides=(self.strides,) * nd,
            use_bias=self.norm == "none",
            dtype=self.dtype,
        )(x)
        x = make_norm(self.norm, train)(x).astype(x.dtype)
        return nn.relu(x)


class ConvBlock(nn.Module):
    """Two ConvNormAct layers; with ``residual`` a projected identity skip is added (ResEnc)."""

    features: int
    norm: str = "batch"
    residual: bool = False
    dtype: Any = None  # None: computed in the inputs' and parameters' dtype
    impl: str = "auto"  # convolution formulation, see the module docstring
    kernel_size: int | Sequence[int] = 3  # see ConvNormAct

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """``float[B, *spatial, C] -> [B, *spatial, features]``."""
        kw = dict(dtype=self.dtype, impl=self.impl, kernel_size=self.kernel_size)
        y = ConvNormAct(self.features, self.norm, **kw)(x, train)
        y = ConvNormAct(self.features, self.norm, **kw)(y, train)
        if not self.residual:
            return y
        if x.shape[-1] != self.features:
            x = nn.Dense(self.features, use_bias=False, dtype=self.dtype, name="proj")(x)
        return y + x


class UpsampleMatmul(nn.Module):
    """A 2x transposed convolution (kernel 2, stride 2) written as one matmul + depth-to-space.

    ``factors`` gives one factor per spatial axis instead (e.g. ``(1, 2, 2)``: no upsampling
    along a thick-slice axis that was never pooled); None is 2 on every axis.

    Numerically the same map as ``nn.ConvTranspose(features, (2,)*nd, strides=(2,)*nd)``: each
    input voxel emits a ``2^nd`` block of outputs, each a linear map of that voxel's channels.
    XLA's gradient of the strided transposed convolution is very slow on GPU in 3D (measured
    6.9 -> 26.5 samples/s fp32 on a 3D UNet by writing it this way), so this is the default.
    """

    features: int
    dtype: Any = None  # None: computed in the inputs' and parameters' dtype
    factors: Sequence[int] | None = None  # per spatial axis; None: 2 on every axis

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        nd = x.ndim - 2
        b, spatial = x.shape[0], x.shape[1:-1]
        factors = (2,) * nd if self.factors is None else tuple(int(f) for f in self.factors)
        y = nn.Dense(self.features * int(np.prod(factors)), dtype=self.dtype)(x)
        # [B, *S, f0, ..., f_n, F] -> interleave each factor after its spatial axis.
        y = y.reshape(b, *spatial, *factors, self.features)
        perm = [0]
        for a in range(nd):
            perm += [1 + a, 1 + nd + a]
        perm.append(1 + 2 * nd)
        y = y.transpose(perm)
        return y.reshape(b, *(f * s for f, s in zip(factors, spatial, strict=True)), self.features)
