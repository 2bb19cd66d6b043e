"""Weights & Biases backend (``log.wandb=True``): config, scalars, images, evaluation files.

``WANDB_MODE=offline`` (or ``disabled``) is honoured as W&B reads it: an offline run writes
``<workdir>/wandb/offline-run-*/run-<id>.wandb`` with no network (``wandb sync`` uploads it
later). The run id is kept in ``<workdir>/tracking.json``: a resumed run continues it.
"""

from __future__ import annotations

import glob
import os
import shutil
import uuid
from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import logging

from medjax import errors
from medjax.tracking import base

# medjax logs at its own (global) step, which is not monotonic across modes (an evaluation of
# the best checkpoint logs at that earlier step): W&B plots every key against this metric.
STEP_KEY = "global_step"


class WandbBackend:
    """Logs one medjax run to one W&B run (created, or resumed by id)."""

    def __init__(self, workdir: str, config: ml_collections.ConfigDict):
        self._wandb = wandb = base.require("wandb", "wandb", "log.wandb")
        run_id = base.read_ids(workdir).get("wandb", {}).get("run_id") or uuid.uuid4().hex[:12]
        try:
            self.run = wandb.init(
                project=config.log.wandb_project,
                name=os.path.basename(os.path.normpath(workdir)),
                id=run_id,
                resume="allow",
                dir=os.path.abspath(workdir),
                config=base.flat_config(config),
                settings=wandb.Settings(silent=True),
                reinit="create_new",  # several writers (train, then eval) in one process
            )
        except Exception as e:  # e.g. online without credentials in a batch job
            raise errors.ConfigError(
                f"log.wandb=True: W&B could not start ({e}). Log in (wandb login / WANDB_API_KEY), "
                "or set WANDB_MODE=offline (wandb sync later), or log.wandb=False."
            ) from e
        self.run.define_metric(STEP_KEY)
        self.run.define_metric("*", step_metric=STEP_KEY)
        base.write_ids(workdir, "wandb", {"run_id": run_id})
        logging.info("W&B: run %s (mode %s)", run_id, os.environ.get("WANDB_MODE", "online"))

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self.run.log({**{k: float(v) for k, v in scalars.items()}, STEP_KEY: int(step)})

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        if images:
            logged = {k: self._wandb.Image(_gray_2d(base.to_hwc(v))) for k, v in images.items()}
            self.run.log({**logged, STEP_KEY: int(step)})

    def write_artifacts(self, directory: str) -> None:
        # Copied into the run's files folder (not a versioned Artifact): files there sync with
        # the run, offline included, without wandb.save's symlink warnings.
        name = os.path.basename(os.path.normpath(directory))
        dest = os.path.join(self.run.dir, "eval", name)
        os.makedirs(dest, exist_ok=True)
        for path in sorted(glob.glob(os.path.join(directory, "*"))):
            if os.path.isfile(path):
                shutil.copy2(path, dest)

    def close(self) -> None:
        self.run.finish()


def _gray_2d(img: Any) -> Any:
    """W&B reads ``[H, W]`` as grayscale but not ``[H, W, 1]``."""
    return img[..., 0] if img.shape[-1] == 1 else img
