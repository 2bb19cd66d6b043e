"""What every tracking backend shares: the backend protocol, the flat config, the run ids file."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Protocol

import ml_collections
from flax import traverse_util

from medjax import errors

# Beside the checkpoints: a resumed run reads back the ids of the tracker runs it continues.
IDS_FILE = "tracking.json"


class Backend(Protocol):
    """One destination of a run's scalars, images and output files (process 0 only)."""

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        """``images``: ``uint8``/``float[H, W, C]`` (C = 1 or 3), floats in [0, 1]."""

    def write_artifacts(self, directory: str) -> None:
        """Uploads/copies the files of ``directory`` (an evaluation's outputs) to the run."""

    def close(self) -> None: ...


def require(module: str, package: str, flag: str) -> Any:
    """Imports an optional tracker ``module``, or raises one ConfigError naming ``flag``.

    Args:
      module: the module to import, e.g. ``"wandb"``.
      package: what the user installs, e.g. ``"wandb"`` (both come with ``medjax[tracking]``).
      flag: the config key that asked for it, e.g. ``"log.wandb"``.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise errors.ConfigError(
            f"{flag}=True needs {package}: pip install 'medjax[tracking]' (or set {flag}=False)."
        ) from e


def flat_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """``{"optim.lr": 1e-3, ...}``: the config's leaves; lists/tuples/None as their ``str``."""
    flat = traverse_util.flatten_dict(json.loads(config.to_json_best_effort()), sep=".")
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}


def read_ids(workdir: str) -> dict[str, Any]:
    """The tracker run ids stored in ``<workdir>/tracking.json`` (``{}`` for a new run)."""
    path = os.path.join(workdir, IDS_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def write_ids(workdir: str, backend: str, entry: Mapping[str, Any]) -> None:
    """Stores ``entry`` (run id, URI) under ``backend`` in ``<workdir>/tracking.json``."""
    ids = read_ids(workdir)
    ids[backend] = dict(entry)
    tmp = os.path.join(workdir, IDS_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(ids, f, indent=1)
    os.replace(tmp, os.path.join(workdir, IDS_FILE))  # a kill never leaves half a file


def to_hwc(img: Any) -> Any:
    """An image as ``[H, W, C]`` (a 2D array gets a channel axis)."""
    import numpy as np

    img = np.asarray(img)
    return img[..., None] if img.ndim == 2 else img
