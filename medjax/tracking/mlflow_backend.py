"""MLflow backend (``log.mlflow=True``): params, scalars, images and evaluation artifacts.

The tracking URI is ``log.mlflow_uri``, else ``$MLFLOW_TRACKING_URI``, else a file store
``mlruns/`` beside the workdir (``mlflow ui --backend-store-uri file:<that folder>``). The
experiment is ``$MLFLOW_EXPERIMENT_NAME`` or ``medjax``; the run is named after the workdir and
its id is kept in ``<workdir>/tracking.json`` so a resumed run continues it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from medjax.tracking import base

_MAX_BATCH = 100  # MLflow's log_batch limit on params per call
_MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
# MLflow keys allow letters, digits and ``_-. :/``; anything else (e.g. ``@``) becomes ``_``.
_BAD_KEY_CHARS = re.compile(r"[^\w\-. :/]")


def metric_key(name: str) -> str:
    """The MLflow key of a medjax scalar name: the first ``/`` kept, later ones as ``.``, and
    characters MLflow does not allow as ``_``.

    MLflow's file store keeps a metric as a file at its key's path, so ``train/loss`` and
    ``train/loss/dice`` (a compound loss's term) cannot both exist there; one level of folders
    (``train/``, ``val/``, ``system/``) keeps every medjax name apart.
    """
    head, sep, tail = name.partition("/")
    return _BAD_KEY_CHARS.sub("_", head + sep + tail.replace("/", "."))


def tracking_uri(config: ml_collections.ConfigDict, workdir: str) -> str:
    """``log.mlflow_uri`` > ``$MLFLOW_TRACKING_URI`` > ``file:<dirname(workdir)>/mlruns``."""
    if config.log.mlflow_uri:
        return config.log.mlflow_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return "file:" + os.path.join(os.path.dirname(os.path.abspath(workdir)), "mlruns")


class MlflowBackend:
    """Logs one medjax run to one MLflow run (created, or continued on resume)."""

    def __init__(self, workdir: str, config: ml_collections.ConfigDict):
        base.require("mlflow", "MLflow", "log.mlflow")
        from mlflow.entities import Metric, Param, RunStatus
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self._Metric, self._RunStatus = Metric, RunStatus
        uri = tracking_uri(config, workdir)
        if uri.startswith("file:") or "://" not in uri:
            # MLflow 3 keeps the file store behind an opt-in; it is the zero-setup local default.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(uri)
        self.run_id = None
        old = base.read_ids(workdir).get("mlflow", {})
        if old.get("run_id") and old.get("tracking_uri") == uri:
            try:
                self.client.get_run(old["run_id"])
                self.run_id = old["run_id"]
                self.client.update_run(self.run_id, status="RUNNING")
                logging.info("MLflow: continuing run %s at %s", self.run_id, uri)
            except MlflowException as e:
                logging.warning("MLflow run %s not found at %s (%s): new run", old, uri, e)
        if self.run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "medjax")
            exp = self.client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(name)
            run = self.client.create_run(
                exp_id,
                run_name=os.path.basename(os.path.normpath(workdir)),
                tags={"medjax.workdir": os.path.abspath(workdir)},
            )
            self.run_id = run.info.run_id
            params = [
                Param(k, str(v)[:_MAX_PARAM_CHARS]) for k, v in base.flat_config(config).items()
            ]
            for i in range(0, len(params), _MAX_BATCH):
                self.client.log_batch(self.run_id, params=params[i : i + _MAX_BATCH])
            base.write_ids(workdir, "mlflow", {"run_id": self.run_id, "tracking_uri": uri})
            logging.info("MLflow: run %s at %s", self.run_id, uri)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        metrics = [
            self._Metric(metric_key(k), float(v), now, int(step)) for k, v in scalars.items()
        ]
        for i in range(0, len(metrics), _MAX_BATCH * 10):  # log_batch: 1000 metrics per call
            self.client.log_batch(self.run_id, metrics=metrics[i : i + _MAX_BATCH * 10])

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        for k, img in images.items():
            img = base.to_hwc(img)
            if img.shape[-1] == 1:
                img = img[..., 0]
            if img.dtype != np.uint8:
                img = (np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8)
            self.client.log_image(self.run_id, img, key=metric_key(k), step=int(step))

    def write_artifacts(self, directory: str) -> None:
        # Under the folder's own name (e.g. ``test-step40``): several evaluations stay apart.
        name = os.path.basename(os.path.normpath(directory))
        self.client.log_artifacts(self.run_id, directory, artifact_path=f"eval/{name}")

    def write_model(
        self, bundle_dir: str, input_shape: tuple[int, ...], output_shape: tuple[int, ...]
    ) -> None:
        """Logs an exported bundle as the run's pyfunc model (artifact path ``model``)."""
        import tempfile

        from medjax.tracking import mlflow_model

        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow_model.save(
                bundle_dir, os.path.join(tmp, "model"), input_shape, output_shape
            )
            self.client.log_artifacts(self.run_id, path, artifact_path="model")

    def close(self) -> None:
        self.client.set_terminated(
            self.run_id, status=self._RunStatus.to_string(self._RunStatus.FINISHED)
        )
