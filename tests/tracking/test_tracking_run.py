"""A tiny run logged to MLflow (file store), W&B (offline) and TensorBoard, killed and resumed.

The trackers are read back with their own readers (``MlflowClient``, the ``.wandb`` records,
TensorBoard's EventAccumulator) and compared with ``metrics.jsonl``, the run's own record.
"""

import glob
import json
import os

import numpy as np
import pytest

pytest.importorskip("mlflow")
pytest.importorskip("wandb")

import wandb_records  # noqa: E402  (tests/tracking/wandb_records.py)
from mlflow.tracking import MlflowClient  # noqa: E402

from medjax.testing import configs  # noqa: E402
from medjax.tracking import base  # noqa: E402
from medjax.train import loop  # noqa: E402


def _config(tmp, **kw):
    return configs.tiny_unet(
        log__mlflow=True,
        log__mlflow_uri="file:" + str(tmp / "mlruns"),
        log__wandb=True,
        log__system_every_steps=2,
        log__num_images=1,
        **kw,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tracked")
    workdir = str(tmp / "run")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        loop.train_and_evaluate(_config(tmp, train__epochs=1), workdir)  # then "killed"
        first_id = base.read_ids(workdir)["mlflow"]["run_id"]
        loop.train_and_evaluate(_config(tmp), workdir)  # the rerun resumes at step 4
        config = _config(tmp)
        config.eval.split = "val"
        config.eval.write_predictions = False
        result = loop.evaluate(config, workdir)
    finally:
        mp.undo()
    rows = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    return tmp, workdir, first_id, rows, result


def test_mlflow_run_matches_metrics_jsonl_and_resumes(run):
    tmp, workdir, first_id, rows, result = run
    client = MlflowClient("file:" + str(tmp / "mlruns"))
    runs = client.search_runs([client.get_experiment_by_name("medjax").experiment_id])
    assert [r.info.run_id for r in runs] == [first_id]  # resume + eval: still one run
    r = runs[0]
    assert r.data.params["model.name"] == "unet"
    assert float(r.data.params["optim.lr"]) == pytest.approx(configs.tiny_unet().optim.lr)
    for key in ("train/loss", "val/dice", "system/rss_gb", "val/dice"):
        expected = [(x["step"], x[key]) for x in rows if key in x]
        hist = sorted(client.get_metric_history(first_id, key), key=lambda m: m.timestamp)
        assert expected and [(m.step, m.value) for m in hist] == pytest.approx(expected)
    assert [x["step"] for x in rows if "train/loss" in x] == [2, 4, 6, 8]
    arts = {a.path for a in client.list_artifacts(first_id, f"eval/val-step{result['step']}")}
    name = f"eval/val-step{result['step']}"
    assert {f"{name}/metrics.json", f"{name}/per_case.csv"} <= arts
    assert any(a.path.startswith("images") for a in client.list_artifacts(first_id))


def test_wandb_offline_files_hold_the_same_scalars(run):
    _, workdir, _, rows, _ = run
    files = sorted(glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "run-*.wandb")))
    run_id = base.read_ids(workdir)["wandb"]["run_id"]
    assert len(files) == 3 and all(f.endswith(f"run-{run_id}.wandb") for f in files)
    history = []
    for f in files:  # train, resumed train, evaluation: one run id
        h, summary, config = wandb_records.read_run(f)
        history += h
        assert config["model.name"] == "unet"
    got = [(h["global_step"], h["train/loss"]) for h in history if "train/loss" in h]
    assert got == pytest.approx([(x["step"], x["train/loss"]) for x in rows if "train/loss" in x])
    _, summary, _ = wandb_records.read_run(files[1])  # the training run's last values
    last = [x for x in rows if "val/dice" in x and x["step"] == 8][-1]  # before the eval
    assert summary["val/dice"] == pytest.approx(last["val/dice"])
    assert any(k.startswith("val/samples") for h in history for k in h)  # images
    evaluation = os.path.dirname(files[2])  # the evaluation's outputs are run files
    assert os.path.exists(os.path.join(evaluation, "files", "eval", "val-step4", "metrics.json"))


def test_system_metrics_are_logged_with_plausible_values(run):
    _, _, _, rows, _ = run
    sys_rows = [x for x in rows if "system/cpu_percent" in x]
    # Written when the step after every 2nd starts: 2 (steps 0-2), then the resumed process
    # 6 (steps 4-6); a process's last interval (ending at 4, 8) has no next step to start.
    assert [x["step"] for x in sys_rows] == [2, 6]
    for x in sys_rows:
        assert x["system/cpu_percent"] >= 0.0
        assert x["system/rss_gb"] > 0.01
        assert 0.0 <= x["system/data_wait_fraction"] <= 1.0
    assert np.isfinite([x["system/rss_gb"] for x in sys_rows]).all()


def test_tensorboard_holds_the_same_scalars(run):
    from tensorboard.backend.event_processing import event_accumulator

    _, workdir, _, rows, _ = run
    got = []
    for f in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
        acc = event_accumulator.EventAccumulator(f, size_guidance={"scalars": 0})
        acc.Reload()
        if "train/loss" in acc.Tags()["scalars"]:
            got += [(e.step, e.value) for e in acc.Scalars("train/loss")]
    expected = [(x["step"], x["train/loss"]) for x in rows if "train/loss" in x]
    assert sorted(got) == pytest.approx(expected, rel=1e-6)  # float32 in the event file


def test_export_logs_the_bundle_as_the_training_runs_model(run, monkeypatch):
    """``--mode=export`` with ``log.mlflow=True`` (medjax/cli.py calls ``bundle.log_model``)."""
    import mlflow.models

    from medjax.predict import bundle

    tmp, workdir, first_id, _, _ = run
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    path = bundle.export_bundle(workdir, str(tmp / "bundle"))
    bundle.log_model(workdir, path, _config(tmp))
    client = MlflowClient("file:" + str(tmp / "mlruns"))
    runs = client.search_runs([client.get_experiment_by_name("medjax").experiment_id])
    assert [r.info.run_id for r in runs] == [first_id]  # the training run, not a new one
    assert runs[0].info.status == "FINISHED"
    local = client.download_artifacts(first_id, "model", str(tmp / "model"))
    model = mlflow.models.Model.load(local)
    config = configs.tiny_unet()
    patch = tuple(config.data.patch_size)
    (inp,) = model.signature.inputs.inputs
    (out,) = model.signature.outputs.inputs
    assert inp.shape == (-1, *patch, config.model.in_channels)
    assert out.shape == (-1, *patch, config.model.num_classes)
    with open(os.path.join(local, "artifacts", "bundle", "metadata.json")) as f:
        assert json.load(f)["workdir"] == os.path.abspath(workdir)
