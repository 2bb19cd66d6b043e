"""--mode=predict with a tiny classification run: eval's class probabilities reproduced."""

import csv
import json
import os
import shutil

import numpy as np

from medjax.data import store
from medjax.predict import run_config, runner
from medjax.testing import configs
from medjax.train import loop


def _flat(path):
    return "_".join(path.split(os.sep)[-2:])


def test_classification_predict_reproduces_eval_probabilities(tmp_path):
    config = configs.load_config("resnet", "tiny")
    config.train.epochs = 1
    workdir = str(tmp_path / "run")
    loop.train_and_evaluate(config, workdir)
    result = loop.evaluate(config, workdir)
    with open(os.path.join(result["dir"], "per_case.csv")) as f:
        # <class>/<case>.png: the same file name can occur under both classes.
        expected = {_flat(r["image"]): r for r in csv.DictReader(f)}
    with open(os.path.join(workdir, "plan.json")) as f:
        plan = json.load(f)
    assert plan["task"] == "classification" and plan["label_names"] == ["no_lesion", "lesion"]
    manifest = store.load_manifest(plan["store_dir"])
    folder = tmp_path / "new"
    folder.mkdir()
    for entry in manifest["cases"]:
        name = _flat(entry["source"]["image"][0])
        if name in expected:
            shutil.copy(entry["source"]["image"][0], folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")

    predict_config = run_config.get_config(workdir)
    predict_config.predict.input = str(folder)
    predict_config.predict.output = str(tmp_path / "out")
    out = runner.predict(predict_config, workdir)
    rows = {os.path.basename(r["source"]): r for r in out["rows"]}
    assert rows["broken.png"]["status"] == "skipped"
    assert out["ok"] == len(expected) > 0
    for name, want in expected.items():
        got = rows[name]
        for cls in ("no_lesion", "lesion"):
            np.testing.assert_allclose(float(got[f"p_{cls}"]), float(want[f"p_{cls}"]), atol=2e-6)
        assert got["predicted"] == want["predicted_class"]
