"""--mode=predict with a tiny 2D run: eval's masks reproduced, bad files listed, ensembles,
overwrite refusal, a workdir without checkpoint, and the plan of runs older than plan.json."""

import csv
import glob
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from medjax import errors
from medjax.data import store
from medjax.predict import plan as plan_lib
from medjax.predict import run_config, runner
from medjax.testing import configs
from medjax.train import loop


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny 2D runs (seeds 0 and 1, one epoch each) and run 0's test-split evaluation."""
    out, config = {}, None
    for seed in (1, 0):
        config = configs.load_config("unet", "tiny")
        config.train.epochs = 1
        config.seed = seed
        workdir = str(tmp_path_factory.mktemp(f"run{seed}"))
        loop.train_and_evaluate(config, workdir)
        out[seed] = workdir
    out["eval"] = loop.evaluate(config, out[0])
    with open(os.path.join(out[0], "plan.json")) as f:
        manifest = store.load_manifest(json.load(f)["store_dir"])
    out["test_images"] = [
        e["source"]["image"][0] for e in manifest["cases"] if e["split"] == "test"
    ]
    return out


def _predict(workdir, input_path, output, **predict):
    config = run_config.get_config(workdir)
    config.predict.input = str(input_path)
    config.predict.output = str(output)
    for k, v in predict.items():
        config.predict[k] = v
    return runner.predict(config, workdir)


def _rows(result):
    with open(result["csv"]) as f:
        return list(csv.DictReader(f))


def test_predict_reproduces_eval_masks_and_lists_bad_files(runs, tmp_path):
    folder = tmp_path / "new"
    folder.mkdir()
    for path in runs["test_images"]:
        shutil.copy(path, folder)
    good = runs["test_images"][0]
    with open(good, "rb") as f:
        (folder / "truncated.png").write_bytes(f.read()[:120])  # header only: unreadable
    (folder / "notes.bin").write_bytes(b"not an image")
    result = _predict(runs[0], folder, tmp_path / "out")

    rows = {os.path.basename(r["source"]): r for r in _rows(result)}
    assert rows["truncated.png"]["status"] == "skipped" and rows["truncated.png"]["reason"]
    assert rows["notes.bin"]["status"] == "skipped" and "not" in rows["notes.bin"]["reason"]
    eval_dir = os.path.join(runs["eval"]["dir"], "predictions")
    assert result["ok"] == len(runs["test_images"]) == 16
    for path in runs["test_images"]:
        name = os.path.basename(path)
        assert rows[name]["status"] == "ok"
        ours = np.asarray(Image.open(tmp_path / "out" / name))
        theirs = np.asarray(Image.open(os.path.join(eval_dir, name)))
        assert ours.shape == np.asarray(Image.open(path)).shape
        np.testing.assert_array_equal(ours, theirs, err_msg=name)
        # predictions.csv counts what the written mask holds (binary masks are 0/255).
        assert int(rows[name]["class1_voxels"]) == int(np.count_nonzero(ours))
        assert 0.0 <= float(rows[name]["max_probability"]) <= 1.0


def test_ensemble_is_the_mean_of_member_probabilities(runs, tmp_path):
    image = runs["test_images"][3]
    probs = []
    for seed in (0, 1):
        _predict(runs[seed], image, tmp_path / f"p{seed}", save_probabilities=True)
        probs.append(_load_probs(tmp_path / f"p{seed}"))
    _predict(runs[0], image, tmp_path / "ens", save_probabilities=True, ensemble=(runs[1],))
    ens = _load_probs(tmp_path / "ens")
    mean = (probs[0].astype(np.float64) + probs[1]) / 2
    np.testing.assert_allclose(ens, mean, rtol=0, atol=1e-6)
    mask = np.asarray(Image.open(glob.glob(str(tmp_path / "ens" / "*.png"))[0]))
    np.testing.assert_array_equal(mask, np.where(mean[..., 0] > 0.5, 255, 0))


def _load_probs(folder):
    import nibabel as nib

    (path,) = glob.glob(str(folder / "*_probabilities.nii.gz"))
    data = np.asarray(nib.load(path).dataobj, np.float64)
    # 2D is written as one NIfTI slice with channels in dim 4: (W, H, 1, K) -> [H, W, K].
    return np.transpose(data[:, :, 0, :], (1, 0, 2))


def test_nonempty_output_is_refused_unless_overwrite(runs, tmp_path):
    image = runs["test_images"][0]
    _predict(runs[0], image, tmp_path / "out")
    with pytest.raises(errors.ConfigError, match=r"predict.output=.* is not empty.*overwrite"):
        _predict(runs[0], image, tmp_path / "out")
    assert _predict(runs[0], image, tmp_path / "out", overwrite=True)["ok"] == 1


def test_missing_checkpoint_and_disagreeing_ensemble_fail_at_once(runs, tmp_path):
    empty = tmp_path / "untrained"
    shutil.copytree(runs[0], empty, ignore=shutil.ignore_patterns("ckpt"))
    with pytest.raises(errors.CheckpointError, match="no checkpoint"):
        _predict(str(empty), runs["test_images"][0], tmp_path / "o1")
    other = tmp_path / "three_class"
    shutil.copytree(runs[1], other)
    plan = plan_lib.load_plan(str(other))
    plan.update(num_classes=3, label_values=[0, 1, 2])
    (other / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(errors.ConfigError, match=r"num_classes=3"):
        _predict(runs[0], runs["test_images"][0], tmp_path / "o2", ensemble=(str(other),))


def test_plan_of_an_older_run_is_rebuilt_from_its_store(runs, tmp_path):
    recorded = plan_lib.load_plan(runs[0])
    assert recorded["spec"]["target_size"] == [32, 32]
    assert recorded["channels"] == 1 and recorded["num_classes"] == 1
    old = tmp_path / "old"
    shutil.copytree(runs[0], old, ignore=shutil.ignore_patterns("ckpt", "plan.json"))
    assert plan_lib.load_plan(str(old)) == recorded
    config = json.loads((old / "config.json").read_text())
    config["data"]["store_dir"] = str(tmp_path / "deleted-store")
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(errors.DataError, match="is gone"):
        plan_lib.load_plan(str(old))


def test_console_command_predicts_with_the_runs_own_config(runs, tmp_path):
    """``python -m medjax.cli predict`` (what the installed ``medjax`` runs), no --config."""
    import subprocess
    import sys

    image = runs["test_images"][1]
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "medjax.cli",
            "predict",
            f"--workdir={runs[0]}",
            f"--config.predict.input={image}",
            f"--config.predict.output={tmp_path / 'cli'}",
        ],
        cwd=repo,
        env=dict(os.environ),  # the same 8 CPU devices and caches as this process
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    name = os.path.basename(image)
    ours = np.asarray(Image.open(tmp_path / "cli" / name))
    theirs = np.asarray(Image.open(os.path.join(runs["eval"]["dir"], "predictions", name)))
    np.testing.assert_array_equal(ours, theirs)


# --- the run's post-processing (postprocessing.json) in eval, predict and bundles --------------

KEEP_LARGEST = {
    "version": 1,
    "metric": "dice",
    "connectivity": "face",
    "num_cases": 0,
    "classes": {"1": {"keep_largest": True, "min_size_voxels": 0}},
}


def _largest(mask):
    """scipy.ndimage reference: the largest face-connected component of ``mask``."""
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    if n == 0:
        return np.zeros(mask.shape, bool)
    return lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))


def _without_small(mask, min_size):
    from scipy import ndimage

    lab, _ = ndimage.label(mask)
    sizes = np.bincount(lab.ravel())
    return mask & (sizes[lab] >= min_size)


@pytest.fixture(scope="module")
def cv(runs, tmp_path_factory):
    """A cross-validation folder: runs 0 and 1 as fold_0 / fold_1, and a hand-written choice
    (class 1: keep the largest component) in the folder, as --mode=choose_postprocessing
    writes it after data.fold=all."""
    root = tmp_path_factory.mktemp("cv")
    for k in (0, 1):
        shutil.copytree(runs[k], root / f"fold_{k}", ignore=shutil.ignore_patterns("eval"))
    (root / "postprocessing.json").write_text(json.dumps(KEEP_LARGEST))
    folder = root / "new"
    folder.mkdir()
    for path in runs["test_images"][:4]:
        shutil.copy(path, folder)
    return root


def test_eval_scores_the_postprocessed_predictions(cv):
    from medjax.train import crossval

    config = configs.load_config("unet", "tiny")
    config.train.epochs = 1
    config.seed = 0
    config.eval.split = "val"
    config.eval.write_predictions = False
    fold = str(cv / "fold_0")
    raw, truths = crossval._validation_pairs(config, fold)  # the network's own label maps
    result = loop.evaluate(config, fold)  # the fold finds its cross-validation's choice

    with open(os.path.join(result["dir"], "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["postprocessed"] is True
    assert metrics["postprocessing"] == str(cv / "postprocessing.json")
    kept = [_largest(p > 0) for p in raw]
    assert any((k != (p > 0)).any() for k, p in zip(kept, raw, strict=True))
    with open(os.path.join(result["dir"], "per_case.csv")) as f:
        rows = {int(r["index"]): r for r in csv.DictReader(f)}
    tp = fp_fn = 0
    for i, (k, t) in enumerate(zip(kept, truths, strict=True)):
        t = t > 0
        want = 1.0 if k.sum() + t.sum() == 0 else 2.0 * (k & t).sum() / (k.sum() + t.sum())
        assert float(rows[i]["dice"]) == pytest.approx(want, abs=1e-9), i
        tp, fp_fn = tp + (k & t).sum(), fp_fn + k.sum() + t.sum()
    assert metrics["dice"] == pytest.approx(2.0 * tp / fp_fn, abs=1e-9)


def _predict_post(workdir, input_path, output, **post):
    config = run_config.get_config(str(workdir))
    config.predict.input = str(input_path)
    config.predict.output = str(output)
    for k, v in post.items():
        config.predict.postprocess[k] = v
    return runner.predict(config, str(workdir))


def _masks(folder, names):
    return [np.asarray(Image.open(os.path.join(folder, n))) > 0 for n in names]


def test_predict_applies_the_choice_unless_the_user_sets_one(cv, tmp_path):
    names = sorted(os.listdir(cv / "new"))
    raw = _predict_post(cv, cv / "new", tmp_path / "raw", auto=False)  # the folds' ensemble
    auto = _predict_post(cv, cv / "new", tmp_path / "auto")
    user = _predict_post(cv, cv / "new", tmp_path / "user", min_size_voxels=3)
    assert (raw["postprocessing"], auto["postprocessing"]) == ("", str(cv / "postprocessing.json"))
    assert user["postprocessing"] == "predict.postprocess"
    raw_masks = _masks(tmp_path / "raw", names)
    for name, r, a, u in zip(
        names,
        raw_masks,
        _masks(tmp_path / "auto", names),
        _masks(tmp_path / "user", names),
        strict=True,
    ):
        np.testing.assert_array_equal(a, _largest(r), err_msg=name)
        np.testing.assert_array_equal(u, _without_small(r, 3), err_msg=name)
    assert any((_largest(r) != r).any() for r in raw_masks)  # the choice changed something
    # ... and the user's setting is not the choice on these cases.
    assert any((_largest(r) != _without_small(r, 3)).any() for r in raw_masks)


def test_bundle_carries_the_choice(runs, cv, tmp_path):
    from medjax.predict import bundle

    path = bundle.export_bundle(str(cv / "fold_0"), str(tmp_path / "bundle"))
    with open(os.path.join(path, "postprocessing.json")) as f:
        assert json.load(f) == KEEP_LARGEST
    names = sorted(os.listdir(cv / "new"))
    out = bundle.load_bundle(path).predict(str(cv / "new"), str(tmp_path / "out"))
    assert out["postprocessing"] == os.path.join(path, "postprocessing.json")
    eval_dir = os.path.join(runs["eval"]["dir"], "predictions")  # run 0's raw masks (test split)
    for name, mask, raw in zip(
        names, _masks(tmp_path / "out", names), _masks(eval_dir, names), strict=True
    ):
        np.testing.assert_array_equal(mask, _largest(raw), err_msg=name)


def test_cross_validation_exports_an_ensemble_bundle_that_predicts_as_the_folds(cv, tmp_path):
    from medjax.predict import bundle

    path = bundle.export_bundle(str(cv), str(tmp_path / "ensemble"))
    with open(os.path.join(path, bundle.ENSEMBLE_FILE)) as f:
        assert json.load(f)["members"] == ["fold_0", "fold_1"]
    for k in (0, 1):  # each fold a whole bundle, carrying the cross-validation's choice
        assert bundle.is_bundle(os.path.join(path, f"fold_{k}"))
        with open(os.path.join(path, f"fold_{k}", "postprocessing.json")) as f:
            assert json.load(f) == KEEP_LARGEST
    names = sorted(os.listdir(cv / "new"))
    from_cv = _predict_post(cv, cv / "new", tmp_path / "cv")
    from_bundle = _predict_post(path, cv / "new", tmp_path / "bundle")
    assert from_bundle["postprocessing"] == os.path.join(path, "fold_0", "postprocessing.json")
    assert from_cv["ok"] == from_bundle["ok"] == len(names)
    for name, a, b in zip(
        names, _masks(tmp_path / "cv", names), _masks(tmp_path / "bundle", names), strict=True
    ):
        np.testing.assert_array_equal(a, b, err_msg=name)
    # The folds' mean probability, not one fold's: the same numbers either way (float32).
    for a, b in zip(from_cv["rows"], from_bundle["rows"], strict=True):
        assert float(a["max_probability"]) == pytest.approx(float(b["max_probability"]), abs=1e-5)
    with pytest.raises(errors.CheckpointError, match="ensemble bundle of 2 folds"):
        bundle.load_bundle(path)
    # `medjax export --workdir=<cv>` (no --config) reads the first fold's config there.
    with open(cv / "fold_0" / "config.json") as f:
        fold_config = json.load(f)
    assert fold_config["train"]["epochs"] != run_config.get_config().train.epochs
    assert run_config.get_config(str(cv)).train.epochs == fold_config["train"]["epochs"]
    # Member names come from the file: anything but fold_<k> inside the bundle is refused.
    with open(os.path.join(path, bundle.ENSEMBLE_FILE), "w") as f:
        json.dump({"members": ["../../elsewhere"]}, f)
    with pytest.raises(errors.CheckpointError, match="not a fold_<k> folder"):
        bundle.ensemble_members(path)


def test_failed_ensemble_export_leaves_nothing(cv, tmp_path):
    from medjax.predict import bundle

    broken = tmp_path / "cv"
    shutil.copytree(cv, broken)
    shutil.rmtree(broken / "fold_1" / "ckpt")  # fold 0 exports, fold 1 cannot
    with pytest.raises(errors.CheckpointError, match="fold_1"):
        bundle.export_bundle(str(broken), str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["cv"]  # no half-written bundle or temp folder
