"""data.fold='all' on the tiny 2D config: two folds trained, splits.json once, the summary."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from medjax import errors
from medjax.data import pipeline
from medjax.plan import postprocessing
from medjax.testing import configs
from medjax.train import crossval


def test_fold_all_trains_each_fold_and_summarizes(tmp_path):
    config = configs.tiny_unet(train__epochs=1, train__steps_per_epoch=2)
    config.data.store_dir = str(tmp_path / "store")  # a fresh store: splits.json from scratch
    config.data.num_folds = 2
    config.data.fold = "all"
    config.eval.write_predictions = False
    config.log.images_every = 0
    workdir = str(tmp_path / "cv")
    summary = crossval.train_folds(config, workdir)

    doc = json.load(open(tmp_path / "store" / "splits.json"))
    # The folds' validation cases: disjoint, covering every train + val case (32 + 16), and
    # exactly the cases each fold was evaluated on.
    vals = [set(f["val"]) for f in doc["folds"]]
    assert not vals[0] & vals[1] and len(vals[0] | vals[1]) == 48
    for k in range(2):
        assert os.path.exists(os.path.join(workdir, f"fold_{k}", "ckpt"))
        latest = crossval._latest_eval(os.path.join(workdir, f"fold_{k}"), "val")
        with open(os.path.join(latest, "per_case.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == len(vals[k])
    # The summary against the folds' own metrics.json files (numpy float64).
    assert summary["num_folds"] == 2 and summary["num_cases"] == 48
    dice = []
    for k in range(2):
        latest = crossval._latest_eval(os.path.join(workdir, f"fold_{k}"), "val")
        dice.append(json.load(open(os.path.join(latest, "metrics.json")))["dice"])
        assert summary["folds"][str(k)]["dice"] == pytest.approx(dice[-1])
    assert summary["mean"]["dice"] == pytest.approx(np.mean(dice))
    assert summary["sd"]["dice"] == pytest.approx(np.std(dice, ddof=1))
    assert json.load(open(os.path.join(workdir, "cv_summary.json"))) == summary
    # Post-processing chosen on the out-of-fold predictions: Dice before any option is the
    # mean per-case Dice of all folds' per_case.csv (computed on device from voxel counts).
    doc = crossval.choose_postprocessing(config, workdir)
    assert doc["num_cases"] == 48
    assert doc["classes"]["1"]["dice_before"] == pytest.approx(summary["pooled"]["dice"], abs=1e-6)
    assert doc["classes"]["1"]["dice_after"] >= doc["classes"]["1"]["dice_before"]
    assert postprocessing.load(workdir) == doc
    # A single fold through the pipeline sees the same validation cases as recorded.
    config.data.fold = "1"
    data = pipeline.prepare_data(config)
    assert {e["id"] for e in data.splits["val"]} == vals[1]


def test_choose_postprocessing_refuses_region_runs(tmp_path):
    config = configs.load_config("unet3d", "tiny,regions")
    assert config.data.regions  # the overlapping regions ((1, 2), (2,))
    with pytest.raises(errors.ConfigError, match="data.regions"):
        crossval.choose_postprocessing(config, str(tmp_path))
    assert not os.listdir(tmp_path)  # refused before anything was read or written


def test_summary_leaves_undefined_values_out_of_means(tmp_path):
    # A case with one empty mask has HD95 NaN (counted, never 0): the pooled mean is over the
    # cases where it is defined, as in the evaluation itself, not NaN for the whole column.
    folds = {0: ([3.0, float("nan")], 3.0), 1: ([1.0, 2.0], float("nan"))}
    for k, (hd95, fold_mean) in folds.items():
        out = tmp_path / f"fold_{k}" / "eval" / "val-step4"
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps({"dice": 0.5 + k / 10, "hd95_mm": fold_mean}))
        with open(out / "per_case.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["id", "dice", "hd95"])
            w.writeheader()
            w.writerows({"id": f"c{k}{i}", "dice": 0.5, "hd95": v} for i, v in enumerate(hd95))
    summary = crossval.summarize(str(tmp_path))
    assert summary["pooled"]["hd95"] == pytest.approx(2.0)  # (3 + 1 + 2) / 3
    assert summary["mean"]["hd95_mm"] == pytest.approx(3.0) and summary["sd"]["hd95_mm"] == 0.0
    assert summary["mean"]["dice"] == pytest.approx(0.55)
    assert summary["num_cases"] == 4
