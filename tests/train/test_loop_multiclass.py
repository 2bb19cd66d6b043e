"""Multi-class (softmax) and region (sigmoid per region) 3D runs end to end, per-class keys."""

import csv
import glob
import json
import os

import nibabel as nib
import numpy as np

from medjax.testing import configs
from medjax.train import loop


def _tiny(variant: str):
    config = configs.load_config("unet3d", f"tiny,{variant}")
    config.train.val_every = 2  # 8 training cases, batch 8: two epochs of one step
    config.data.synthetic_kwargs.num_val = 2
    config.data.synthetic_kwargs.shape = (8, 32, 32)  # half the depth of :tiny's volumes
    config.data.preprocess.target_size = config.data.patch_size = (8, 24, 24)
    config.log.num_images = 1
    return config


def _check_run(config, workdir, names, label_values):
    summary = loop.train_and_evaluate(config, workdir, evaluate_after=True)
    assert summary["final_step"] == 2
    for name in names:
        assert 0.0 <= summary[f"val/dice/{name}"] <= 1.0
    # The headline Dice is the foreground mean of the per-class pooled Dice.
    np.testing.assert_allclose(
        summary["val/dice"], np.mean([summary[f"val/dice/{n}"] for n in names]), rtol=1e-12
    )
    result = summary["eval"]
    with open(os.path.join(result["dir"], "metrics.json")) as f:
        metrics = json.load(f)
    for name in names:
        for key in ("dice", "iou", "hd95_mm", "assd_mm", "hd95_empty_cases"):
            assert f"{key}/{name}" in metrics
    with open(os.path.join(result["dir"], "per_case.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for name in names:
        for key in ("dice", "iou", "hd95", "assd"):
            assert f"{key}/{name}" in rows[0]
    for path in glob.glob(os.path.join(result["dir"], "predictions", "*.nii.gz")):
        assert set(np.unique(np.asarray(nib.load(path).dataobj))) <= set(label_values)
    return summary


def test_multiclass_softmax_run_reports_each_class(tmp_path):
    _check_run(_tiny("multiclass"), str(tmp_path), ("cord", "lesion"), {0, 1, 2})


def test_region_run_trains_a_sigmoid_per_region(tmp_path):
    _check_run(_tiny("regions"), str(tmp_path), ("cord", "lesion"), {0, 1, 2})
