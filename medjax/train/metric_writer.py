"""MetricWriter: TensorBoard + ``metrics.jsonl`` on process 0, absl logs elsewhere."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging


class MetricWriter:
    """Writes scalars, images and text for one run.

    Only process 0 writes files; other processes log to absl. Values must already be on the
    host (the loop reads device metrics once per log interval with ``device_get``).
    """

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.is_main = jax.process_index() == 0
        self._tb = None
        self._jsonl = None
        if self.is_main:
            from tensorboardX import SummaryWriter

            os.makedirs(workdir, exist_ok=True)
            self._tb = SummaryWriter(logdir=workdir, flush_secs=10)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """One JSON line ``{"step", "time", **scalars}`` and one TensorBoard scalar per key."""
        clean = {k: float(np.asarray(v)) for k, v in scalars.items()}
        if not self.is_main:
            logging.info("step %d: %s", step, clean)
            return
        for k, v in clean.items():
            self._tb.add_scalar(k, v, step)
        self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **clean}) + "\n")
        self._jsonl.flush()

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """Images as ``uint8[H, W, 3]`` or ``float[H, W(, C)]`` in [0, 1]."""
        if not self.is_main:
            return
        for k, img in images.items():
            img = np.asarray(img)
            if img.ndim == 2:
                img = img[..., None]
            self._tb.add_image(k, img, step, dataformats="HWC")

    def write_text(self, step: int, name: str, text: str) -> None:
        """Text (the config, a summary) shown in TensorBoard's text tab."""
        if self.is_main:
            self._tb.add_text(name, text, step)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        """Flat scalar/str hyperparameters for TensorBoard's HParams view."""
        if not self.is_main:
            return
        flat = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()
        }
        self._tb.add_hparams(flat, {}, name="hparams")

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._jsonl.close()
            self._tb = None
