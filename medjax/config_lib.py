"""Config helpers: typed parsing of the ``get_config(arg)`` string."""

from __future__ import annotations

import ast
from typing import Any

import ml_collections

from medjax import errors


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses ``"variant=small,fold=2,tiny"`` against typed defaults.

    A bare word ``w`` means ``w=True`` when ``w`` is a bool default, and otherwise
    ``variant=w`` (so ``configs/unet.py:full`` picks the full variant).

    Args:
      arg: the part of ``--config`` after ``:``, or None.
      **defaults: allowed keys with their default values; values are cast to the default's type.

    Raises:
      ConfigError: an unknown key or a value of the wrong type.
    """
    result = dict(defaults)
    for token in filter(None, (t.strip() for t in (arg or "").split(","))):
        if "=" in token:
            key, value = (s.strip() for s in token.split("=", 1))
        elif isinstance(defaults.get(token), bool):
            key, value = token, "True"
        elif "variant" in defaults:
            key, value = "variant", token
        else:
            raise errors.ConfigError(f"Config argument {token!r} is not key=value.")
        if key not in defaults:
            raise errors.ConfigError(
                f"Unknown config argument {key!r}; allowed: {', '.join(sorted(defaults))}."
            )
        default = defaults[key]
        try:
            if isinstance(default, bool):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                result[key] = value.lower() in ("true", "1")
            elif isinstance(default, str):
                result[key] = value
            else:
                result[key] = type(default)(ast.literal_eval(value))
        except (ValueError, SyntaxError) as e:
            raise errors.ConfigError(
                f"Config argument {key}={value!r} is not a {type(default).__name__}."
            ) from e
    return ml_collections.ConfigDict(result)
