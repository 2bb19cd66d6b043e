"""Convolution formulations with ``nn.Conv``'s parameters, written once for 2D and 3D.

Convolutions can run in three formulations with the same parameters (``nn.Conv``'s kernel
``[*k, C_in, C_out]`` and bias ``[C_out]``, so checkpoints do not care which one ran):

* ``xla``: ``lax.conv_general_dilated``, XLA's native convolution (best on GPU/TPU, and for 2D on
  CPU, where it is within ~15 % of PyTorch's per layer);
* ``depth2d`` (3D only): the ``k_d`` depth-shifted views concatenated on the channel axis, depth
  folded into the batch, then XLA's *2D* convolution. XLA's CPU 3D convolution (above all its
  gradients) is several times slower than its 2D one; on 2 CPU cores a 3x3x3 layer's forward +
  backward ran 2.4-4.8x faster this way than with ``xla`` and 2-4x faster than ``im2col``
  (``benchmarks/RESULTS.md``), with a temporary only ``k_d`` times the input;
* ``im2col``: the ``prod(k)`` shifted views of the padded input concatenated on the channel axis
  and multiplied by the reshaped kernel in one matmul. It wins only for tiny 3D layers (an
  ``H x W`` plane of at most 64 voxels, the deepest UNet levels), by a few milliseconds; its
  temporary is ``prod(k)`` times the input. In 2D XLA's convolution is up to 4x faster.

``auto`` picks, on the CPU backend, ``depth2d`` for 3D convolutions (``im2col`` for the tiny
ones) and ``xla`` for 2D; ``xla`` on every other backend. It is decided at trace time from
``jax.default_backend()`` and the input's static shape (Python values, never traced). A model
takes the formulation as a field (``conv_impl``, set from the config's ``model.conv_impl``) and
hands it to its ``ConvBlock`` / ``conv`` layers.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from medjax import errors

CONV_IMPLS = ("xla", "im2col", "depth2d", "auto")


# At or below this many voxels per (H, W) plane a 3D layer is so small that im2col's one matmul
# beats depth2d's 2D convolution (by 1-4 ms per layer on 2 cores; benchmarks/RESULTS.md).
_DEPTH2D_MIN_PLANE = 64


def auto_conv_impl(
    num_spatial: int, backend: str | None = None, spatial: Sequence[int] | None = None
) -> str:
    """What ``impl="auto"`` means for a convolution with ``num_spatial`` spatial axes.

    Args:
      num_spatial: 2 or 3 (1 is treated like 2).
      backend: a JAX backend name; None reads ``jax.default_backend()`` (at trace time).
      spatial: the input's spatial shape, if known (3D on CPU: picks between two formulations).

    Returns:
      For 3D on ``cpu``: ``"depth2d"``, or ``"im2col"`` when ``spatial`` says an ``H x W``
      plane has at most 64 voxels; else ``"xla"`` (measured: see the module docstring).
    """
    backend = jax.default_backend() if backend is None else backend
    if backend != "cpu" or num_spatial < 3:
        return "xla"
    if spatial is not None and int(np.prod(spatial[-2:])) <= _DEPTH2D_MIN_PLANE:
        return "im2col"
    return "depth2d"


def _channels_last_numbers(ndim: int) -> lax.ConvDimensionNumbers:
    # The layout nn.Conv always passes: lhs [B, *S, C], rhs [*k, I, O], out [B, *S, C].
    lhs = (0, ndim - 1, *range(1, ndim - 1))
    rhs = (ndim - 1, ndim - 2, *range(ndim - 2))
    return lax.ConvDimensionNumbers(lhs, rhs, lhs)


def _is_trivial(values: Sequence[int] | None) -> bool:
    return values is None or all(int(v) == 1 for v in values)


def im2col_conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    **kwargs: Any,
) -> jax.Array:
    """``lax.conv_general_dilated`` computed as shifted views + one matmul (im2col).

    Drop-in for ``nn.Conv(..., conv_general_dilated=...)``. Handles channels-last inputs with any
    kernel size, stride and padding; configurations it does not cover (dilation, feature groups,
    other layouts, unknown keyword arguments) are passed on to ``lax.conv_general_dilated``, which
    computes the same map.

    Args:
      lhs: ``[B, *S, C_in]`` input.
      rhs: ``[*k, C_in, C_out]`` kernel.
      window_strides: stride per spatial axis.
      padding: ``"SAME"``, ``"VALID"`` or one ``(low, high)`` pair per spatial axis.
      lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, batch_group_count,
        precision, preferred_element_type, **kwargs: as ``lax.conv_general_dilated``.

    Returns:
      ``[B, *S_out, C_out]``, the cross-correlation ``lax.conv_general_dilated`` computes.
    """
    nd = lhs.ndim - 2
    numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    supported = (
        numbers == _channels_last_numbers(lhs.ndim)
        and _is_trivial(lhs_dilation)
        and _is_trivial(rhs_dilation)
        and feature_group_count == 1
        and batch_group_count == 1
        and not any(v is not None for v in kwargs.values())
    )
    if not supported:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
            **kwargs,
        )
    spatial, ksize = lhs.shape[1:-1], rhs.shape[:nd]
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(spatial, ksize, strides, padding)
    else:
        pads = [tuple(int(p) for p in pair) for pair in padding]
    # Negative padding (a crop) is legal in lax; lax.pad handles both signs, jnp.pad does not.
    x = lax.pad(
        lhs, jnp.zeros((), lhs.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)]
    )
    out = [
        (n + lo + hi - k) // s + 1
        for n, (lo, hi), k, s in zip(spatial, pads, ksize, strides, strict=True)
    ]
    # Views in the kernel's row-major offset order, so the concatenated channel index matches
    # rhs.reshape(-1, C_out): ((o_0 * k_1 + o_1) * k_2 + o_2) * C_in + c.
    views = [
        lax.slice(
            x,
            (0, *offset, 0),
            (
                x.shape[0],
                *(o + (m - 1) * s + 1 for o, m, s in zip(offset, out, strides, strict=True)),
                x.shape[-1],
            ),
            (1, *strides, 1),
        )
        for offset in itertools.product(*(range(k) for k in ksize))
    ]
    patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
    kernel = rhs.reshape(int(np.prod(ksize)) * rhs.shape[-2], rhs.shape[-1])
    return jnp.matmul(
        patches, kernel, precision=precision, preferred_element_type=preferred_element_type
    )


def depth2d_conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    **kwargs: Any,
) -> jax.Array:
    """A 3D ``lax.conv_general_dilated`` as depth offsets on channels + XLA's 2D convolution.

    The ``k_d`` depth-shifted views of the padded input are concatenated on the channel axis
    (``[B, D_out, H, W, k_d * C_in]``), depth is folded into the batch, and one 2D convolution
    with the kernel ``[k_h, k_w, k_d * C_in, C_out]`` does the rest. XLA's CPU 2D convolution
    and its gradients are close to PyTorch's, while its 3D ones are several times slower; the
    temporary is ``k_d`` (not ``prod(k)``, as im2col's) times the input. Drop-in for
    ``nn.Conv(..., conv_general_dilated=...)``; a 2D convolution goes to
    ``lax.conv_general_dilated``, a 3D one with dilation, groups or another layout to
    ``im2col_conv_general_dilated``.

    Args:
      lhs: ``[B, D, H, W, C_in]`` input.
      rhs: ``[k_d, k_h, k_w, C_in, C_out]`` kernel.
      window_strides, padding, ...: as ``lax.conv_general_dilated``.

    Returns:
      ``[B, D_out, H_out, W_out, C_out]``, the cross-correlation ``lax.conv_general_dilated``
      computes.
    """
    rest = dict(
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
        **kwargs,
    )
    numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    supported = (
        lhs.ndim == 5
        and numbers == _channels_last_numbers(5)
        and _is_trivial(lhs_dilation)
        and _is_trivial(rhs_dilation)
        and feature_group_count == 1
        and batch_group_count == 1
        and not any(v is not None for v in kwargs.values())
    )
    if not supported:
        # 2D: XLA's own convolution is the fast one; 3D with dilation or groups: im2col,
        # which passes what it cannot do on to lax as well.
        fallback = lax.conv_general_dilated if lhs.ndim != 5 else im2col_conv_general_dilated
        return fallback(lhs, rhs, window_strides, padding, **rest)
    strides = tuple(int(s) for s in window_strides)
    spatial, ksize = lhs.shape[1:-1], rhs.shape[:3]
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(spatial, ksize, strides, padding)
    else:
        pads = [tuple(int(p) for p in pair) for pair in padding]
    (lo, hi), kd, sd = pads[0], ksize[0], strides[0]
    # lax.pad takes negative padding (a crop) too.
    x = lax.pad(lhs, jnp.zeros((), lhs.dtype), [(0, 0, 0), (lo, hi, 0), *((0, 0, 0),) * 3])
    d_out = (spatial[0] + lo + hi - kd) // sd + 1
    views = [lax.slice_in_dim(x, o, o + (d_out - 1) * sd + 1, stride=sd, axis=1) for o in range(kd)]
    x = views[0] if kd == 1 else jnp.concatenate(views, axis=-1)
    b, c_in, c_out = x.shape[0], rhs.shape[-2], rhs.shape[-1]
    x = x.reshape(b * d_out, *x.shape[2:])
    # [k_d, k_h, k_w, I, O] -> [k_h, k_w, k_d * I, O]: channel index o_d * I + c, as the views.
    kernel = jnp.moveaxis(rhs, 0, 2).reshape(*ksize[1:], kd * c_in, c_out)
    y = lax.conv_general_dilated(
        x,
        kernel,
        strides[1:],
        pads[1:],
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return y.reshape(b, d_out, *y.shape[1:])


def auto_conv_general_dilated(
    lhs: jax.Array, rhs: jax.Array, *args: Any, **kwargs: Any
) -> jax.Array:
    """``lax.conv_general_dilated`` or another formulation, as ``auto_conv_impl`` picks (trace
    time).

    Same arguments and result as ``lax.conv_general_dilated``.
    """
    impl = auto_conv_impl(lhs.ndim - 2, spatial=lhs.shape[1:-1])
    return conv_general_dilated_fn(impl)(lhs, rhs, *args, **kwargs)


def check_conv_impl(impl: str, key: str = "conv impl") -> None:
    """Raises ConfigError naming ``key`` unless ``impl`` is one of ``CONV_IMPLS``."""
    if impl not in CONV_IMPLS:
        raise errors.ConfigError(f"{key}={impl!r} is unknown; expected one of {CONV_IMPLS}.")


def conv_general_dilated_fn(impl: str) -> Callable[..., jax.Array]:
    """The ``conv_general_dilated`` function to hand to ``nn.Conv`` for a formulation.

    ``nn.Conv(f, (3, 3, 3), conv_general_dilated=conv_general_dilated_fn("auto"))`` keeps
    ``nn.Conv``'s parameters, initialisers and dtype handling and changes only how the
    convolution is computed.

    Args:
      impl: ``"xla"`` | ``"im2col"`` | ``"depth2d"`` | ``"auto"`` (see ``auto_conv_impl``).

    Raises:
      ConfigError: ``impl`` is none of these.
    """
    fns = {
        "xla": lax.conv_general_dilated,
        "im2col": im2col_conv_general_dilated,
        "depth2d": depth2d_conv_general_dilated,
        "auto": auto_conv_general_dilated,
    }
    check_conv_impl(impl)
    return fns[impl]
