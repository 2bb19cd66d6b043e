"""The segmentation task: image/mask cases -> store -> patches; per-voxel evaluation.

Whole-image evaluation in fixed batches when every case of a split has the patch's shape
(2D data resized to one size); Gaussian sliding-window evaluation otherwise (3D volumes). Both
paths apply the mirroring TTA (``eval.mirror_axes``) and report HD95/ASSD in mm.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np

from medjax import errors, progress, registry
from medjax.data import pipeline
from medjax.evaluate import segmentation as seg_eval
from medjax.metrics import regions as region_lib
from medjax.metrics import surface
from medjax.models import spec as model_spec
from medjax.tasks import base
from medjax.train import step as step_lib


def check_patch_size(patch_size: Sequence[int], shapes: Sequence[Sequence[int]]) -> None:
    """Refuses a patch that has the wrong number of axes or dwarfs every training case.

    A case smaller than the patch is padded with zeros (nnU-Net does the same, and its planner
    rounds a patch up to what the UNet can pool), so a patch may exceed some cases. A patch
    axis at least twice the largest case's would make every patch mostly padding, costing the
    memory of the whole patch for nothing (a 256^3 patch of 24x64x64 volumes asked for 60 GB).

    Args:
      patch_size: ``data.patch_size``, spatial ``(H, W)`` or ``(D, H, W)``.
      shapes: spatial shape of each training case (preprocessed).

    Raises:
      ConfigError: naming ``data.patch_size``, the largest case and the largest patch to use.
    """
    patch = tuple(int(p) for p in patch_size)
    if not shapes:
        return
    ndims = {len(s) for s in shapes}
    if ndims != {len(patch)}:
        raise errors.ConfigError(
            f"data.patch_size={patch} has {len(patch)} axes but the training cases have "
            f"{sorted(ndims)}: give one size per spatial axis."
        )
    largest = tuple(int(m) for m in np.max(np.asarray(shapes), axis=0))
    if any(p >= 2 * m for p, m in zip(patch, largest, strict=True)):
        raise errors.ConfigError(
            f"data.patch_size={patch} is larger than every training case (largest, per axis: "
            f"{largest}): each patch would be mostly zero padding. Use at most {largest} per "
            f"axis, e.g. --config.data.patch_size='{largest}'."
        )


class SegmentationTask:
    """Data, evaluation and outputs of a segmentation config (see the module docstring)."""

    monitor_default = "val/dice"

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        seg_eval.check_blend(config.eval.get("blend", "auto"))  # before hours of training
        surface.check_connectivity(config.eval.get("surface_connectivity", "face"))
        # Classes or label regions (data.regions): checked before the data is built.
        self.regions = region_lib.parse(config.data.get("regions", ()))
        region_lib.check(self.regions, model_spec.num_classes(config))
        self.scored_names = region_lib.names(
            model_spec.num_classes(config), self.regions, config.data.get("class_names", ())
        )
        self.data = pipeline.prepare_data(config)
        if not self.regions:
            self._use_declared_labels(config)
        channels = {e["channels"] for split in self.data.splits.values() for e in split}
        if len(channels) != 1:
            raise errors.DataError(f"Cases disagree on the number of channels: {sorted(channels)}.")
        self.channels = channels.pop()
        self.patch_size = tuple(config.data.patch_size)
        check_patch_size(
            self.patch_size, [e["shape"] for e in self.data.splits[config.data.train_split]]
        )
        self.num_train = len(self.data.source(config.data.train_split))

    def _use_declared_labels(self, config: ml_collections.ConfigDict) -> None:
        """A Decathlon / nnU-Net dataset.json's labels: they name the classes in the metrics
        (``dice/PZ``, unless ``data.class_names`` is set), and a run with fewer classes than
        the folder declares is told, once, that binary label mode merges them."""
        from medjax.data import crawlers_volume

        by_value = crawlers_volume.declared_labels(self.data.root)
        if not config.data.get("class_names"):
            found = crawlers_volume.class_names(by_value, model_spec.num_classes(config))
            self.scored_names = found or self.scored_names
        declared = [v for v in by_value if v > 0]
        if len(declared) > 1 and config.data.preprocess.label_mode == "binary":
            progress.say(
                f"medjax: {self.data.root}/dataset.json declares {len(declared)} foreground "
                "labels; data.preprocess.label_mode='binary' merges them into one foreground. "
                f"For one class each: --config.model.num_classes={max(declared) + 1} "
                "--config.data.preprocess.label_mode=keep."
            )

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
        step = step_lib.make_eval_step(
            loss_fn, precision=precision, mirror_axes=mirror_axes, regions=self.regions
        )
        return {"step": step, "logits": logits}

    def evaluation(
        self, split: str, *, keep_predictions: bool = False
    ) -> seg_eval.SplitEvaluation | seg_eval.VolumeEvaluation:
        """Whole images in batches when every case of ``split`` has the patch's shape, else
        sliding windows over each whole case (with HD95/ASSD in mm)."""
        source = self.data.source(split)
        entries = self.data.splits[split]
        spacings = [
            tuple(e["props"].get("spacing_mm", (1.0,) * len(self.patch_size))) for e in entries
        ]
        num_classes = model_spec.num_classes(self.config)
        connectivity = self.config.eval.get("surface_connectivity", "face")
        if set(source.shapes) == {self.patch_size}:
            return seg_eval.SplitEvaluation(
                source,
                keep_predictions=keep_predictions,
                spacings=spacings,
                num_classes=num_classes,
                connectivity=connectivity,
                regions=self.regions,
                class_names=self.scored_names,
            )
        return seg_eval.VolumeEvaluation(
            source,
            spacings,
            tile_size=self.patch_size,
            num_classes=num_classes,
            step_fraction=self.config.eval.step_fraction,
            mirror_axes=tuple(self.config.eval.mirror_axes),
            blend=self.config.eval.get("blend", "auto"),
            keep_predictions=keep_predictions,
            connectivity=connectivity,
            regions=self.regions,
            class_names=self.scored_names,
        )

    def describe(self) -> str:
        """What ``--mode=preprocess`` prints: the store, its fingerprint and spec, the splits."""
        return self.data.describe()

    def baseline(self, split: str) -> dict[str, float]:
        """The best global-threshold Dice on ``split`` (logged once as a floor)."""
        return seg_eval.threshold_baseline(self.data.source(split))

    def images(self, split: str, result: base.EvalResult, num: int) -> dict[str, np.ndarray]:
        """TensorBoard image grids of input | ground truth | prediction."""
        grid = seg_eval.sample_grid(self.data.source(split), result.predictions, num)
        return {} if grid is None else {f"{split}/samples (input | truth | prediction)": grid}

    def write_outputs(self, split: str, result: base.EvalResult, out_dir: str) -> None:
        """Each prediction back in its case's original grid and geometry (PNG 2D, NIfTI 3D; a
        DICOM case also as DICOM SEG with ``eval.write_dicom_seg``). The loop writes
        ``per_case.csv``."""
        predictions = result.predictions
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
                        num_classes=self._label_classes(),
                    )

    def _label_classes(self) -> int:
        """Label values ``0..n-1`` the written label maps can hold (regions paint their own)."""
        if self.regions:
            return max(region_lib.region_labels(self.regions)) + 1
        return model_spec.num_classes(self.config)


@registry.register("tasks.segmentation")
def get_segmentation(config: ml_collections.ConfigDict) -> SegmentationTask:
    """Factory of ``SegmentationTask``."""
    return SegmentationTask(config)
