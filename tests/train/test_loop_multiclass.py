"""Multi-class (softmax) and region (sigmoid per region) 3D runs end to end, per-class keys."""

import csv
import glob
import json
import os

import nibabel as nib
import numpy as np
import pytest

from medjax import errors
from medjax.data import synthetic
from medjax.predict import run_config
from medjax.predict import runner as predict_runner
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
    paths = sorted(glob.glob(os.path.join(result["dir"], "predictions", "*.nii.gz")))
    assert len(paths) == 2
    for path in paths:
        assert set(np.unique(np.asarray(nib.load(path).dataobj))) <= set(label_values)
    return result["dir"]


def test_multiclass_softmax_run_reports_each_class(tmp_path):
    _check_run(_tiny("multiclass"), str(tmp_path), ("cord", "lesion"), {0, 1, 2})


def test_region_run_trains_a_sigmoid_per_region_and_predict_paints_as_eval(tmp_path):
    config = _tiny("regions")
    workdir = str(tmp_path / "run")
    eval_dir = _check_run(config, workdir, ("cord", "lesion"), {0, 1, 2})
    # Predict on the raw test volumes paints the region sigmoids exactly as evaluation did.
    root = synthetic.ensure_dataset(config.data.synthetic, **config.data.synthetic_kwargs.to_dict())
    predict_config = run_config.get_config(workdir)
    predict_config.predict.input = os.path.join(root, "imagesTs")
    predict_config.predict.output = str(tmp_path / "out")
    predict_runner.predict(predict_config, workdir)
    for path in sorted(glob.glob(os.path.join(eval_dir, "predictions", "*.nii.gz"))):
        ours = nib.load(os.path.join(tmp_path, "out", os.path.basename(path)))
        np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(nib.load(path).dataobj))


def test_regions_need_one_channel_each_before_any_data_is_built(tmp_path):
    config = _tiny("regions")
    config.model.num_classes = 3
    with pytest.raises(errors.ConfigError, match=r"model\.num_classes must be 2"):
        loop.train_and_evaluate(config, str(tmp_path))
    assert not os.path.exists(os.path.join(tmp_path, "ckpt"))
