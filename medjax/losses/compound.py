"""Weighted sums of registered losses (Dice + CE by default) and deep supervision.

A compound loss is still ``loss_fn(logits, labels, *, mask=None) -> float32[B]``. It also
carries ``loss_fn.terms(logits, labels, *, mask=None) -> dict[str, float32[B]]`` with each
term's *unweighted* value, so the train step can log the terms without knowing the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from medjax import errors, registry

LossFn = Callable[..., jax.Array]


def _plain(value: Any) -> Any:
    """ml_collections ConfigDict / FrozenConfigDict -> dict; anything else unchanged."""
    to_dict = getattr(value, "to_dict", None)
    return to_dict() if callable(to_dict) else value


def _combine(terms: Sequence[tuple[str, float, LossFn]]) -> LossFn:
    """``sum_i weight_i * loss_i``, with a ``terms`` attribute giving each unweighted loss."""
    if not terms:
        raise errors.ConfigError("A combined loss needs at least one term in loss.losses.")

    def terms_fn(
        logits: jax.Array, labels: jax.Array, *, mask: jax.typing.ArrayLike | None = None
    ) -> dict[str, jax.Array]:
        return {name: fn(logits, labels, mask=mask) for name, _, fn in terms}

    def loss_fn(
        logits: jax.Array, labels: jax.Array, *, mask: jax.typing.ArrayLike | None = None
    ) -> jax.Array:
        values = terms_fn(logits, labels, mask=mask)
        # Zero-weight terms are still traced for logging; XLA drops them from the gradient.
        return sum(weight * values[name] for name, weight, _ in terms)

    loss_fn.terms = terms_fn
    return loss_fn


def _term_specs(losses: Any) -> list[tuple[str, dict[str, Any]]]:
    """Normalises ``losses`` to ``[(label, {"name", "weight", "params"}), ...]``."""
    losses = _plain(losses)
    if isinstance(losses, Mapping):
        # The keyed form: {label: {"name"?: ..., "weight": ..., "params": ...}}. It is the one
        # that fits in a FrozenConfigDict, which forbids dicts inside lists.
        items = [(str(label), {"name": label, **_plain(spec)}) for label, spec in losses.items()]
    elif isinstance(losses, Sequence) and not isinstance(losses, str):
        items = []
        for spec in losses:
            spec = _plain(spec)
            if not isinstance(spec, Mapping) or "name" not in spec:
                raise errors.ConfigError(
                    f"Each item of loss.losses must be a dict with 'name' (and optional "
                    f"'weight', 'params'); got {spec!r}."
                )
            items.append((str(spec["name"]), dict(spec)))
    else:
        raise errors.ConfigError(
            f"loss.losses must be a list of {{name, weight, params}} dicts or a dict of them "
            f"keyed by term label; got {type(losses).__name__}."
        )
    labelled, seen = [], {}
    for label, spec in items:
        unknown = set(spec) - {"name", "weight", "params"}
        if unknown:
            raise errors.ConfigError(
                f"loss.losses item {label!r} has unknown keys {sorted(unknown)}; "
                f"allowed: name, weight, params."
            )
        # Two terms of the same loss (e.g. Dice with two settings) get distinct log names.
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label}_{seen[label] - 1}"
        labelled.append((label, spec))
    return labelled


def _strip_namespace(name: str) -> str:
    return name[len("losses.") :] if name.startswith("losses.") else name


@registry.register("losses.combined", "losses.CombinedLoss")
def get_combined(*, losses: Any) -> LossFn:
    """A weighted sum of registered losses.

    Args:
      losses: either a list of ``{"name": "DiceLoss", "weight": 0.5, "params": {...}}`` items
        (dicts or ConfigDicts; ``weight`` defaults to 1, ``params`` to none), or a dict keyed
        by term label, ``{"dice": {"name": "DiceLoss", "weight": 0.5, "params": {...}}}``
        (``name`` defaults to the key); the keyed form is the one a FrozenConfigDict can hold.
        ``name`` is any registered loss, with or without the ``"losses."`` prefix, or a
        ``"name(k=v)"`` spec string.

    Returns:
      ``loss_fn(logits [B, *spatial, K], labels int[B, *spatial], *, mask=None) -> float32[B]``
      with a ``terms`` attribute (see the module docstring).

    Raises:
      ConfigError: a malformed item, or an unknown loss name (the message lists known ones).
    """
    terms = []
    for label, spec in _term_specs(losses):
        params = _plain(spec.get("params")) or {}
        fn = registry.lookup("losses", _strip_namespace(str(spec["name"])), **dict(params))
        terms.append((label, float(spec.get("weight", 1.0)), fn))
    return _combine(terms)


@registry.register("losses.dice_ce", "losses.DiceCELoss")
def get_dice_ce(
    *,
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
    dice: Mapping[str, Any] | None = None,
    ce: Mapping[str, Any] | None = None,
) -> LossFn:
    """nnU-Net's default: ``dice_weight * DiceLoss + ce_weight * CrossEntropyLoss``.

    nnU-Net adds ``-dice`` where we add ``1 - dice``; the constant changes nothing else.
    Its ``batch_dice`` is ``dice={"batch": True}`` here.

    Args:
      dice_weight: weight of the soft Dice term.
      ce_weight: weight of the cross-entropy term.
      dice: options of ``losses.dice`` (defaults: smooth 1e-5, no background, per example).
      ce: options of ``losses.ce``.

    Returns:
      ``loss_fn(...) -> float32[B]`` with ``terms`` ``{"dice": ..., "ce": ...}``.
    """
    return _combine(
        [
            ("dice", float(dice_weight), registry.lookup("losses", "dice", **(_plain(dice) or {}))),
            ("ce", float(ce_weight), registry.lookup("losses", "ce", **(_plain(ce) or {}))),
        ]
    )


def default_deep_supervision_weights(num_levels: int) -> tuple[float, ...]:
    """nnU-Net's deep-supervision weights: ``1 / 2**i``, lowest level 0, normalised to sum 1.

    Level 0 is full resolution. nnU-Net zeroes the lowest-resolution output because it is too
    coarse to help; with a single level the weight is simply 1.

    Returns:
      ``num_levels`` non-negative floats summing to 1, e.g. 3 -> ``(2/3, 1/3, 0)``.
    """
    if num_levels < 1:
        raise ValueError(f"num_levels must be >= 1; got {num_levels}.")
    if num_levels == 1:
        return (1.0,)
    raw = [1.0 / 2**i for i in range(num_levels - 1)] + [0.0]
    total = sum(raw)
    return tuple(w / total for w in raw)


def downsample_nearest(x: jax.Array, shape: Sequence[int]) -> jax.Array:
    """Nearest-neighbour resampling of ``x [B, *spatial]`` to ``[B, *shape]``.

    Output index ``i`` along an axis of input size ``S`` and output size ``s`` reads input
    index ``floor(i * S / s)`` (PyTorch's ``mode="nearest"``). When ``S`` is a multiple of
    ``s`` this is strided sampling ``x[:, ::S // s]``, which is what is used then. Labels stay
    exact class indices (no interpolation).

    Args:
      x: ``[B, *spatial]`` labels or a voxel mask, any dtype.
      shape: the target spatial shape, same rank as ``spatial``.

    Returns:
      ``[B, *shape]`` of ``x``'s dtype.
    """
    if len(shape) != x.ndim - 1:
        raise ValueError(f"Cannot resample {x.shape} to spatial shape {tuple(shape)}.")
    for axis, (size_in, size_out) in enumerate(zip(x.shape[1:], shape, strict=True), start=1):
        if size_in == size_out:
            continue
        if size_in % size_out == 0:
            index = [slice(None)] * x.ndim
            index[axis] = slice(None, None, size_in // size_out)
            x = x[tuple(index)]
        else:
            x = jnp.take(x, (jnp.arange(size_out) * size_in) // size_out, axis=axis)
    return x


def deep_supervision(loss_fn: LossFn, weights: Sequence[float] | None = None) -> LossFn:
    """Wraps a loss for a model that returns logits at several resolutions.

    ``ds_fn(logits_levels, labels, *, mask=None) = sum_l w_l loss_fn(logits_l, labels_l,
    mask=mask_l)`` where ``labels_l`` (and a voxel ``mask_l``) are ``labels`` resampled with
    ``downsample_nearest`` to level ``l``'s spatial shape. Levels with weight 0 are skipped.

    Args:
      loss_fn: a per-example loss, ``(logits, labels, *, mask) -> float32[B]``.
      weights: one weight per level, used as given; default
        ``default_deep_supervision_weights(num_levels)`` (nnU-Net's convention: ``1/2**i``
        with the lowest level 0, normalised to sum 1).

    Returns:
      ``ds_fn(logits_levels: Sequence[float[B, *spatial_l, K]], labels int[B, *spatial], *,
      mask=None) -> float32[B]``; level 0 is full resolution. If ``loss_fn`` has ``terms``, so
      does ``ds_fn`` (the same weighted sum over levels, per term).
    """

    def level_inputs(
        logits_levels: Sequence[jax.Array], labels: jax.Array, mask: jax.typing.ArrayLike | None
    ) -> list[tuple[float, jax.Array, jax.Array, Any]]:
        if isinstance(logits_levels, jax.Array):
            raise TypeError("deep_supervision expects a list/tuple of logits, one per level.")
        level_weights = (
            default_deep_supervision_weights(len(logits_levels)) if weights is None else weights
        )
        if len(level_weights) != len(logits_levels):
            raise errors.ConfigError(
                f"deep supervision has {len(level_weights)} weights for "
                f"{len(logits_levels)} logit levels."
            )
        voxel_mask = mask is not None and jnp.ndim(mask) == labels.ndim
        out = []
        for weight, logits in zip(level_weights, logits_levels, strict=True):
            if weight == 0:
                continue
            shape = logits.shape[1:-1]
            level_mask = downsample_nearest(jnp.asarray(mask), shape) if voxel_mask else mask
            out.append((float(weight), logits, downsample_nearest(labels, shape), level_mask))
        return out

    def ds_fn(
        logits_levels: Sequence[jax.Array],
        labels: jax.Array,
        *,
        mask: jax.typing.ArrayLike | None = None,
    ) -> jax.Array:
        total = jnp.zeros(labels.shape[:1], jnp.float32)
        for weight, logits, level_labels, level_mask in level_inputs(logits_levels, labels, mask):
            total = total + weight * loss_fn(logits, level_labels, mask=level_mask)
        return total

    inner_terms = getattr(loss_fn, "terms", None)
    if inner_terms is not None:

        def terms_fn(
            logits_levels: Sequence[jax.Array],
            labels: jax.Array,
            *,
            mask: jax.typing.ArrayLike | None = None,
        ) -> dict[str, jax.Array]:
            total: dict[str, jax.Array] = {}
            for weight, logits, level_labels, level_mask in level_inputs(
                logits_levels, labels, mask
            ):
                for name, value in inner_terms(logits, level_labels, mask=level_mask).items():
                    total[name] = total.get(name, 0.0) + weight * value
            return total

        ds_fn.terms = terms_fn
    return ds_fn


@registry.register("losses.deep_supervision")
def get_deep_supervision(
    *, loss: Mapping[str, Any] | str, weights: Sequence[float] | None = None
) -> LossFn:
    """Config form of ``deep_supervision``: ``{"name": "deep_supervision", "kwargs": {"loss":
    {"name": "dice_ce", "params": {...}}, "weights": None}}``.

    Args:
      loss: the inner loss, a ``{"name", "params"}`` dict (or ConfigDict) or a spec string.
      weights: per-level weights; default nnU-Net's (see ``default_deep_supervision_weights``).

    Returns:
      ``ds_fn(logits_levels, labels, *, mask=None) -> float32[B]`` (see ``deep_supervision``).
    """
    loss = _plain(loss)
    if isinstance(loss, str):
        inner = registry.lookup("losses", _strip_namespace(loss))
    elif isinstance(loss, Mapping) and "name" in loss:
        params = _plain(loss.get("params")) or {}
        inner = registry.lookup("losses", _strip_namespace(str(loss["name"])), **dict(params))
    else:
        raise errors.ConfigError(
            f"deep_supervision's loss must be a spec string or a {{name, params}} dict; "
            f"got {loss!r}."
        )
    return deep_supervision(inner, None if weights is None else tuple(weights))
