"""Tests for medjax.data.synthetic3d (the lesion3d Decathlon dataset) and configs/unet3d.py.

Every test reads real NIfTI files written by the generator into tmp folders.
"""

import filecmp
import json
import os

import numpy as np
import pytest

from medjax import registry
from medjax.augment import compose as compose_lib
from medjax.data import io as io_lib
from medjax.data import synthetic3d
from medjax.data.preprocess import pipeline as pp
from medjax.testing import configs as test_configs

SMALL = {"num_train": 4, "num_val": 3, "num_test": 2, "shape": (8, 24, 24), "seed": 3}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lesion3d_small")
    synthetic3d.make_lesion3d(str(root), **SMALL)
    return str(root)


def _info(root):
    with open(os.path.join(root, "dataset.json")) as f:
        return json.load(f)


def _files(root):
    return sorted(
        os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(root) for n in names
    )


def test_registered_under_synthetic_namespace():
    assert registry.get("synthetic.lesion3d") is synthetic3d.make_lesion3d


def test_layout_and_dataset_json(small_root):
    info = _info(small_root)
    assert len(info["training"]) == SMALL["num_train"]
    assert len(info["validation"]) == SMALL["num_val"]
    assert len(info["test"]) == SMALL["num_test"]
    train = {e["image"] for e in info["training"]}
    val = {e["image"] for e in info["validation"]}
    assert not train & val  # disjoint lists (MONAI datalist convention)
    for entry in info["training"] + info["validation"]:
        assert entry["image"].startswith("./imagesTr/") and entry["label"].startswith("./labelsTr/")
        assert os.path.basename(entry["image"]) == os.path.basename(entry["label"])
    for image in info["test"]:
        assert image.startswith("./imagesTs/")
        assert os.path.isfile(os.path.join(small_root, image.replace("imagesTs", "labelsTs")))
    n = SMALL["num_train"] + SMALL["num_val"] + SMALL["num_test"]
    # Every written image is listed exactly once, and nothing else lies around (no temp files).
    assert len(_files(small_root)) == 2 * n + 1
    assert info["labels"] == {"0": "background", "1": "lesion"}


def test_deterministic_per_seed(small_root, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    again.mkdir()
    other.mkdir()
    synthetic3d.make_lesion3d(str(again), **SMALL)
    synthetic3d.make_lesion3d(str(other), **{**SMALL, "seed": SMALL["seed"] + 1})
    files = [f for f in _files(small_root) if f.endswith(".nii.gz")]
    assert files == [f for f in _files(str(again)) if f.endswith(".nii.gz")]
    for rel in files:
        a = io_lib.read_volume(os.path.join(small_root, rel))
        b = io_lib.read_volume(os.path.join(again, rel))
        np.testing.assert_array_equal(a.array, b.array)
        np.testing.assert_array_equal(a.affine, b.affine)
    assert filecmp.cmp(os.path.join(small_root, "dataset.json"), again / "dataset.json", False)
    first = files[0]
    a = io_lib.read_volume(os.path.join(small_root, first)).array
    c = io_lib.read_volume(os.path.join(other, first)).array
    assert not np.array_equal(a, c)


def test_read_back_with_written_geometry(small_root):
    info = _info(small_root)
    entries = info["training"] + info["validation"]
    flipped = 0
    for split_index, items in enumerate([info["training"], info["validation"]]):
        empty = synthetic3d.lesion_free_cases(
            SMALL["seed"], split_index, len(items), empty_fraction=0.25
        )
        for i, entry in enumerate(items):
            rng = np.random.default_rng([SMALL["seed"], split_index, i])
            want = synthetic3d.make_case(
                rng, shape=SMALL["shape"], spacing_mm=(2.0, 0.8, 0.8), lesion_free=i in empty
            )
            image = io_lib.read_volume(os.path.join(small_root, entry["image"]))
            label = io_lib.read_volume(os.path.join(small_root, entry["label"]))
            assert image.array.shape == SMALL["shape"] and image.array.dtype == np.int16
            np.testing.assert_array_equal(image.array, want.image.array)
            np.testing.assert_array_equal(label.array, want.label.array)
            for vol in (image, label):
                np.testing.assert_allclose(vol.spacing, (2.0, 0.8, 0.8), atol=1e-5)
                # NIfTI stores the sform in float32.
                np.testing.assert_allclose(vol.affine, want.image.affine, atol=1e-4)
            # Oblique (tilted >= 5 degrees): not a signed permutation, let alone the identity.
            direction = image.direction
            assert not np.allclose(np.abs(direction), np.round(np.abs(direction)), atol=1e-2)
            assert not np.allclose(image.affine[:3, :3], np.diag(np.diag(image.affine[:3, :3])))
            flipped += bool(want.flip_axes)
    assert 0 < flipped < len(entries)  # both stored voxel orders occur


def test_flips_are_consistent_with_the_affine(small_root):
    # Reorienting every case to LPS through its affine must give back the generation-frame
    # arrays, whatever voxel order the case was stored in.
    info = _info(small_root)
    for i, entry in enumerate(info["training"]):
        rng = np.random.default_rng([SMALL["seed"], 0, i])
        empty = synthetic3d.lesion_free_cases(SMALL["seed"], 0, SMALL["num_train"], 0.25)
        want = synthetic3d.make_case(rng, shape=SMALL["shape"], lesion_free=i in empty)
        image, label = pp.load_case(
            {
                "image": os.path.join(small_root, entry["image"]),
                "label": os.path.join(small_root, entry["label"]),
            }
        )
        arr, lab, props = pp.preprocess_case(
            image, label, {"reorient": "LPS", "normalization": {"name": "none"}}
        )
        np.testing.assert_array_equal(lab, want.canonical_mask)
        np.testing.assert_allclose(
            arr[..., 0], np.round(want.canonical_image * synthetic3d.INTENSITY_SCALE), atol=0.5
        )
        # LPS canonical: D, H, W point (within the slab's tilt) to superior, posterior, left.
        cosines = np.asarray(props["direction"])[[2, 1, 0], [0, 1, 2]]
        assert np.all(cosines > 0.9), cosines


def test_labels_binary_with_empty_and_lesion_cases(small_root):
    info = _info(small_root)
    groups = {
        "train": [e["label"] for e in info["training"]],
        "val": [e["label"] for e in info["validation"]],
        "test": [p.replace("imagesTs", "labelsTs") for p in info["test"]],
    }
    for split, labels in groups.items():
        arrays = [io_lib.read_volume(os.path.join(small_root, p)).array for p in labels]
        for a in arrays:
            assert set(np.unique(a).tolist()) <= {0, 1}
        n_empty = sum(int(a.max() == 0) for a in arrays)
        assert n_empty == round(0.25 * len(labels)), split
        assert n_empty < len(labels), split


def _best_threshold_dice(images, labels):
    """max over t of Dice({x >= t}, y), pooled over cases; exact (every distinct value)."""
    x = np.concatenate([np.asarray(i, np.float64).ravel() for i in images])
    y = np.concatenate([np.asarray(lab).ravel() > 0 for lab in labels])
    order = np.argsort(-x, kind="stable")
    xs, tp = x[order], np.cumsum(y[order])
    # Only cut between distinct values: a threshold keeps all voxels equal to it.
    last = np.r_[xs[1:] != xs[:-1], True]
    k = np.arange(1, len(x) + 1)
    return float(np.max((2 * tp / (k + y.sum()))[last]))


def test_best_global_threshold_dice_is_low(tmp_path):
    # The default volume size and spacing, a few cases: the anatomy's bright structures must
    # defeat any single intensity threshold, pooled and on each lesion case alone.
    synthetic3d.make_lesion3d(str(tmp_path), num_train=6, num_val=0, num_test=0, seed=0)
    images, labels = [], []
    for entry in _info(str(tmp_path))["training"]:
        images.append(io_lib.read_volume(tmp_path / entry["image"]).array)
        labels.append(io_lib.read_volume(tmp_path / entry["label"]).array)
    pooled = _best_threshold_dice(images, labels)
    assert 0.0 < pooled <= 0.5
    zscored = [(a - a.mean()) / a.std() for a in (np.asarray(i, np.float64) for i in images)]
    assert _best_threshold_dice(zscored, labels) <= 0.5
    for image, label in zip(images, labels, strict=True):
        if label.any():
            assert _best_threshold_dice([image], [label]) <= 0.5
    # Sanity check of the reference: a threshold does segment a bright-lesion-only image.
    assert _best_threshold_dice([labels[0] * 1.0 + 0.1], [labels[0]]) == 1.0


def test_crawler_finds_train_and_test(small_root):
    cases = registry.lookup("crawlers", "nifti_volume")(small_root)
    info = _info(small_root)
    by_split = {}
    for c in cases:
        by_split.setdefault(c["split"], []).append(c)
    train_ids = [io_lib.strip_extension(e["image"]) for e in info["training"]]
    assert [c["id"] for c in by_split["train"]] == train_ids
    assert all(os.path.isfile(c["label"]) for c in by_split["train"])
    assert [c["id"] for c in by_split["test"]] == [io_lib.strip_extension(p) for p in info["test"]]
    assert by_split["train"][0]["label_names"] == {0: "background", 1: "lesion"}
    assert by_split["train"][0]["channel_names"] == {0: "T2"}


def test_crawler_finds_val_split(small_root):
    cases = registry.lookup("crawlers", "nifti_volume")(small_root)
    val = sorted(c["id"] for c in cases if c["split"] == "val")
    want = sorted(io_lib.strip_extension(e["image"]) for e in _info(small_root)["validation"])
    assert val == want


@pytest.mark.parametrize("variant", ["default", "tiny", "full"])
def test_config_variants_are_consistent(variant):
    config = test_configs.load_config("unet3d", variant)
    assert config.data.synthetic == "lesion3d" and config.data.crawler == "nifti_volume"
    depth = config.model.kwargs.depth
    assert all(s % 2 ** (depth - 1) == 0 for s in config.data.patch_size)
    # Volumes are at least one patch (larger ones are validated with sliding windows).
    if config.data.preprocess.target_size is not None:
        assert all(
            t >= p
            for t, p in zip(config.data.preprocess.target_size, config.data.patch_size, strict=True)
        )
    assert config.model.kwargs.norm == "instance"
    compose_lib.compose(list(config.augment))  # every op name and argument resolves
    pp.resolve_spec(config.data.preprocess.to_dict())
    registry.lookup("crawlers", config.data.crawler)
    assert config.train.batch_size % 8 == 0 or variant != "tiny"  # tests run on 8 fake devices


def test_tiny_config_preprocesses_to_the_patch_size(tmp_path):
    config = test_configs.load_config("unet3d", "tiny")
    kwargs = {**config.data.synthetic_kwargs.to_dict(), "num_train": 2, "num_val": 0}
    kwargs["num_test"] = 0
    synthetic3d.make_lesion3d(str(tmp_path), **kwargs)
    spec = config.data.preprocess.to_dict()
    for case in registry.lookup("crawlers", config.data.crawler)(str(tmp_path)):
        image, label = pp.load_case(case)
        arr, lab, props = pp.preprocess_case(image, label, spec)
        assert arr.shape == (*config.data.patch_size, 1)
        assert lab.shape == tuple(config.data.patch_size)
        np.testing.assert_allclose(props["spacing_mm"], config.data.preprocess.target_spacing_mm)
        assert abs(float(arr.mean())) < 0.1  # z-scored (then resampled)


def test_cord_lesion_labels_add_the_cord_to_the_same_volumes(tmp_path):
    # One case generated both ways from the same seed: the image is identical, the lesion
    # (label 2) is exactly the binary variant's mask, and it lies inside the labelled cord.
    binary = synthetic3d.make_case(np.random.default_rng([3, 0, 1]), shape=(8, 24, 24))
    multi = synthetic3d.make_case(
        np.random.default_rng([3, 0, 1]), shape=(8, 24, 24), cord_label=True
    )
    np.testing.assert_array_equal(multi.image.array, binary.image.array)
    labels = np.asarray(multi.label.array)
    assert set(np.unique(labels).tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(labels == 2, np.asarray(binary.label.array) == 1)
    assert (labels == 1).sum() > 0 and (labels == 2).sum() > 0
    root = tmp_path / "mc"
    root.mkdir()
    synthetic3d.make_lesion3d(
        str(root), num_train=1, num_val=0, num_test=0, shape=(8, 24, 24), labels="cord_lesion"
    )
    assert _info(str(root))["labels"] == {"0": "background", "1": "cord", "2": "lesion"}
    with pytest.raises(ValueError, match="labels='tumour'"):
        synthetic3d.make_lesion3d(str(root), labels="tumour")
