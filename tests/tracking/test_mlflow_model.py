"""An exported bundle logged as the MLflow run's pyfunc model, read back with MLflow's reader."""

import os

import pytest

pytest.importorskip("mlflow")

import mlflow.models  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from medjax.testing import configs  # noqa: E402
from medjax.train import metric_writer  # noqa: E402


def test_bundle_is_logged_as_a_model_with_its_signature(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = "file:" + str(tmp_path / "mlruns")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "metadata.json").write_text('{"step": 4}')
    config = configs.tiny_unet(log__mlflow=True, log__mlflow_uri=uri)
    writer = metric_writer.MetricWriter(str(tmp_path / "run"), config)
    writer.write_model(str(bundle), (16, 16, 1), (16, 16, 2))
    writer.close()
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("medjax").experiment_id])
    local = client.download_artifacts(run.info.run_id, "model", str(tmp_path / "dl"))
    model = mlflow.models.Model.load(local)
    (inp,) = model.signature.inputs.inputs
    (out,) = model.signature.outputs.inputs
    assert (inp.shape, str(inp.type)) == ((-1, 16, 16, 1), "float32")
    assert (out.shape, str(out.type)) == ((-1, 16, 16, 2), "float32")
    assert open(os.path.join(local, "artifacts", "bundle", "metadata.json")).read() == '{"step": 4}'
    assert "python_function" in model.flavors
