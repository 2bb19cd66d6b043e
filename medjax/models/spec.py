"""The model a config names, and the model facts the trainer and tasks read from a config.

A config's ``model`` section has the options every model shares at its top level
(``model.in_channels``, ``model.num_classes``, ``model.deep_supervision``, ``model.conv_impl``)
and the model's own options in ``model.kwargs``. ``build`` hands the shared ones to the factory
under those names, so no caller needs to know how a model spells its options.
"""

from __future__ import annotations

import inspect
from typing import Any

import flax.linen as nn
import ml_collections

from medjax import errors, registry
from medjax.models import conv_impls

# Top-level model options, and the model.kwargs names that held them before (moved, not merged:
# one place for each fact).
SHARED = ("in_channels", "num_classes", "deep_supervision", "conv_impl")
_MOVED = {"out_channels": "num_classes", **{k: k for k in SHARED}}


def in_channels(config: ml_collections.ConfigDict) -> int:
    """Input channels ``C`` of the model (``model.in_channels``)."""
    return int(config.model.in_channels)


def num_classes(config: ml_collections.ConfigDict) -> int:
    """Logits per output ``K`` (``model.num_classes``; 1: a sigmoid, binary)."""
    return int(config.model.num_classes)


def deep_supervision(config: ml_collections.ConfigDict) -> bool:
    """Whether the model returns a list of logits in training (``model.deep_supervision``)."""
    return bool(config.model.deep_supervision)


def factory_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The keywords ``build`` passes to the model's factory.

    ``model.kwargs`` plus ``in_channels`` and ``num_classes``; ``deep_supervision`` only when
    on, and ``conv_impl`` only to factories that take it (models built of plain ``nn.Conv``
    always run XLA's convolution, as ``"auto"`` does everywhere but for 3D on the CPU).

    Raises:
      ConfigError: ``model.kwargs`` sets one of the top-level options, or ``model.conv_impl``
        is unknown.
    """
    kwargs = config.model.kwargs.to_dict()
    for key in sorted(set(kwargs) & set(_MOVED)):
        raise errors.ConfigError(
            f"model.kwargs.{key} is set; set model.{_MOVED[key]} instead (the options every "
            f"model shares live at the top of the model section)."
        )
    conv_impls.check_conv_impl(config.model.conv_impl, "model.conv_impl")
    kwargs.update(in_channels=in_channels(config), num_classes=num_classes(config))
    if deep_supervision(config):
        kwargs["deep_supervision"] = True
    factory = registry.get(f"models.{config.model.name}")
    if "conv_impl" in inspect.signature(factory).parameters:
        kwargs["conv_impl"] = config.model.conv_impl
    return kwargs


def build(config: ml_collections.ConfigDict) -> nn.Module:
    """The Flax module named by ``config.model.name`` with the config's options.

    Raises:
      ConfigError: an unknown model name or keyword (the message lists the accepted ones).
    """
    return registry.lookup("models", config.model.name, **factory_kwargs(config))
