"""The LUNA16 task: candidate cutouts -> class-balanced training -> AUC per epoch, FROC/CPM.

Data: ``config.data.root`` is a LUNA16 folder (``subset*/`` of ``.mhd/.raw``, the CSVs); empty
means the built-in synthetic LUNA set (generated on first use). Cutouts around every candidate
are written once into a memory-mapped store (``medjax.data.luna.cutouts``); training draws
``luna.epoch_length`` cutouts per epoch at the configured class ratio; validation is every
candidate of the validation series, unbalanced. HU (clipped to [-1000, 1000] in the store) are
scaled by 1/1000 on load, so ``gaussian_noise(sigma=0.025)`` is 25 HU.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import grain
import ml_collections
import numpy as np

from medjax import errors, registry
from medjax.data import pipeline, store, synthetic
from medjax.data.luna import csvs, froc
from medjax.data.luna import sources as luna_sources
from medjax.evaluate import classification as eval_cls
from medjax.metrics import classification
from medjax.models import spec as model_spec
from medjax.tasks import base
from medjax.train import step as step_lib

HU_SCALE = 1.0 / 1000.0


class _LoadCutouts:
    """Source indices -> scaled cutouts and labels (picklable, for Grain workers)."""

    def __init__(self, source: luna_sources.CutoutSource):
        self.source = source

    def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        records = [self.source[int(i)] for i in indices]
        return {
            "image": np.stack([r["image"] for r in records]) * np.float32(HU_SCALE),
            "label": np.asarray([r["label"] for r in records], np.int32),
        }


class LunaTask:
    """Data, evaluation and outputs of a LUNA16 config (see the module docstring)."""

    def __init__(self, config: ml_collections.ConfigDict):
        # Imported here: they need SimpleITK, which segmentation-only users never load.
        from medjax.data.luna import cutouts
        from medjax.data.luna import synthetic as luna_synthetic

        self.config = config
        lc = config.data.luna
        if config.data.root:
            self.root = pipeline.data_root(config)
        else:
            kwargs = lc.synthetic_kwargs.to_dict()
            tag = store.spec_hash(kwargs)
            self.root = os.path.join(synthetic.cache_dir(), "datasets", f"luna-{tag}")
            luna_synthetic.make_luna_dataset(self.root, **kwargs)
        self.size = tuple(int(s) for s in lc.cutout_size_vox)
        self.store_dir = config.data.store_dir or os.path.join(
            synthetic.cache_dir(), "store", f"luna-{store.spec_hash([self.root, self.size])}"
        )
        self.report = cutouts.build_cutout_store(
            self.root, self.store_dir, size=self.size, workers=config.data.preprocess_workers
        )
        table = luna_sources.read_store_table(self.store_dir)
        uids = sorted(set(table["seriesuid"].tolist()))
        if lc.fold >= 0:
            train_uids, val_uids = csvs.luna_fold_split(self.root, lc.fold)
        else:
            train_uids, val_uids = csvs.split_by_series(uids, config.data.val_fraction, config.seed)
        self.val_uids = sorted(set(val_uids) & set(uids))
        self.sources = {
            config.data.train_split: luna_sources.CutoutSource(
                self.store_dir, luna_sources.rows_for_series(table, train_uids), lc.label_mode
            ),
            config.data.val_split: luna_sources.CutoutSource(
                self.store_dir, luna_sources.rows_for_series(table, self.val_uids), lc.label_mode
            ),
        }
        # LUNA16 has no separate test set: the validation series (a held-out fold) serve.
        self.sources.setdefault(config.data.test_split, self.sources[config.data.val_split])
        self.table = table
        train = self.sources[config.data.train_split]
        if len(train) == 0 or len(np.unique(train.labels)) < 2:
            raise errors.DataError(
                f"LUNA training split of {self.root} needs examples of every class; "
                f"labels present: {np.unique(train.labels).tolist()}."
            )
        self.channels = 1
        self.num_train = lc.epoch_length or len(train)
        self.num_classes = model_spec.num_classes(config)

    def input_shape(self) -> tuple[int, ...]:
        return (1, *self.size, 1)

    def describe(self) -> str:
        """What ``--mode=preprocess`` prints: the cutout store, what was skipped, the splits."""
        r = self.report
        labels = {s: np.bincount(src.labels).tolist() for s, src in self.sources.items()}
        return (
            f"cutout store {self.store_dir}: {r['n_rows']} cutouts of {self.size} voxels from "
            f"{r['n_scans']} scans ({r['n_scans_new']} new); skipped {len(r['skipped_scans'])} "
            f"scan(s) and {len(r['skipped_candidates'])} candidate(s) (see report.json)\n"
            f"examples per class by split: {labels}"
        )

    def train_dataset(self, *, global_batch_size: int, seed: int) -> grain.IterDataset:
        """Endless balanced epochs of ``epoch_length`` cutouts, batched globally."""
        train = self.sources[self.config.data.train_split]
        return pipeline.make_sample_dataset(
            _LoadCutouts(train),
            train.labels,
            global_batch_size=global_batch_size,
            seed=seed,
            num_workers=self.config.data.num_workers,
            read_threads=self.config.data.get("read_threads", 0),
            prefetch_batches=self.config.data.get("prefetch_batches", 0),
            ratio=tuple(int(r) for r in self.config.data.luna.ratio),
            epoch_length=self.num_train,
        )

    def make_eval_fns(self, loss_fn: Callable, precision: str) -> dict[str, Callable]:
        return {"step": step_lib.make_classification_eval_step(loss_fn, precision=precision)}

    def evaluation(self, split: str, *, keep_predictions: bool = False) -> _Evaluation:
        """Classification metrics (and, for ``label_mode=nodule``, FROC/CPM) over ``split``:
        every candidate cutout, unbalanced; per candidate its probability."""
        del keep_predictions  # probabilities are small: always kept
        return _Evaluation(self, split)

    def _froc(self, per_case: list[dict[str, Any]]) -> froc.FrocResult:
        annotations = csvs.read_annotations(os.path.join(self.root, "annotations.csv"))
        excluded_path = os.path.join(self.root, "annotations_excluded.csv")
        excluded = csvs.read_annotations(excluded_path) if os.path.exists(excluded_path) else []
        results = [
            (c["seriesuid"], c["coordX"], c["coordY"], c["coordZ"], c["probability"])
            for c in per_case
        ]
        return froc.froc(
            results,
            annotations,
            excluded,
            self.val_uids,
            n_bootstrap=self.config.data.luna.n_bootstrap,
            seed=self.config.seed,
            max_marks=self.config.data.luna.froc_max_marks,
        )

    def baseline(self, split: str) -> dict[str, float]:
        """Zero-Rule accuracy (always the training majority class) on ``split``."""
        train_labels = self.sources[self.config.data.train_split].labels
        majority = classification.zero_rule(train_labels, max(self.num_classes, 2))
        return {"zero_rule_accuracy": float(np.mean(self.sources[split].labels == majority))}

    def images(self, split: str, result: base.EvalResult, num: int) -> dict[str, np.ndarray]:
        """The FROC curve (``label_mode=nodule``), else nothing."""
        del num
        if "froc" not in result.extras:
            return {}
        return {f"{split}/froc": froc.froc_plot_png(result.extras["froc"], title=f"FROC ({split})")}

    def write_outputs(self, split: str, result: base.EvalResult, out_dir: str) -> None:
        """LUNA16's results file (``seriesuid,coordX,coordY,coordZ,probability``) and the FROC."""
        del split
        os.makedirs(out_dir, exist_ok=True)
        froc.write_results_csv(
            os.path.join(out_dir, "results.csv"),
            [
                (c["seriesuid"], c["coordX"], c["coordY"], c["coordZ"], c["probability"])
                for c in result.per_case
            ],
        )
        if "froc" in result.extras:
            froc.froc_plot_png(result.extras["froc"], path=os.path.join(out_dir, "froc.png"))
            with open(os.path.join(out_dir, "froc.json"), "w") as f:
                json.dump(result.extras["froc"].to_dict(), f, indent=1)


class _Evaluation:
    """``base.Evaluation`` of a LUNA split: every candidate cutout of its series, in batches."""

    def __init__(self, task: LunaTask, split: str):
        self.task = task
        self.source = task.sources[split]
        self.inputs = base.Batches(self._batches)
        train_labels = task.sources[task.config.data.train_split].labels
        zero_rule = classification.zero_rule(train_labels, max(task.num_classes, 2))
        self.scores = eval_cls.ClassScores(task.num_classes, zero_rule)

    def _batches(self, batch_size: int):
        """Host batches: scaled cutouts, labels, ``index`` (position in the split)."""
        ds = grain.MapDataset.source(self.source).batch(batch_size, drop_remainder=False)
        start = 0
        for batch in ds:
            n = len(batch["label"])
            yield {
                "image": np.asarray(batch["image"], np.float32) * np.float32(HU_SCALE),
                "label": np.asarray(batch["label"], np.int32),
                "index": np.arange(start, start + n, dtype=np.int32),
            }
            start += n

    def accumulate(self, out: dict[str, np.ndarray], batch: dict[str, np.ndarray]) -> None:
        self.scores.add(out, batch)

    def finalize(self) -> base.EvalResult:
        task, scores = self.task, self.scores
        metrics = scores.metrics()
        metrics.update(scores.confusion_scalars())
        metrics.update(scores.mean_loss())
        index_all, probs_all = scores.probabilities()
        rows_all, table = self.source.rows[index_all], task.table
        per_case = [
            {
                "seriesuid": str(table["seriesuid"][r]),
                "coordX": float(table["coordX"][r]),
                "coordY": float(table["coordY"][r]),
                "coordZ": float(table["coordZ"][r]),
                "label": int(self.source.labels[i]),
                "probability": float(p[-1] if p.shape[0] > 1 else p[0]),
            }
            for i, r, p in zip(index_all, rows_all, probs_all, strict=True)
        ]
        result = base.EvalResult(
            metrics=metrics,
            per_case=per_case,
            predictions={int(i): p for i, p in zip(index_all, probs_all, strict=True)},
            extras={"confusion": scores.confusion_matrix()},
        )
        if task.config.data.luna.label_mode == "nodule":
            result.extras["froc"] = task._froc(per_case)
            result.metrics.update(result.extras["froc"].to_dict())
        return result


@registry.register("tasks.luna")
def get_luna(config: ml_collections.ConfigDict) -> LunaTask:
    """Factory of ``LunaTask``."""
    return LunaTask(config)
