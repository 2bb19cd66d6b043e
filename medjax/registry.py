"""The single name -> factory registry.

Every component a config names by string (models, losses, augmentations, host transforms,
metrics, evaluators, crawlers, data sources) is registered here under ``"<namespace>.<name>"``.
Registered items are factories: ``get_x(**kwargs) -> callable``.

``lookup`` accepts ``"name"`` or ``"name(k=v, ...)"``; the argument string is parsed with
``ast.literal_eval`` only, never ``eval``.
"""

from __future__ import annotations

import ast
import importlib
import inspect
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


# Where a namespace's keyword arguments come from in a config, for error messages.
_CONFIG_KEYS = {
    "models": "model.kwargs",
    "losses": "loss.kwargs",
    "augment": "augment",
    "crawlers": "data.crawler_kwargs",
    "synthetic": "data.synthetic_kwargs",
}


def check_kwargs(
    namespace: str,
    name: str,
    kwargs: dict[str, Any],
    *,
    spec: str | None = None,
    positional: int = 0,
) -> None:
    """Checks ``kwargs`` against the signature of the factory ``namespace.name``.

    Args:
      namespace: e.g. ``"augment"``.
      name: the registered short name.
      kwargs: the keywords the factory will be called with.
      spec: the config's spec string, quoted in the message when given.
      positional: how many positional arguments the caller passes before ``kwargs``.

    Raises:
      ConfigError: an unknown or missing keyword (or a positional-only parameter); the message
        names the component, the config key the keywords come from and the keywords the
        factory accepts. A factory taking ``**kwargs`` accepts any keyword.
    """
    factory = get(f"{namespace}.{name}")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: nothing to check
        return
    try:
        signature.bind(*([None] * positional), **kwargs)
        return
    except TypeError as e:
        problem = str(e)
    params = signature.parameters.values()
    accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    accepted = accepted[positional:]  # the caller's positional arguments are not config keys
    unknown = sorted(set(kwargs) - set(accepted))
    what = f"unknown keyword(s) {', '.join(unknown)}" if unknown else problem
    where = _CONFIG_KEYS.get(namespace)
    raise errors.ConfigError(
        f"{namespace} {spec or name!r}"
        + (f" (config {where})" if where else "")
        + f": {what}. {name} accepts: {', '.join(accepted) or '(no keywords)'}."
    )


def lookup(namespace: str, spec: str, **kwargs: Any) -> Any:
    """Builds a component: ``lookup("augment", "flip(axes=(0,))", p=0.5)``.

    Keyword arguments passed here are merged with (and override) those in the spec string.

    Raises:
      ConfigError: the spec is malformed, the name unknown, or a keyword is not one the
        factory accepts (``check_kwargs``).
    """
    name, spec_kwargs = parse_spec(spec)
    merged = {**spec_kwargs, **kwargs}
    check_kwargs(namespace, name, merged, spec=spec if "(" in spec else None)
    return get(f"{namespace}.{name}")(**merged)
