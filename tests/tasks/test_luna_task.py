"""LUNA16 end to end (tiny): cutouts, balanced training, FROC, results.csv, malignancy fine-tune."""

import csv
import json
import os

import numpy as np

from medjax.testing import configs
from medjax.train import loop


def test_luna_trains_evaluates_and_malignancy_fine_tunes_from_it(tmp_path):
    nodule_dir = str(tmp_path / "nodule")
    summary = loop.train_and_evaluate(configs.load_config("luna", "tiny"), nodule_dir)
    assert summary["final_step"] == 8  # 2 epochs x (epoch_length 32 // batch 8)
    assert 0.0 <= summary["val/auc"] <= 1.0
    assert "val/froc/cpm" in summary and "val/confusion/1_1" in summary
    lines = [json.loads(x) for x in open(os.path.join(nodule_dir, "metrics.jsonl"))]
    assert any("val/zero_rule_accuracy" in x for x in lines)
    result = loop.evaluate(configs.load_config("luna", "tiny"), nodule_dir)
    rows = list(csv.DictReader(open(os.path.join(result["dir"], "results.csv"))))
    assert rows and set(rows[0]) == {"seriesuid", "coordX", "coordY", "coordZ", "probability"}
    assert all(0.0 <= float(r["probability"]) <= 1.0 for r in rows)
    assert int(result["num_examples"]) == len(rows)
    assert os.path.exists(os.path.join(result["dir"], "froc.png"))

    config = configs.load_config("luna_malignancy", "tiny")
    config.init_from = nodule_dir
    malignancy_dir = str(tmp_path / "malignancy")
    loop.train_and_evaluate(config, malignancy_dir)
    from medjax.train import checkpoint as ckpt_lib

    def params(workdir):
        ck = ckpt_lib.Checkpointer(os.path.join(workdir, "ckpt"), config.ckpt, read_only=True)
        state = ck._manager.restore(ck.latest_step())["state"]
        ck.close()
        return state["params"]

    nodule, malignant = params(nodule_dir), params(malignancy_dir)
    # Frozen blocks keep the nodule classifier's weights exactly; trained ones moved.
    np.testing.assert_array_equal(
        nodule["block1"]["conv1"]["kernel"], malignant["block1"]["conv1"]["kernel"]
    )
    assert not np.array_equal(
        nodule["block4"]["conv1"]["kernel"], malignant["block4"]["conv1"]["kernel"]
    )
