"""--mode=predict with a tiny LUNA16 run: results.csv of a candidates list reproduces eval's."""

import os

import numpy as np

from medjax.data import store, synthetic
from medjax.data.luna import froc
from medjax.predict import run_config, runner
from medjax.testing import configs
from medjax.train import loop


def test_luna_predict_writes_results_csv_matching_eval(tmp_path):
    config = configs.load_config("luna", "tiny")
    config.train.epochs = 1
    workdir = str(tmp_path / "run")
    loop.train_and_evaluate(config, workdir)
    evaluated = loop.evaluate(config, workdir)
    expected = {
        (uid, round(x, 3), round(y, 3), round(z, 3)): p
        for uid, x, y, z, p in froc.read_results_csv(os.path.join(evaluated["dir"], "results.csv"))
    }
    kwargs = config.data.luna.synthetic_kwargs.to_dict()
    root = os.path.join(synthetic.cache_dir(), "datasets", f"luna-{store.spec_hash(kwargs)}")

    predict_config = run_config.get_config(workdir)
    predict_config.predict.input = root
    predict_config.predict.output = str(tmp_path / "out")
    out = runner.predict(predict_config, workdir)
    got = {
        (uid, round(x, 3), round(y, 3), round(z, 3)): p
        for uid, x, y, z, p in froc.read_results_csv(tmp_path / "out" / "results.csv")
    }
    assert out["ok"] == 4 and len(got) >= len(expected) > 0
    for key, p in expected.items():
        np.testing.assert_allclose(got[key], p, atol=2e-6, err_msg=str(key))
