"""MetricWriter: one call per scalar/image batch, fanned out to the run's tracking backends.

Process 0 always writes TensorBoard + ``metrics.jsonl``; with a config it also writes MLflow
(``log.mlflow``) and Weights & Biases (``log.wandb``), so every backend sees the same names and
steps. Other processes log scalars to absl.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from medjax.tracking import base

HPARAMS_DIR = "hparams"  # TensorBoard run (subfolder of the workdir) holding the HParams session


class _TensorBoardJsonl:
    """The always-on backend: tensorboardX events and one JSON line per ``write_scalars``."""

    def __init__(self, workdir: str):
        from tensorboardX import SummaryWriter

        self.workdir = workdir
        self.tb = SummaryWriter(logdir=workdir, flush_secs=10)
        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for k, v in scalars.items():
            self.tb.add_scalar(k, v, step)
        self.jsonl.write(json.dumps({"step": int(step), "time": time.time(), **scalars}) + "\n")
        self.jsonl.flush()

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        for k, img in images.items():
            self.tb.add_image(k, base.to_hwc(img), step, dataformats="HWC")

    def write_artifacts(self, directory: str) -> None:
        pass  # the files are already in the workdir

    def write_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        # One session per run: a resumed run (or a later evaluation) replaces the earlier one
        # with the metrics as they now stand, instead of adding a second row to the table.
        shutil.rmtree(os.path.join(self.workdir, HPARAMS_DIR), ignore_errors=True)
        self.tb.add_hparams(dict(hparams), dict(metrics), name=HPARAMS_DIR)

    def flush(self) -> None:
        self.tb.flush()
        self.jsonl.flush()

    def close(self) -> None:
        self.tb.close()
        self.jsonl.close()


class MetricWriter:
    """Writes scalars, images, text, hparams and evaluation artifacts for one run.

    Only process 0 writes; other processes log scalars to absl. Values must already be on the
    host (the loop reads device metrics once per log interval with ``device_get``).

    Args:
      workdir: the run folder (``metrics.jsonl``, TensorBoard events, ``tracking.json``).
      config: the run's config; enables ``log.mlflow`` / ``log.wandb`` and the HParams session
        (the flat config with the run's final and best metrics, written on ``close``).
    """

    def __init__(self, workdir: str, config: ml_collections.ConfigDict | None = None):
        self.workdir = workdir
        self.is_main = jax.process_index() == 0
        self.backends: list[Any] = []
        self._tb: _TensorBoardJsonl | None = None
        self._hparams = base.flat_config(config) if config is not None else None
        self._monitor = (config.ckpt.monitor, config.ckpt.mode) if config is not None else None
        self._wrote = False
        self._last: dict[str, float] = {}
        self._best: float | None = None
        if not self.is_main:
            return
        os.makedirs(workdir, exist_ok=True)
        self._read_history()  # before appending: a resumed run's hparams cover all of it
        self._tb = _TensorBoardJsonl(workdir)
        self.backends.append(self._tb)
        if config is not None and config.log.mlflow:
            from medjax.tracking import mlflow_backend

            self.backends.append(mlflow_backend.MlflowBackend(workdir, config))
        if config is not None and config.log.wandb:
            from medjax.tracking import wandb_backend

            self.backends.append(wandb_backend.WandbBackend(workdir, config))

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """One JSON line ``{"step", "time", **scalars}`` and one scalar per key in each backend."""
        clean = {k: float(np.asarray(v)) for k, v in scalars.items()}
        if not self.is_main:
            logging.info("step %d: %s", step, clean)
            return
        self._wrote = True
        self._remember(clean)
        self._each("write_scalars", int(step), clean)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """Images as ``uint8[H, W, 3]`` or ``float[H, W(, C)]`` in [0, 1]."""
        if self.is_main and images:
            self._each("write_images", int(step), {k: np.asarray(v) for k, v in images.items()})

    def write_text(self, step: int, name: str, text: str) -> None:
        """Text (the config, a summary) shown in TensorBoard's text tab."""
        if self.is_main:
            self._tb.tb.add_text(name, text, step)

    def write_artifacts(self, directory: str) -> None:
        """Attaches an evaluation's output folder (metrics.json, per_case.csv, plots) to the run.

        TensorBoard/jsonl keep them where they are (in the workdir); MLflow logs them as
        artifacts under ``eval/<folder name>``; W&B saves them as run files.
        """
        if self.is_main:
            self._each("write_artifacts", directory)

    def write_model(
        self, bundle_dir: str, input_shape: tuple[int, ...], output_shape: tuple[int, ...]
    ) -> None:
        """Logs an exported bundle (``--mode=export``, ``medjax.predict.bundle.log_model``) as
        the run's model where a backend has models (MLflow: a pyfunc model
        ``float32[b, *input_shape] -> float32[b, *output_shape]``).
        """
        if self.is_main:
            for b in [b for b in self.backends if hasattr(b, "write_model")]:
                self._each_one(b, "write_model", bundle_dir, input_shape, output_shape)

    def write_hparams(
        self, hparams: Mapping[str, Any], metrics: Mapping[str, float] | None = None
    ) -> None:
        """Flat scalar/str hyperparameters for TensorBoard's HParams view.

        Without ``metrics`` they are kept and written on ``close`` with the run's final metrics
        (last value of every non-``train/``/``system/`` scalar, plus ``train/loss``) and
        ``best/<ckpt.monitor>``; with ``metrics`` they are written now with those.
        """
        if not self.is_main:
            return
        self._hparams = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()
        }
        if metrics is not None:
            self._tb.write_hparams(self._hparams, metrics)
            self._hparams = None

    def final_metrics(self) -> dict[str, float]:
        """The metrics the HParams session shows: last values and the best monitored value."""
        out = {
            k: v
            for k, v in self._last.items()
            if not k.startswith(("train/", "system/")) or k == "train/loss"
        }
        if self._best is not None:
            out[f"best/{self._monitor[0]}"] = self._best
        return out

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Writes the pending HParams session and closes every backend."""
        if self._tb is None:
            return
        if self._hparams is not None and self._wrote:
            self._tb.write_hparams(self._hparams, self.final_metrics())
        for b in self.backends:
            try:
                b.close()
            except Exception as e:  # a tracker's failure must not lose the run's own files
                logging.warning("Closing %s failed: %s", type(b).__name__, e)
        self.backends = []
        self._tb = None

    # -- internals --

    def _each(self, method: str, *args: Any) -> None:
        for b in list(self.backends):
            self._each_one(b, method, *args)

    def _each_one(self, b: Any, method: str, *args: Any) -> None:
        if b is self._tb:
            getattr(b, method)(*args)
            return
        try:
            getattr(b, method)(*args)
        except Exception as e:
            # An unreachable tracking server must not stop a training run: the backend is
            # dropped (loudly) and TensorBoard/metrics.jsonl keep everything.
            logging.error("%s.%s failed (%s); disabling it.", type(b).__name__, method, e)
            self.backends.remove(b)

    def _remember(self, scalars: Mapping[str, float]) -> None:
        self._last.update(scalars)
        if self._monitor is not None and self._monitor[0] in scalars:
            v = scalars[self._monitor[0]]
            if np.isfinite(v) and (
                self._best is None
                or (v > self._best if self._monitor[1] == "max" else v < self._best)
            ):
                self._best = v

    def _read_history(self) -> None:
        path = os.path.join(self.workdir, "metrics.jsonl")
        if not os.path.exists(path):
            return
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill: the rest is still good
                    continue
                self._remember({k: v for k, v in row.items() if k not in ("step", "time")})
