"""What the segmentation models share: their common options, one builder, input checks, heads.

``UNet``, ``AttentionUNet`` and ``UNetPlusPlus`` take the same options (logits K, per-level
features, norm, residual encoder, deep supervision, remat, dtype, convolution formulation,
the heads' initial foreground probability);
``build`` resolves them once and each model registers ``factory(ModuleClass)``. DeepLabV3+ has
its own encoder options and uses ``resolve_norm``, ``compute_dtype`` and ``head`` from here.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax import errors
from medjax.models import conv_impls, layers


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


def level_features(features: int | Sequence[int], depth: int, max_features: int = 320) -> tuple:
    """``features=16, depth=4`` -> ``(16, 32, 64, 128)``, capped at ``max_features``."""
    if isinstance(features, int):
        return tuple(min(features * 2**i, max_features) for i in range(depth))
    features = tuple(int(f) for f in features)
    if len(features) != depth:
        raise errors.ConfigError(
            f"model.kwargs.features has {len(features)} levels but depth={depth}."
        )
    return features


def resolve_norm(norm: str, use_batch_norm: bool | None) -> str:
    """The seed's ``use_batch_norm`` switch wins over ``norm``; the name is validated.

    Args:
      norm: ``batch`` | ``instance`` | ``group`` | ``none``.
      use_batch_norm: None keeps ``norm``; True -> ``batch``; False -> ``none``.

    Raises:
      ConfigError: an unknown norm name.
    """
    if use_batch_norm is not None:
        norm = "batch" if use_batch_norm else "none"
    if norm not in layers.NORMS:
        raise errors.ConfigError(f"model.kwargs.norm={norm!r}; expected one of {layers.NORMS}.")
    return norm


def compute_dtype(dtype: str | None) -> Any:
    """A dtype name (``float32`` | ``bfloat16``) as a dtype; None (follow the inputs) stays."""
    return None if dtype is None else jnp.dtype(dtype)


def head(out_channels: int, dtype: Any, name: str, prior: float = 0.0) -> nn.Module:
    """The 1x1 conv that turns features into logits (cast to float32 by the caller).

    ``prior`` in (0, 1) starts the predictions at that foreground probability (RetinaNet's
    prior initialisation of the bias: ``log(prior / (1 - prior))`` for a sigmoid head; for a
    softmax head, class 0 gets ``log(1 - prior)`` and each other class ``log(prior / (K - 1))``).
    0: a zero bias (probability 0.5 / uniform).
    """
    if not prior:
        return nn.Dense(out_channels, dtype=dtype, name=name)
    if not 0.0 < prior < 1.0:
        raise errors.ConfigError(f"model.kwargs.head_prior={prior!r}: must be in (0, 1), or 0.")
    if out_channels == 1:
        bias = [math.log(prior / (1.0 - prior))]
    else:
        bias = [math.log(1.0 - prior)] + [math.log(prior / (out_channels - 1))] * (out_channels - 1)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        del key, shape
        return jnp.asarray(bias, dtype)

    return nn.Dense(out_channels, dtype=dtype, name=name, bias_init=init)


def build(
    module_cls: type[nn.Module],
    *,
    in_channels: int = 1,
    num_classes: int = 1,
    depth: int = 4,
    features: int | Sequence[int] = 16,
    max_features: int = 320,
    use_batch_norm: bool | None = None,
    norm: str = "batch",
    residual: bool = False,
    deep_supervision: bool = False,
    remat: bool = False,
    dtype: str | None = None,
    conv_impl: str = "auto",
    head_prior: float = 0.0,
) -> nn.Module:
    """Builds a UNet-family module from the options the family shares.

    Args:
      module_cls: ``UNet``, ``AttentionUNet`` or ``UNetPlusPlus``.
      in_channels: input channels (the config's ``model.in_channels``; checked by the trainer
        against the data, not needed to build).
      num_classes: logits K (the config's ``model.num_classes``): 1 is binary with a sigmoid,
        K > 1 a softmax over K classes (class 0 background).
      depth: number of resolution levels; spatial sizes must be divisible by ``2**(depth-1)``.
      features: channels of the first level (doubled per level, capped at ``max_features``) or
        one value per level.
      max_features: cap of the doubled channels.
      use_batch_norm: the seed's switch; True -> ``norm="batch"``, False -> ``norm="none"``.
      norm: ``batch`` | ``instance`` | ``group`` | ``none``.
      residual: residual encoder blocks (nnU-Net's ResEnc flavour).
      deep_supervision: in training also return the coarser levels' logits (the config's
        ``model.deep_supervision``).
      remat: rematerialise each block in the backward pass (memory for big patches).
      dtype: compute dtype name; None follows the inputs and parameters, which is how
        ``train.precision=bfloat16`` runs (the step casts both).
      conv_impl: convolution formulation (the config's ``model.conv_impl``, see
        ``layers``); the parameters are the same whatever it is.
      head_prior: initial foreground probability of the logits heads (``head``); 0: a zero
        bias. 0.01 lets a rare foreground take off (configs/unet3d.py's docstring).

    Returns:
      The module; ``apply(variables, x float32[B, *spatial, C], train=bool)`` gives logits
      ``float32[B, *spatial, K]`` (a list, main output first, with deep supervision in training).

    Raises:
      ConfigError: an unknown norm or conv_impl, or ``features`` of the wrong length.
    """
    del in_channels
    conv_impls.check_conv_impl(conv_impl, "model.conv_impl")
    return module_cls(
        out_channels=num_classes,
        features=level_features(features, depth, max_features),
        norm=resolve_norm(norm, use_batch_norm),
        residual=residual,
        deep_supervision=deep_supervision,
        remat=remat,
        dtype=compute_dtype(dtype),
        conv_impl=conv_impl,
        head_prior=float(head_prior),
    )


def factory(module_cls: type[nn.Module]) -> Callable[..., nn.Module]:
    """``build`` bound to ``module_cls``: the registry factory of that model.

    Its signature (what ``registry.check_kwargs`` reads) is ``build``'s without ``module_cls``.
    """
    fn = functools.partial(build, module_cls)
    fn.__doc__ = f"Builds a ``{module_cls.__name__}``; the options are ``segmentation.build``'s."
    params = list(inspect.signature(build).parameters.values())[1:]
    fn.__signature__ = inspect.Signature(params, return_annotation=module_cls.__name__)
    return fn
