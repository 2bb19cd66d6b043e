"""launch.py as a user runs it: overrides, and one clear error for each kind of bad input."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(*args, tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "launch.py"), *args, f"--workdir={tmp_path}/run"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _pairs(root, n=4, bad=None):
    for split in ("train", "val"):
        os.makedirs(os.path.join(root, split, "images"), exist_ok=True)
        os.makedirs(os.path.join(root, split, "masks"), exist_ok=True)
        for i in range(n):
            img = np.random.default_rng(i).integers(0, 255, (32, 32), dtype=np.uint8)
            Image.fromarray(img).save(os.path.join(root, split, "images", f"{split}{i}.png"))
            Image.fromarray((img > 200).astype(np.uint8) * 255).save(
                os.path.join(root, split, "masks", f"{split}{i}.png")
            )


def test_unknown_config_key_names_the_key(tmp_path):
    r = _launch("--config=configs/unet.py:tiny", "--config.train.epochz=3", tmp_path=tmp_path)
    assert r.returncode != 0
    assert "epochz" in r.stderr


def test_unknown_model_name_lists_registered_models(tmp_path):
    r = _launch("--config=configs/unet.py:tiny", "--config.model.name=unetz", tmp_path=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "medjax error: Unknown models name 'unetz'" in r.stderr
    assert "unet" in r.stderr.split("Registered models:")[1]


def test_unknown_loss_name(tmp_path):
    r = _launch("--config=configs/unet.py:tiny", "--config.loss.name=dicee", tmp_path=tmp_path)
    assert r.returncode == 2 and "Unknown losses name 'dicee'" in r.stderr


def test_missing_data_root_names_the_path(tmp_path):
    r = _launch(
        "--config=configs/unet.py:tiny", f"--config.data.root={tmp_path}/nope", tmp_path=tmp_path
    )
    assert r.returncode == 2 and f"{tmp_path}/nope" in r.stderr and "no such folder" in r.stderr


def test_image_without_mask_names_the_image(tmp_path):
    root = str(tmp_path / "data")
    _pairs(root)
    os.remove(os.path.join(root, "train", "masks", "train2.png"))
    r = _launch("--config=configs/unet.py:tiny", f"--config.data.root={root}", tmp_path=tmp_path)
    assert r.returncode == 2 and "train2.png" in r.stderr


@pytest.mark.parametrize("problem", ["size", "corrupt"])
def test_bad_pair_is_skipped_named_and_the_rest_trains(tmp_path, problem):
    root = str(tmp_path / "data")
    _pairs(root)
    if problem == "size":
        Image.fromarray(np.zeros((16, 32), np.uint8)).save(
            os.path.join(root, "train", "masks", "train1.png")
        )
    else:
        path = os.path.join(root, "train", "images", "train1.png")
        open(path, "wb").write(open(path, "rb").read()[:100])
    r = _launch(
        "--config=configs/unet.py:tiny",
        f"--config.data.root={root}",
        "--mode=preprocess",
        f"--config.data.store_dir={tmp_path}/store",
        tmp_path=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "skipped 1 bad case" in r.stderr
    report = open(os.path.join(tmp_path, "store", "report.json")).read()
    assert "train1" in report
    assert "train=3" in r.stdout and "val=4" in r.stdout


def test_preprocess_mode_prepares_the_tasks_own_data(tmp_path):
    # task=luna: the cutout store around the candidates, not a segmentation store.
    store_dir = tmp_path / "store"
    r = _launch(
        "--config=configs/luna.py:tiny",
        "--mode=preprocess",
        f"--config.data.store_dir={store_dir}",
        tmp_path=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"cutout store {store_dir}" in r.stdout
    assert (store_dir / "cutouts.npy").is_file() and (store_dir / "candidates.csv").is_file()
    assert not (store_dir / "manifest.json").exists()
