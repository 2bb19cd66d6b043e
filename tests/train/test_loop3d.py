"""3D end to end: patches smaller than the volumes, sliding-window validation, NIfTI outputs."""

import glob
import json
import os

import nibabel as nib
import numpy as np
import pytest

from medjax import errors
from medjax.data import synthetic
from medjax.testing import configs
from medjax.train import loop


def test_unet3d_tiny_trains_and_writes_predictions_in_the_input_geometry(tmp_path):
    config = configs.load_config("unet3d", "tiny")
    config.data.patch_size = (8, 16, 16)  # smaller than the 16x32x32 volumes: sliding windows
    config.train.epochs = 1
    workdir = str(tmp_path)
    summary = loop.train_and_evaluate(config, workdir)
    assert summary["final_step"] == 1
    assert np.isfinite(summary["val/hd95_mm"]) or np.isnan(summary["val/hd95_mm"])
    assert 0.0 <= summary["val/dice"] <= 1.0
    result = loop.evaluate(config, workdir)
    preds = sorted(glob.glob(os.path.join(result["dir"], "predictions", "*.nii.gz")))
    assert len(preds) == 2
    root = synthetic.ensure_dataset(config.data.synthetic, **config.data.synthetic_kwargs.to_dict())
    for path in preds:
        ours = nib.load(path)
        source = nib.load(os.path.join(root, "imagesTs", os.path.basename(path)))
        assert ours.shape == source.shape
        np.testing.assert_allclose(ours.affine, source.affine, atol=1e-5)
        assert set(np.unique(np.asarray(ours.dataobj))) <= {0, 1}

    # eval.blend reaches the sliding window: host blending gives the metrics of "auto" (which
    # blends these small volumes on the device).
    with open(os.path.join(result["dir"], "metrics.json")) as f:
        auto_metrics = json.load(f)
    config.eval.blend = "host"
    host = loop.evaluate(config, workdir)
    with open(os.path.join(host["dir"], "metrics.json")) as f:
        host_metrics = json.load(f)
    for key in ("dice", "iou", "sensitivity", "dice_per_case"):
        np.testing.assert_allclose(host_metrics[key], auto_metrics[key], rtol=1e-6, err_msg=key)


def test_unknown_eval_blend_fails_before_training(tmp_path):
    config = configs.load_config("unet3d", "tiny")
    config.eval.blend = "gpu"
    with pytest.raises(errors.ConfigError, match=r"eval\.blend='gpu'"):
        loop.train_and_evaluate(config, str(tmp_path))
    assert not os.path.exists(os.path.join(tmp_path, "ckpt"))
