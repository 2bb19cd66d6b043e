"""Chains augmentation ops named in config, and applies a chain to a batch.

``compose(config.augment)`` turns a list of op specs into one ``fn(key, sample) -> sample`` for a
single example; ``apply_batch(fn, key, batch)`` gives each example its own key and vmaps the
chain over the batch. The train step builds the chain once (trace time) and calls
``apply_batch`` inside the jitted step.

A spec is either a string ``"brightness(p=0.5, range=(0.8, 1.2))"`` (parsed by the registry with
``ast.literal_eval`` only) or a mapping ``{"name": "brightness", "p": 0.5, ...}`` (a dict or an
``ml_collections.ConfigDict``; ``{"name": ..., "kwargs": {...}}`` works too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax

from medjax import errors, registry
from medjax.augment import _core

AugmentFn = _core.AugmentFn
Sample = _core.Sample


def _as_dict(spec: Any) -> dict[str, Any] | None:
    # ConfigDict is not a collections.abc.Mapping; to_dict() also unwraps nested ConfigDicts.
    if hasattr(spec, "to_dict"):
        return spec.to_dict()
    if isinstance(spec, Mapping):
        return dict(spec)
    return None


def build(spec: str | Mapping[str, Any]) -> AugmentFn:
    """Builds one op from a spec string or mapping (see the module docstring).

    Args:
      spec: ``"name(k=v, ...)"`` or ``{"name": name, **kwargs}`` or
        ``{"name": name, "kwargs": {...}}``; ``name`` is the short name under ``augment.``.

    Returns:
      ``fn(key, sample) -> sample``.

    Raises:
      ConfigError: the name is unknown (the message lists the registered ops), a keyword is not
        one the op accepts (the message lists those), the spec has no ``name``, or it is
        neither a string nor a mapping.
    """
    if isinstance(spec, str):
        return registry.lookup("augment", spec)
    as_dict = _as_dict(spec)
    if as_dict is None:
        raise errors.ConfigError(
            f"augment spec {spec!r} must be a string 'op(k=v)' or a mapping with a 'name'."
        )
    if "name" not in as_dict:
        raise errors.ConfigError(f"augment spec {as_dict!r} has no 'name'.")
    name = as_dict.pop("name")
    if set(as_dict) == {"kwargs"} and _as_dict(as_dict["kwargs"]) is not None:
        as_dict = _as_dict(as_dict["kwargs"])
    return registry.lookup("augment", name, **as_dict)


def compose(specs: Sequence[str | Mapping[str, Any]] | None) -> AugmentFn:
    """Chains the ops named by ``specs``, applied in order, each with its own key.

    Args:
      specs: op specs (see ``build``); empty or ``None`` gives the identity.

    Returns:
      ``fn(key, sample) -> sample`` for ONE example, ``sample = {"image": [*spatial, C],
      "label": int[*spatial] or int[], ...}``; jit- and vmap-safe.
    """
    fns = [build(spec) for spec in (specs or ())]

    def chain(key: jax.Array, sample: Sample) -> Sample:
        if not fns:  # Static: the list is fixed when the chain is built.
            return sample
        for k, fn in zip(jax.random.split(key, len(fns)), fns, strict=True):
            sample = fn(k, sample)
        return sample

    return chain


def apply_batch(
    fn: AugmentFn,
    key: jax.Array,
    batch: Mapping[str, Any],
    keys: Sequence[str] = ("image", "label"),
) -> dict[str, Any]:
    """Applies a per-example augmentation to every example of a batch, with per-example keys.

    Args:
      fn: ``fn(key, sample) -> sample`` for one example (e.g. from ``compose``).
      key: one ``jax.random`` key for the batch; it is split into ``B`` keys.
      batch: ``{"image": [B, *spatial, C], "label": int[B, *spatial] or int[B], ...}``.
      keys: the batch entries that ``fn`` sees (those present); the others (``valid``, ...)
        are returned unchanged.

    Returns:
      The batch with the augmented entries replaced; shapes and dtypes unchanged.
    """
    sub = {k: batch[k] for k in keys if k in batch}
    batch_size = batch["image"].shape[0]
    out = jax.vmap(fn)(jax.random.split(key, batch_size), sub)
    return {**batch, **out}
