"""The preprocessing store: incremental, atomic, bad cases skipped and reported by name."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from medjax import errors, registry
from medjax.data import store

SPEC = {
    "grayscale": True,
    "target_size": (16, 16),
    "normalization": {"name": "zscore"},
    "label_mode": "binary",
}


def _pair(root, name, size=(20, 20), mask_size=None, rng=None):
    rng = rng or np.random.default_rng(len(name))
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    image = rng.integers(0, 255, size, dtype=np.uint8)
    mask = np.zeros(mask_size or size, np.uint8)
    mask[5:10, 5:10] = 255
    Image.fromarray(image).save(os.path.join(root, "images", f"{name}.png"))
    Image.fromarray(mask).save(os.path.join(root, "masks", f"{name}.png"))


def _crawl(root):
    return registry.lookup("crawlers", "segmentation_file")(root)


def test_store_writes_cases_and_reuses_them(tmp_path):
    root, out = str(tmp_path / "data"), str(tmp_path / "store")
    for i in range(3):
        _pair(root, f"c{i}")
    manifest = store.build_store(_crawl(root), out, SPEC)
    assert [c["id"] for c in manifest["cases"]] == ["c0", "c1", "c2"]
    image = np.load(os.path.join(out, "cases", "c0", "image.npy"), mmap_mode="r")
    label = np.load(os.path.join(out, "cases", "c0", "label.npy"))
    assert image.shape == (16, 16, 1) and image.dtype == np.float32
    # z-scored before the resize, so moments are close to (0, 1) but not exact.
    assert abs(float(np.mean(image))) < 0.05 and abs(float(np.std(image)) - 1) < 0.15
    assert set(np.unique(label)) == {0, 1}
    mtime = os.path.getmtime(os.path.join(out, "cases", "c1", "image.npy"))
    # Re-run: unchanged cases are reused, a changed one is redone, a new one added.
    _pair(root, "c2", rng=np.random.default_rng(99))
    os.utime(os.path.join(root, "images", "c2.png"), ns=(1, 1))
    _pair(root, "c3")
    manifest = store.build_store(_crawl(root), out, SPEC)
    assert len(manifest["cases"]) == 4
    assert os.path.getmtime(os.path.join(out, "cases", "c1", "image.npy")) == mtime
    assert not [d for d in os.listdir(os.path.join(out, "cases")) if d.startswith(".tmp")]


def test_bad_cases_are_skipped_and_reported(tmp_path):
    root, out = str(tmp_path / "data"), str(tmp_path / "store")
    _pair(root, "good")
    _pair(root, "shape", mask_size=(10, 20))  # mask disagrees with its image
    _pair(root, "corrupt")
    path = os.path.join(root, "images", "corrupt.png")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])  # truncated PNG
    manifest = store.build_store(_crawl(root), out, SPEC)
    assert [c["id"] for c in manifest["cases"]] == ["good"]
    report = json.load(open(os.path.join(out, "report.json")))
    reasons = {p["id"]: p["reason"] for p in report["skipped"]}
    assert set(reasons) == {"shape", "corrupt"}
    assert "corrupt.png" in reasons["corrupt"]
    assert "shape" in reasons["shape"].lower()
    with pytest.raises(errors.DataError, match="corrupt.png"):
        store.build_store(_crawl(root), str(tmp_path / "strict"), SPEC, strict=True)


def test_no_usable_case_is_an_error(tmp_path):
    root = str(tmp_path / "data")
    _pair(root, "shape", mask_size=(10, 20))
    with pytest.raises(errors.DataError, match="No usable case"):
        store.build_store(_crawl(root), str(tmp_path / "store"), SPEC)


def test_parallel_workers_give_the_same_store(tmp_path):
    root = str(tmp_path / "data")
    for i in range(4):
        _pair(root, f"c{i}")
    a = store.build_store(_crawl(root), str(tmp_path / "a"), SPEC, workers=0)
    b = store.build_store(_crawl(root), str(tmp_path / "b"), SPEC, workers=2)
    assert [c["id"] for c in a["cases"]] == [c["id"] for c in b["cases"]]
    for c in a["cases"]:
        np.testing.assert_array_equal(
            np.load(os.path.join(tmp_path, "a", "cases", c["id"], "image.npy")),
            np.load(os.path.join(tmp_path, "b", "cases", c["id"], "image.npy")),
        )
