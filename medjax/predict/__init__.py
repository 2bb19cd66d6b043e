"""Use a trained model on new, unlabelled data: the recorded plan, per-case prediction, the
``--mode=predict`` runner and exported bundles.

Imports are lazy (``medjax.predict.load_plan`` etc. resolve on first use), so that recording a
plan at training start does not import the prediction machinery.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "record_plan": "medjax.predict.plan",
    "load_plan": "medjax.predict.plan",
    "predict": "medjax.predict.runner",
    "predict_case": "medjax.predict.segment",
    "load_member": "medjax.predict.model",
    "load_bundle": "medjax.predict.bundle",
    "export_bundle": "medjax.predict.bundle",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'medjax.predict' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
