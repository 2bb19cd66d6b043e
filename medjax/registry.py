"""The single name -> factory registry.

Every component a config names by string (models, losses, augmentations, host transforms,
metrics, evaluators, crawlers, data sources) is registered here under ``"<namespace>.<name>"``.
Registered items are factories: ``get_x(**kwargs) -> callable``.

``lookup`` accepts ``"name"`` or ``"name(k=v, ...)"``; the argument string is parsed with
``ast.literal_eval`` only, never ``eval``.
"""

from __future__ import annotations

import ast
import functools
import importlib
from collections.abc import Callable
from typing import Any

from medjax import errors

_REGISTRY: dict[str, Callable[..., Any]] = {}

# Importing these packages registers everything in them (each package ``__init__`` imports all
# of its modules), so a lookup never depends on who imported what first.
_NAMESPACE_PACKAGES = {
    "models": "medjax.models",
    "losses": "medjax.losses",
    "augment": "medjax.augment",
    "transforms": "medjax.data.transforms",
    "metrics": "medjax.metrics",
    "evaluators": "medjax.evaluate",
    "crawlers": "medjax.data.crawlers",
    "sources": "medjax.data.sources",
    "schedules": "medjax.train.optim",
    "optimizers": "medjax.train.optim",
    "synthetic": "medjax.data.synthetic",
    "tasks": "medjax.tasks",
}


def register(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Registers a factory under one or more full names (``"models.unet"``).

    Several names serve aliases, e.g. the seed's ``"losses.DiceLoss"`` beside ``"losses.dice"``.

    Raises:
      ValueError: a name has no namespace or is registered already.
    """

    def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
        for name in names:
            if "." not in name:
                raise ValueError(f"Registry name {name!r} needs a namespace, e.g. 'models.{name}'.")
            if name in _REGISTRY and _REGISTRY[name] is not factory:
                raise ValueError(f"Registry name {name!r} is registered twice.")
            _REGISTRY[name] = factory
        return factory

    return decorator


def _import_namespace(namespace: str) -> None:
    package = _NAMESPACE_PACKAGES.get(namespace)
    if package is not None:
        importlib.import_module(package)


def names(namespace: str) -> list[str]:
    """Sorted short names registered under ``namespace``."""
    _import_namespace(namespace)
    prefix = namespace + "."
    return sorted(k[len(prefix) :] for k in _REGISTRY if k.startswith(prefix))


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Splits ``"name(k=v, ...)"`` into ``("name", {k: v})`` using literal_eval only.

    Raises:
      ConfigError: the spec is not of that form or a value is not a Python literal.
    """
    spec = spec.strip()
    if "(" not in spec:
        return spec, {}
    if not spec.endswith(")"):
        raise errors.ConfigError(f"Bad component spec {spec!r}: expected 'name(k=v, ...)'.")
    name, arg_str = spec[: spec.index("(")], spec[spec.index("(") + 1 : -1]
    try:
        call = ast.parse(f"f({arg_str})", mode="eval").body
        assert isinstance(call, ast.Call)
        if call.args:
            raise ValueError("positional arguments are not allowed")
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    except (SyntaxError, ValueError, AssertionError) as e:
        raise errors.ConfigError(f"Bad component spec {spec!r}: {e}") from e
    return name.strip(), kwargs


def get(full_name: str) -> Callable[..., Any]:
    """Returns the factory registered as ``full_name`` (``"namespace.name"``).

    Raises:
      ConfigError: nothing is registered under that name; the message lists what is.
    """
    namespace = full_name.split(".", 1)[0]
    _import_namespace(namespace)
    if full_name not in _REGISTRY:
        short = full_name.split(".", 1)[-1]
        raise errors.ConfigError(
            f"Unknown {namespace} name {short!r}. Registered {namespace}: "
            f"{', '.join(names(namespace)) or '(none)'}."
        )
    return _REGISTRY[full_name]


def lookup(namespace: str, spec: str, **kwargs: Any) -> Any:
    """Builds a component: ``lookup("augment", "flip(axes=(0,))", p=0.5)``.

    Keyword arguments passed here are merged with (and override) those in the spec string.
    """
    name, spec_kwargs = parse_spec(spec)
    factory = get(f"{namespace}.{name}")
    return factory(**{**spec_kwargs, **kwargs})


def partial(namespace: str, spec: str, **kwargs: Any) -> Callable[..., Any]:
    """Like ``lookup`` but returns the factory bound to its kwargs, without calling it."""
    name, spec_kwargs = parse_spec(spec)
    return functools.partial(get(f"{namespace}.{name}"), **{**spec_kwargs, **kwargs})
