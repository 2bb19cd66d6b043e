"""The segmentation task: image/mask cases -> store -> patches; per-voxel evaluation.

Whole-image evaluation in fixed batches when every case of a split has the patch's shape
(2D data resized to one size); Gaussian sliding-window evaluation otherwise (3D volumes). Both
paths apply the mirroring TTA (``eval.mirror_axes``) and report HD95/ASSD in mm.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from medjax import errors, registry
from medjax.data import pipeline
from medjax.evaluate import segmentation as seg_eval
from medjax.metrics import surface
from medjax.train import step as step_lib


class SegmentationTask:
    """Data, evaluation and outputs of a segmentation config (see the module docstring)."""

    monitor_default = "val/dice"

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        seg_eval.check_blend(config.eval.get("blend", "auto"))  # before hours of training
        surface.check_connectivity(config.eval.get("surface_connectivity", "face"))
        self.data = pipeline.prepare_data(config)
        channels = {e["channels"] for split in self.data.splits.values() for e in split}
        if len(channels) != 1:
            raise errors.DataError(f"Cases disagree on the number of channels: {sorted(channels)}.")
        self.channels = channels.pop()
        self.patch_size = tuple(config.data.patch_size)
        self.num_train = len(self.data.source(config.data.train_split))

    def input_shape(self) -> tuple[int, ...]:
        """``(1, *patch, C)``: what the model is initialised with."""
        return (1, *self.patch_size, self.channels)

    def train_dataset(self, *, global_batch_size: int, seed: int):
        """Endless Grain dataset of this process's rows of each global patch batch."""
        return pipeline.make_train_dataset(
            self.data.source(self.config.data.train_split),
            patch_size=self.patch_size,
            global_batch_size=global_batch_size,
            fg_oversample=self.config.data.fg_oversample,
            seed=seed,
            num_workers=self.config.data.num_workers,
            read_threads=self.config.data.get("read_threads", 0),
            prefetch_batches=self.config.data.get("prefetch_batches", 0),
        )

    def make_eval_fns(self, loss_fn: Callable, precision: str) -> dict[str, Callable]:
        """Unjitted eval functions the loop jits with shardings: ``step`` and ``logits``."""

        def logits(state, image):
            return step_lib.predict_logits(state, image, precision=precision)

        mirror_axes = tuple(self.config.eval.mirror_axes)
        step = step_lib.make_eval_step(loss_fn, precision=precision, mirror_axes=mirror_axes)
        return {"step": step, "logits": logits}

    def evaluate(
        self,
        fns: dict[str, Callable],
        state: Any,
        split: str,
        *,
        mesh,
        batch_size: int,
        keep_predictions: bool = False,
    ):
        """``(metrics, per_case, predictions)`` over every case of ``split``."""
        source = self.data.source(split)
        entries = self.data.splits[split]
        spacings = [
            tuple(e["props"].get("spacing_mm", (1.0,) * len(self.patch_size))) for e in entries
        ]
        num_classes = self.config.model.kwargs.get("out_channels", 1)
        connectivity = self.config.eval.get("surface_connectivity", "face")
        if set(source.shapes) == {self.patch_size}:
            return seg_eval.evaluate_split(
                fns["step"],
                state,
                source,
                batch_size=batch_size,
                sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")),
                keep_predictions=keep_predictions,
                spacings=spacings,
                num_classes=num_classes,
                connectivity=connectivity,
            )
        return seg_eval.evaluate_volumes(
            fns["logits"],
            state,
            source,
            spacings,
            tile_size=self.patch_size,
            num_classes=num_classes,
            batch_size=batch_size,
            mesh=mesh,
            step_fraction=self.config.eval.step_fraction,
            mirror_axes=tuple(self.config.eval.mirror_axes),
            blend=self.config.eval.get("blend", "auto"),
            keep_predictions=keep_predictions,
            connectivity=connectivity,
        )

    def describe(self) -> str:
        """What ``--mode=preprocess`` prints: the store, its fingerprint and spec, the splits."""
        return self.data.describe()

    def baseline(self, split: str) -> dict[str, float]:
        """The best global-threshold Dice on ``split`` (logged once as a floor)."""
        return seg_eval.threshold_baseline(self.data.source(split))

    def images(
        self, split: str, predictions: dict[int, np.ndarray], num: int
    ) -> dict[str, np.ndarray]:
        """TensorBoard image grids of input | ground truth | prediction."""
        grid = seg_eval.sample_grid(self.data.source(split), predictions, num)
        return {} if grid is None else {f"{split}/samples (input | truth | prediction)": grid}

    def write_outputs(
        self,
        split: str,
        predictions: dict[int, np.ndarray],
        per_case: list[dict[str, Any]],
        out_dir: str,
    ) -> None:
        """Each prediction back in its case's original grid and geometry (PNG 2D, NIfTI 3D; a
        DICOM case also as DICOM SEG with ``eval.write_dicom_seg``)."""
        del per_case  # the loop writes per_case.csv
        out_dir = os.path.join(out_dir, "predictions")
        from medjax.data import io as mio
        from medjax.data.io import dicom_seg, image2d
        from medjax.data.preprocess import pipeline as pp

        os.makedirs(out_dir, exist_ok=True)
        entries = self.data.splits[split]
        for index, pred in predictions.items():
            entry = entries[index]
            vol = pp.invert_prediction(pred, entry["props"])
            if vol.ndim_spatial == 2:
                # Binary masks are written 0/255 like the inputs; label maps keep their values.
                labels = np.asarray(vol.array).astype(np.uint8)
                vol = vol.with_array(labels * 255 if labels.max() <= 1 else labels)
                image2d.write_image2d(vol, os.path.join(out_dir, f"{entry['id']}.png"))
            else:
                vol = vol.with_array(np.asarray(vol.array).astype(np.uint8))
                mio.write_volume(vol, os.path.join(out_dir, f"{entry['id']}.nii.gz"))
                if self.config.eval.write_dicom_seg:
                    # DICOM cases (only) also get <id>.seg.dcm referencing their series.
                    dicom_seg.write_case_seg(
                        vol,
                        entry,
                        out_dir,
                        model_name=self.config.model.name,
                        num_classes=self.config.model.kwargs.get("out_channels", 1),
                    )


@registry.register("tasks.segmentation")
def get_segmentation(config: ml_collections.ConfigDict) -> SegmentationTask:
    """Factory of ``SegmentationTask``."""
    return SegmentationTask(config)
