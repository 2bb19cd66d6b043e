"""tasks.classification end to end (tiny): classification_folder -> store -> train -> evaluate."""

import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medjax import errors, registry
from medjax.tasks import classification
from medjax.testing import configs
from medjax.train import loop


def _config(root=None, store=None, **overrides):
    """``configs/vit.py:tiny`` (a ViT compiles in seconds), optionally on another folder."""
    c = configs.load_config("vit", "tiny")
    if root is not None:
        c.data.root = str(root)
        c.data.crawler_kwargs = {}  # the folder's own sorted class names
    if store is not None:
        c.data.store_dir = str(store)
    for dotted, value in overrides.items():
        section = c
        *parents, leaf = dotted.split("__")
        for p in parents:
            section = section[p]
        section[leaf] = value
    return c


def _write_pngs(root, counts, size=32, seed=0):
    """``root/<class>/<i>.png``: class ``k`` is noise around the level ``60 + 60 * k``."""
    rng = np.random.default_rng(seed)
    for k, (name, n) in enumerate(counts.items()):
        os.makedirs(root / name, exist_ok=True)
        for i in range(n):
            image = np.clip(rng.normal(60 + 60 * k, 20, (size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / name / f"{i:02d}.png")


def _auc_pairs(scores, positive):
    """ROC AUC by comparing every positive with every negative (ties count one half)."""
    pos, neg = scores[positive][:, None], scores[~positive][None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two steps on a 2-class PNG folder holding one corrupt file, then a test-split evaluation."""
    tmp = tmp_path_factory.mktemp("cls")
    root = tmp / "folder"
    _write_pngs(root, {"dark": 12, "bright": 12})
    broken = root / "bright" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    config = _config(root, tmp / "store", train__epochs=1, train__steps_per_epoch=2)
    # One cheap op: the whole augmentation list of the config is trained in test_configs.py.
    config.augment = ("flip(p=0.5)",)
    summary = loop.train_and_evaluate(config, str(tmp / "run"))
    result = loop.evaluate(config, str(tmp / "run"))
    return tmp, broken, summary, result


def test_corrupt_image_is_skipped_and_named_while_the_rest_trains(trained, capfd):
    tmp, broken, summary, _ = trained
    assert summary["final_step"] == 2 and np.isfinite(summary["val/loss"])
    report = json.load(open(tmp / "store" / "report.json"))
    assert report["num_ok"] == 24
    assert [p["files"] for p in report["skipped"]] == [[str(broken)]]
    # Named on stderr too, each time the store is built (here: the evaluation's).
    task = registry.get("tasks.classification")(_config(tmp / "folder", tmp / "store"))
    assert str(broken) in capfd.readouterr().err and len(task.skipped) == 1


def test_metrics_match_the_written_probabilities(trained):
    tmp, _, summary, result = trained
    for key in ("balanced_accuracy", "sensitivity/bright", "specificity/dark", "confusion/1_1"):
        assert f"val/{key}" in summary
    lines = [json.loads(x) for x in open(tmp / "run" / "metrics.jsonl")]
    assert [x["step"] for x in lines if "train/loss" in x] == [2]
    assert any("val/zero_rule_accuracy" in x for x in lines)
    metrics = json.load(open(os.path.join(result["dir"], "metrics.json")))
    rows = list(csv.DictReader(open(os.path.join(result["dir"], "per_case.csv"))))
    assert len(rows) == int(metrics["num_examples"]) and len({r["id"] for r in rows}) == len(rows)
    # Sorted class folders: bright = 0, dark = 1; the label comes from the image's folder.
    for r in rows:
        assert int(r["label"]) == (os.path.basename(os.path.dirname(r["image"])) == "dark")
    probs = np.array([[float(r["p_bright"]), float(r["p_dark"])] for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    assert len(set(labels)) == 2  # both classes validate, so every metric is defined
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    pred = probs.argmax(1)
    assert [int(r["prediction"]) for r in rows] == pred.tolist()
    assert metrics["accuracy"] == pytest.approx(np.mean(pred == labels))
    recalls = [np.mean(pred[labels == k] == k) for k in (0, 1)]
    assert metrics["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    assert metrics["sensitivity/dark"] == pytest.approx(recalls[1])
    assert metrics["specificity/dark"] == pytest.approx(recalls[0])
    assert metrics["auc"] == pytest.approx(_auc_pairs(probs[:, 1], labels == 1), abs=1e-9)
    for t in (0, 1):
        for p in (0, 1):
            assert metrics[f"confusion/{t}_{p}"] == np.sum((labels == t) & (pred == p))
    confusion = list(csv.reader(open(os.path.join(result["dir"], "confusion.csv"))))
    assert confusion[0][1:] == ["bright", "dark"]
    assert int(confusion[2][2]) == metrics["confusion/1_1"]


def test_3d_volumes_evaluate(tmp_path):
    root = tmp_path / "folder"
    rng = np.random.default_rng(1)
    for k, name in enumerate(("dark", "bright")):
        os.makedirs(root / name)
        for i in range(8):
            volume = rng.normal(k, 0.5, (12, 16, 16)).astype(np.float32)  # nibabel: x, y, z
            nib.save(nib.Nifti1Image(volume, np.eye(4)), str(root / name / f"v{i}.nii.gz"))
    config = _config(root, tmp_path / "store", data__val_fraction=0.5)
    config.data.preprocess.target_size = (8, 8, 8)
    config.data.patch_size = (8, 8, 8)
    config.model.kwargs.patch_size = (4, 4, 4)
    # The 3D data path up to the model: store shapes, batches, the evaluation's jitted step
    # (2D training covers the train step; 3D kernels are tested in tests/models).
    run = loop._Run(config, str(tmp_path / "run"), for_training=False)
    assert run.task.input_shape() == (1, 8, 8, 8, 1) and run.task.class_names == ["bright", "dark"]
    batch = next(iter(run.task.train_dataset(global_batch_size=8, seed=0)))
    assert batch["image"].shape == (8, 8, 8, 8, 1) and batch["label"].dtype == np.int32
    result = run.evaluate(run.fresh_state(), "val")
    metrics, per_case = result.metrics, result.per_case
    run.ckpt.close()
    assert len(per_case) == metrics["num_examples"] == len(run.task.labels("val")) > 0
    # A fresh ViT's head is zero: every probability is one half.
    assert all(r["p_dark"] == pytest.approx(0.5) for r in per_case)


def test_balanced_epochs_hold_the_ratio(tmp_path):
    root = tmp_path / "folder"
    _write_pngs(root, {"common": 24, "rare": 4}, size=16)
    config = _config(
        root,
        tmp_path / "store",
        data__val_fraction=0.0,
        data__classification__ratio=(1, 1),
        data__classification__epoch_length=16,
    )
    config.data.preprocess.target_size = (16, 16)
    config.data.preprocess.normalization = {"name": "none"}  # keep the class levels apart
    config.data.patch_size = (16, 16)
    task = registry.get("tasks.classification")(config)
    assert task.num_train == 16
    it = iter(task.train_dataset(global_batch_size=8, seed=0))
    batches = [next(it) for _ in range(6)]  # three epochs
    for epoch in range(3):
        labels = np.concatenate([b["label"] for b in batches[2 * epoch : 2 * epoch + 2]])
        assert np.bincount(labels, minlength=2).tolist() == [8, 8]
    # Each image is the one of its label: the rare class is the brighter one (120 vs 60).
    for b in batches:
        means = b["image"].reshape(8, -1).mean(1)
        assert np.all((means > 90) == (b["label"] == 1))


def test_bad_configs_name_the_key(tmp_path):
    root = tmp_path / "folder"
    _write_pngs(root, {"a": 4, "b": 4, "c": 4}, size=16)
    config = _config(root, tmp_path / "store")
    config.data.preprocess.target_size = (16, 16)
    config.data.patch_size = (16, 16)
    with pytest.raises(errors.ConfigError, match="model.num_classes=2 .* 3 classes"):
        registry.get("tasks.classification")(config)
    config.model.num_classes = 3
    config.data.patch_size = (32, 32)
    with pytest.raises(errors.ConfigError, match="data.patch_size"):
        registry.get("tasks.classification")(config)
    # A segmentation folder has no classes: the message names the crawler to use.
    seg = tmp_path / "seg"
    _write_pngs(seg, {"images": 2, "masks": 2}, size=16)
    config = _config(seg, tmp_path / "store_seg", data__crawler="segmentation_file")
    with pytest.raises(errors.DataError, match="data.crawler='classification_folder'"):
        registry.get("tasks.classification")(config)


def test_per_class_rates_by_hand():
    # rows true, columns predicted: class 0 has 3 right, 1 called class 1; etc.
    cm = np.array([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    rates = classification.per_class_rates(cm)
    np.testing.assert_allclose(rates["sensitivity"][:2], [3 / 4, 4 / 6])
    assert np.isnan(rates["sensitivity"][2])  # no example of class 2
    np.testing.assert_allclose(rates["specificity"], [4 / 6, 3 / 4, 10 / 10])
