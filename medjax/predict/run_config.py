"""A config file for ``--config``: a finished run's own config, from ``<workdir>/config.json``.

``python launch.py --mode=predict --workdir=RUN --config.predict.input=...`` needs no
``--config``: launch.py then passes ``--config=<this file>:RUN``, so the run's config (with the
current ``predict`` defaults added) is the one the ``--config.*`` overrides apply to.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

# Keys whose values are free-form dicts (factory kwargs): replaced whole, never merged.
_REPLACED = {"kwargs", "synthetic_kwargs", "crawler_kwargs", "normalization"}


def _merge(base: ml_collections.ConfigDict, loaded: dict[str, Any]) -> None:
    for key, value in loaded.items():
        current = base.get(key) if key in base else None
        if isinstance(current, ml_collections.ConfigDict) and isinstance(value, dict):
            if key in _REPLACED:
                base[key] = ml_collections.ConfigDict(value)
            else:
                _merge(current, value)
        elif value is None and key in base:
            continue  # a placeholder stays typed (None cannot be overridden later)
        else:
            base[key] = value


def get_config(workdir: str | None = None) -> ml_collections.ConfigDict:
    """The base config updated by ``<workdir>/config.json`` (a cross-validation folder: its
    first fold's; the base alone without one)."""
    from configs import common

    config = common.base_config()
    if workdir:
        root = os.path.abspath(os.path.expanduser(workdir))
        path = os.path.join(root, "config.json")
        if not os.path.exists(path):
            path = os.path.join(root, "fold_0", "config.json")
        if os.path.exists(path):
            with open(path) as f:
                _merge(config, json.load(f))
    return config
