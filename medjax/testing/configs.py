"""Tiny configs for tests: the real experiment configs at their smallest."""

from __future__ import annotations

import importlib.util
import os

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """``configs/<name>.py``'s ``get_config(arg)``, imported by path like ``launch.py`` does."""
    path = os.path.join(REPO, "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"configs.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def tiny_unet(**overrides) -> ml_collections.ConfigDict:
    """``configs/unet.py:tiny`` with a constant rate (so runs of different lengths agree)."""
    config = load_config("unet", "tiny")
    config.schedule.name = "constant"
    config.schedule.warmup_steps = 0
    for dotted, value in overrides.items():
        section = config
        *parents, leaf = dotted.split("__")
        for p in parents:
            section = section[p]
        section[leaf] = value
    return config
