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
import jax
import ml_collections
import numpy as np

from medjax import distributed, errors, registry
from medjax.data import pipeline, store, synthetic
from medjax.data.luna import csvs, froc
from medjax.data.luna import sources as luna_sources
from medjax.metrics import classification
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
        self.num_classes = int(config.model.kwargs.get("num_classes", 2))

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

    def _batches(self, source: luna_sources.CutoutSource, batch_size: int):
        ds = grain.MapDataset.source(source).batch(batch_size, drop_remainder=False)
        for batch in ds:
            n = len(batch["label"])
            pad = batch_size - n
            out = {
                "image": np.asarray(batch["image"], np.float32) * np.float32(HU_SCALE),
                "label": np.asarray(batch["label"], np.int32),
                "valid": np.arange(batch_size) < n,
            }
            if pad:
                out["image"] = np.concatenate(
                    [out["image"], np.zeros((pad, *out["image"].shape[1:]), np.float32)]
                )
                out["label"] = np.concatenate([out["label"], np.zeros(pad, np.int32)])
            yield out, np.asarray(batch["index"])

    def evaluate(
        self, fns, state, split: str, *, mesh, batch_size: int, keep_predictions: bool = False
    ):
        """Classification metrics (and, for ``label_mode=nodule``, FROC/CPM) over ``split``."""
        del keep_predictions
        source = self.sources[split]
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        train_labels = self.sources[self.config.data.train_split].labels
        acc = classification.ClassificationMetrics(
            self.num_classes,
            zero_rule_class=classification.zero_rule(train_labels, max(self.num_classes, 2)),
        )
        loss_sum, rows, probs = 0.0, [], []
        for host, store_rows in self._batches(source, batch_size):
            out = distributed.to_host(
                fns["step"](state, distributed.global_from_host(host, sharding))
            )
            valid = host["valid"]
            acc.update(out["logits"], host["label"], valid=valid)
            loss_sum += float(np.asarray(out["loss"])[valid].sum())
            scores = classification.scores_from_logits(np.asarray(out["logits"]))[valid]
            probs.append(scores)
            rows.append(store_rows)
        metrics = {k: float(v) for k, v in acc.result().items() if np.isscalar(v)}
        # The confusion matrix as scalars confusion/<true>_<pred>, so it is logged every epoch.
        for (t, p), count in np.ndenumerate(acc.confusion_matrix()):
            metrics[f"confusion/{t}_{p}"] = float(count)
        metrics["loss"] = loss_sum / max(len(source), 1)
        probs_all, rows_all = np.concatenate(probs), np.concatenate(rows)
        per_case = [
            {
                "seriesuid": str(self.table["seriesuid"][r]),
                "coordX": float(self.table["coordX"][r]),
                "coordY": float(self.table["coordY"][r]),
                "coordZ": float(self.table["coordZ"][r]),
                "label": int(lbl),
                "probability": float(p[-1] if p.shape[0] > 1 else p[0]),
            }
            for r, p, lbl in zip(rows_all, probs_all, source.labels, strict=True)
        ]
        outputs: dict[int, Any] = {}
        if self.config.data.luna.label_mode == "nodule":
            result = self._froc(per_case)
            metrics.update(result.to_dict())
            outputs[0] = result
        return metrics, per_case, outputs

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

    def images(self, split: str, outputs: dict[int, Any], num: int) -> dict[str, np.ndarray]:
        del num
        if 0 not in outputs:
            return {}
        return {f"{split}/froc": froc.froc_plot_png(outputs[0], title=f"FROC ({split})")}

    def write_outputs(
        self, split: str, outputs: dict[int, Any], per_case: list[dict[str, Any]], out_dir: str
    ) -> None:
        """LUNA16's results file (``seriesuid,coordX,coordY,coordZ,probability``) and the FROC."""
        del split
        os.makedirs(out_dir, exist_ok=True)
        froc.write_results_csv(
            os.path.join(out_dir, "results.csv"),
            [
                (c["seriesuid"], c["coordX"], c["coordY"], c["coordZ"], c["probability"])
                for c in per_case
            ],
        )
        if 0 in outputs:
            froc.froc_plot_png(outputs[0], path=os.path.join(out_dir, "froc.png"))
            with open(os.path.join(out_dir, "froc.json"), "w") as f:
                json.dump(outputs[0].to_dict(), f, indent=1)


@registry.register("tasks.luna")
def get_luna(config: ml_collections.ConfigDict) -> LunaTask:
    """Factory of ``LunaTask``."""
    return LunaTask(config)
