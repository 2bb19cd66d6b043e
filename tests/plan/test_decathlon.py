"""An unseen Decathlon folder (anisotropic, 3 label classes, unlabelled imagesTs) through
``launch.py --mode=plan`` and a planned training run, as a user runs them (issue 17)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPACING_XYZ = (0.8, 0.8, 4.0)  # NIfTI x, y, z: 4 mm slices, 0.8 mm in-plane


def _decathlon(root: str, num_train: int = 8, num_test: int = 2) -> None:
    """Ellipsoid "gland" (1) with an inner "zone" (2); the test images have no labels."""
    rng = np.random.default_rng(0)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        os.makedirs(os.path.join(root, sub))
    training, test = [], []
    for i in range(num_train + num_test):
        shape = (48, 48, 8)  # x, y, z
        x, y, z = np.meshgrid(*[np.arange(s) - s / 2 for s in shape], indexing="ij")
        r = np.sqrt((x * 0.8 / 14) ** 2 + (y * 0.8 / 12) ** 2 + (z * 4.0 / 12) ** 2)
        label = np.where(r < 0.5, 2, np.where(r < 1, 1, 0)).astype(np.uint8)
        image = (100 + 60 * label + 10 * rng.standard_normal(shape)).astype(np.float32)
        affine = np.diag([*SPACING_XYZ, 1.0])
        name = f"case_{i:03d}.nii.gz"
        if i < num_train:
            nib.save(nib.Nifti1Image(image, affine), os.path.join(root, "imagesTr", name))
            nib.save(nib.Nifti1Image(label, affine), os.path.join(root, "labelsTr", name))
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            nib.save(nib.Nifti1Image(image, affine), os.path.join(root, "imagesTs", name))
            test.append(f"./imagesTs/{name}")
    info = {
        "name": "Unseen",
        "labels": {"0": "background", "1": "gland", "2": "zone"},
        "training": training,
        "test": test,
    }
    with open(os.path.join(root, "dataset.json"), "w") as f:
        json.dump(info, f)


def _launch(tmp_path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--config=configs/unet3d.py:tiny",
        f"--workdir={tmp_path}/run",
        f"--config.data.root={tmp_path}/Task01_Unseen",
        f"--config.data.store_dir={tmp_path}/store",
        "--config.data.preprocess.target_spacing_mm=auto",
        "--config.data.preprocess.target_size=None",
        "--config.data.preprocess.label_mode=keep",
        "--config.model.num_classes=3",
        "--config.plan.base_features=4",
        "--config.model.conv_impl=xla",  # compiles fastest on the CPU
        "--config.augment=()",
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "launch.py"), *flags, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_unseen_anisotropic_decathlon_folder_plans_and_trains(tmp_path):
    _decathlon(str(tmp_path / "Task01_Unseen"))
    planned = _launch(tmp_path, "--mode=plan")
    assert planned.returncode == 0, planned.stderr[-2000:]
    assert "plan: target spacing [4.0, 0.8, 0.8] mm" in planned.stdout
    with open(tmp_path / "run" / "plan_arch.json") as f:
        plan = json.load(f)
    # 8 x 48 x 48 voxels at 4 x 0.8 x 0.8 mm: the patch covers the median case (the :tiny
    # config's is 16 x 32 x 32); in-plane pooling only until the in-plane spacing is within 2x of
    # the slices' (0.8 -> 1.6 -> 3.2 mm), with 1x3x3 kernels there; a D axis of 8 voxels then
    # pools once (it keeps >= 4); the depth follows (the config's is 2).
    assert plan["patch_size"] == [8, 48, 48]
    assert plan["pool_strides"][:2] == [[1, 2, 2], [1, 2, 2]]
    assert plan["kernel_sizes"][:2] == [[1, 3, 3], [1, 3, 3]]
    assert plan["depth"] == 4 and plan["num_pool_per_axis"] == [1, 3, 3]
    assert plan["batch_size"] >= 2 and plan["memory_bytes"] <= plan["budget_bytes"]
    # Trains with the recorded plan; the classes are named from dataset.json; the unlabelled
    # imagesTs cases are predicted, never scored.
    trained = _launch(
        tmp_path,
        "--config.plan.auto=True",
        "--config.train.epochs=1",
        "--config.train.steps_per_epoch=2",
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    with open(tmp_path / "run" / "config.json") as f:
        config = json.load(f)
    assert config["data"]["patch_size"] == [8, 48, 48]
    assert config["model"]["kwargs"]["pool_strides"] == plan["pool_strides"]
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    val = [r for r in rows if "val/dice" in r][-1]
    assert {"val/dice/gland", "val/dice/zone"} <= set(val)
    assert "2 test case(s) have no reference label" in trained.stderr
    evals = list((tmp_path / "run" / "eval").iterdir())
    with open(evals[0] / "metrics.json") as f:
        assert json.load(f)["unlabelled_cases"] == 2
    written = sorted(os.listdir(evals[0] / "predictions"))
    assert written == ["case_008.nii.gz", "case_009.nii.gz"]
    # A binary run on the 2-label folder is told, in one line, that the labels are merged.
    binary = _launch(
        tmp_path,
        "--mode=preprocess",
        "--config.data.preprocess.label_mode=binary",
        "--config.model.num_classes=1",
        "--config.data.patch_size=(8, 48, 48)",  # not planned here
    )
    assert binary.returncode == 0, binary.stderr[-2000:]
    assert "declares 2 foreground labels" in binary.stderr
    assert "--config.model.num_classes=3 --config.data.preprocess.label_mode=keep" in binary.stderr
    assert "declares" not in trained.stderr
