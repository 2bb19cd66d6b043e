"""End to end: train, checkpoint, resume, evaluate, TensorBoard files (tiny 2D config)."""

import glob
import json
import os

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from medjax import errors
from medjax.testing import configs
from medjax.train import checkpoint as ckpt_lib
from medjax.train import loop


def _params(workdir, step=None):
    config = configs.tiny_unet()
    ck = ckpt_lib.Checkpointer(os.path.join(workdir, "ckpt"), config.ckpt, read_only=True)
    step = ck.latest_step() if step is None else step
    state = ck._manager.restore(step)["state"]
    ck.close()
    return step, state


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    summary = loop.train_and_evaluate(configs.tiny_unet(), workdir)
    return workdir, summary


def test_train_writes_checkpoints_metrics_and_summary(trained):
    workdir, summary = trained
    assert summary["final_step"] == 8  # 2 epochs x (32 cases // batch 8)
    assert os.path.isdir(os.path.join(workdir, "ckpt", "8"))
    lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    train = [x for x in lines if "train/loss" in x]
    assert [x["step"] for x in train] == [2, 4, 6, 8]
    assert all(np.isfinite(x["train/loss"]) and x["train/lr"] > 0 for x in train)
    val = [x for x in lines if "val/dice" in x]
    assert len(val) == 2 and all(0.0 <= x["val/dice"] <= 1.0 for x in val)
    assert all("val/hd95_mm" in x and "val/hd95_empty_cases" in x for x in val)  # 2D path too
    assert any("val/baseline_threshold_dice" in x for x in lines)
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["model"]["name"] == "unet"


def test_tensorboard_events_hold_scalars_and_images(trained):
    workdir, _ = trained
    files = glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
    assert files
    tags_scalars, tags_images = set(), set()
    for f in files:
        acc = event_accumulator.EventAccumulator(f, size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        tags_scalars |= set(acc.Tags()["scalars"])
        tags_images |= set(acc.Tags()["images"])
        if "train/loss" in acc.Tags()["scalars"]:
            assert len(acc.Scalars("train/loss")) == 4
    assert {"train/loss", "train/lr", "train/steps_per_sec", "val/dice", "val/iou"} <= tags_scalars
    assert {"val/sensitivity", "val/specificity", "val/baseline_threshold_dice"} <= tags_scalars
    assert any(t.startswith("val/samples") for t in tags_images)


def test_eval_mode_reproduces_logged_validation_dice(trained):
    workdir, summary = trained
    config = configs.tiny_unet()
    config.eval.split = "val"
    result = loop.evaluate(config, workdir)
    assert result["step"] == summary["best_step"]
    logged = [
        json.loads(x)
        for x in open(os.path.join(workdir, "metrics.jsonl"))
        if '"val/dice"' in x and json.loads(x)["step"] == result["step"]
    ]
    assert logged and result["dice"] == pytest.approx(logged[-1]["val/dice"], abs=1e-6)
    out = result["dir"]
    assert len(glob.glob(os.path.join(out, "predictions", "*.png"))) == 16
    assert os.path.exists(os.path.join(out, "per_case.csv"))


def test_resume_gives_same_parameters_as_uninterrupted(tmp_path):
    """k steps + restart + (n - k) steps == n steps, data order and augmentation included."""
    straight = str(tmp_path / "straight")
    loop.train_and_evaluate(configs.tiny_unet(), straight)
    resumed = str(tmp_path / "resumed")
    loop.train_and_evaluate(configs.tiny_unet(train__epochs=1), resumed)
    summary = loop.train_and_evaluate(configs.tiny_unet(), resumed)
    assert summary["final_step"] == 8
    _, a = _params(straight, 8)
    _, b = _params(resumed, 8)
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    for x, y in zip(
        jax.tree.leaves(a["batch_stats"]), jax.tree.leaves(b["batch_stats"]), strict=True
    ):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_nan_loss_raises_clear_error_and_keeps_checkpoint(tmp_path):
    workdir = str(tmp_path)
    loop.train_and_evaluate(configs.tiny_unet(train__epochs=1), workdir)
    with pytest.raises(errors.TrainingError, match="Non-finite loss"):
        loop.train_and_evaluate(configs.tiny_unet(optim__lr=1e30, train__epochs=2), workdir)
    # The good checkpoint of epoch 1 is still there and restorable.
    step, state = _params(workdir)
    assert step == 4
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


def test_one_and_eight_devices_give_the_same_losses(tmp_path):
    losses = {}
    for n in (1, 8):
        workdir = str(tmp_path / f"d{n}")
        loop.train_and_evaluate(configs.tiny_unet(mesh__data=n, train__epochs=1), workdir)
        lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
        losses[n] = [x["train/loss"] for x in lines if "train/loss" in x]
    assert len(losses[1]) == 2
    np.testing.assert_allclose(losses[1], losses[8], rtol=1e-4)
