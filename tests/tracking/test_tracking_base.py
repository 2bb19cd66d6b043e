"""Tracker plumbing: the MLflow URI's precedence, MLflow-safe keys, the run ids file."""

import os

from medjax.testing import configs
from medjax.tracking import base, mlflow_backend


def test_mlflow_uri_precedence(tmp_path, monkeypatch):
    workdir = str(tmp_path / "runs" / "a")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = configs.tiny_unet()
    assert mlflow_backend.tracking_uri(config, workdir) == "file:" + str(
        tmp_path / "runs" / "mlruns"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracker:5000")
    assert mlflow_backend.tracking_uri(config, workdir) == "http://tracker:5000"
    config.log.mlflow_uri = "sqlite:///x.db"
    assert mlflow_backend.tracking_uri(config, workdir) == "sqlite:///x.db"


def test_metric_keys_keep_allowed_characters_only():
    assert mlflow_backend.metric_key("val/dice_class-1.x") == "val/dice_class-1.x"
    assert mlflow_backend.metric_key("val/froc/sens@0.125") == "val/froc.sens_0.125"
    # A name and its sub-names both fit MLflow's file store (one folder level only).
    assert mlflow_backend.metric_key("train/loss/dice") == "train/loss.dice"
    assert mlflow_backend.metric_key("val/samples (a | b)") == "val/samples _a _ b_"


def test_run_ids_file_keeps_each_backend(tmp_path):
    assert base.read_ids(str(tmp_path)) == {}
    base.write_ids(str(tmp_path), "mlflow", {"run_id": "abc", "tracking_uri": "file:/x"})
    base.write_ids(str(tmp_path), "wandb", {"run_id": "w1"})
    assert base.read_ids(str(tmp_path)) == {
        "mlflow": {"run_id": "abc", "tracking_uri": "file:/x"},
        "wandb": {"run_id": "w1"},
    }
    assert sorted(os.listdir(tmp_path)) == [base.IDS_FILE]  # no temporary file left
