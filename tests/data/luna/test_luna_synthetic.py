"""Tests of the synthetic LUNA16-format dataset: layout, geometry, HU content, determinism."""

import csv
import hashlib

import numpy as np
import pytest
import SimpleITK as sitk

from medjax import errors
from medjax.data.luna import csvs, synthetic


def _digest(root):
    h = hashlib.sha1()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_layout_and_headers(luna_root, luna_args):
    small = luna_args
    scans = csvs.find_scans(luna_root)
    assert len(scans) == small["num_scans"]
    assert {s for s, _ in scans.values()} == set(range(small["num_subsets"]))
    for _, mhd in scans.values():
        assert mhd.with_suffix(".raw").exists()
    with open(luna_root / "annotations.csv") as f:
        assert f.readline().strip() == "seriesuid,coordX,coordY,coordZ,diameter_mm"
    with open(luna_root / "candidates.csv") as f:
        assert f.readline().strip() == "seriesuid,coordX,coordY,coordZ,class"
    with open(luna_root / "annotations_with_malignancy.csv") as f:
        assert f.readline().strip().endswith(",malignancy")
    assert (luna_root / "annotations_excluded.csv").exists()


def test_geometry_is_non_trivial(luna_root, luna_args):
    small = luna_args
    for _, mhd in csvs.find_scans(luna_root).values():
        image = sitk.ReadImage(str(mhd))
        assert image.GetSize() == tuple(small["shape"][::-1])
        assert not np.allclose(np.reshape(image.GetDirection(), (3, 3)), np.eye(3))
        sx, sy, sz = image.GetSpacing()
        assert sx == pytest.approx(sy) and sz > 1.2 * sx  # Anisotropic: thick slices.
        assert np.all(np.abs(image.GetOrigin()) > 50)


def test_hounsfield_content_at_annotations(luna_root):
    scans = csvs.find_scans(luna_root)
    images = {uid: sitk.ReadImage(str(p)) for uid, (_, p) in scans.items()}
    arrays = {uid: sitk.GetArrayFromImage(im) for uid, im in images.items()}
    nodule_hu = []
    for a in csvs.read_annotations(luna_root / "annotations.csv"):
        im = images[a.seriesuid]
        i, j, k = im.TransformPhysicalPointToIndex(a.xyz)  # Independent of medjax geometry.
        nodule_hu.append(arrays[a.seriesuid][k, j, i])
        assert 3.0 <= a.diameter_mm <= 30.0
    # Nodules are solid (0..100 HU + noise, or calcified); lungs and air are far darker.
    assert np.median(nodule_hu) > -100
    for arr in arrays.values():
        assert abs(np.median(arr[:, :2, :2]) + 1000) < 30  # Air in the corners.
        assert np.mean(arr < -700) > 0.1  # Lungs + air.


def test_candidates_labels_agree_with_annotations(luna_root):
    anns = csvs.read_annotations(luna_root / "annotations.csv")
    cands = csvs.read_candidates(luna_root / "candidates.csv")
    assert sum(c.label for c in cands) >= len(anns)  # At least one candidate per nodule.
    for c in cands:
        d = [
            np.linalg.norm(np.subtract(c.xyz, a.xyz)) - a.diameter_mm / 2
            for a in anns
            if a.seriesuid == c.seriesuid
        ]
        if c.label == 1:
            assert min(d) < 0  # Inside a nodule.
        else:
            assert not d or min(d) > 0  # Negatives avoid nodules.


def test_malignancy_is_learnable_from_size(tmp_path):
    root = synthetic.make_luna_dataset(tmp_path / "m", num_scans=6, shape=(24, 64, 64), seed=1)
    table = csvs.read_annotations(root / "annotations_with_malignancy.csv")
    sizes = {m: [a.diameter_mm for a in table if a.malignancy is m] for m in (True, False)}
    assert sizes[True] and sizes[False]
    assert np.mean(sizes[True]) > np.mean(sizes[False]) + 3


def test_deterministic_and_reused(tmp_path, luna_root, luna_args):
    small = luna_args
    again = synthetic.make_luna_dataset(tmp_path / "again", **small)
    assert _digest(again) == _digest(luna_root)
    other = synthetic.make_luna_dataset(tmp_path / "other", **{**small, "seed": 4})
    assert _rows(other / "candidates.csv") != _rows(luna_root / "candidates.csv")
    # Same arguments: the existing folder is returned untouched.
    mtime = (again / "candidates.csv").stat().st_mtime_ns
    assert synthetic.make_luna_dataset(again, **small) == again
    assert (again / "candidates.csv").stat().st_mtime_ns == mtime
    with pytest.raises(errors.DataError, match="not a synthetic LUNA dataset"):
        synthetic.make_luna_dataset(again, **{**small, "seed": 5})
    assert not list(tmp_path.glob(".*tmp*"))
