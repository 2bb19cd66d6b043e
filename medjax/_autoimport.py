"""Imports every module of a package, so that registration never depends on import order."""

import importlib
import pkgutil


def import_all(package_name: str, package_path: list[str]) -> None:
    """Imports each submodule of ``package_name`` (found on ``package_path``) once."""
    for info in pkgutil.iter_modules(package_path):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")
