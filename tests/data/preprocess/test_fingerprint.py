"""Tests for medjax.data.preprocess.fingerprint."""

import numpy as np
import pytest

from medjax import errors
from medjax.data import crawlers_volume
from medjax.data.io import nifti
from medjax.data.io import volume as volume_lib
from medjax.data.preprocess import fingerprint


def _case(spacing, shape, seed, fg_value=100.0):
    rng = np.random.default_rng(seed)
    img = np.zeros(shape)
    img[1:-1, 1:-1, 1:-1] = rng.normal(0, 5, tuple(s - 2 for s in shape))
    lab = np.zeros(shape, np.uint8)
    lab[2:4, 2:4, 2:4] = 1
    img[lab > 0] = fg_value + rng.normal(0, 10, lab.sum())
    vol = volume_lib.Volume(img, spacing, (0, 0, 0), np.eye(3))
    return vol, vol.with_array(lab)


def test_fingerprint_stats_match_numpy():
    cases = [_case((5.0, 1.0, 1.0), (6, 8, 8), 0), _case((3.0, 0.8, 0.8), (8, 8, 6), 1)]
    fp = fingerprint.compute_fingerprint(cases, samples_per_case=1000)  # all 8 fg voxels each
    fg = np.concatenate([img.array[lab.array > 0] for img, lab in cases])
    stats = fp["foreground_intensity"][0]
    assert stats["mean"] == pytest.approx(fg.mean())
    assert stats["std"] == pytest.approx(fg.std())
    assert stats["percentile_99_5"] == pytest.approx(np.percentile(fg, 99.5))
    assert fp["median_spacing_mm"] == [4.0, 0.9, 0.9]
    assert fp["shapes"] == [[6, 8, 8], [8, 8, 6]]
    # Body = inner box: (4*6*6)/(6*8*8) and (6*6*4)/(8*8*6); median of the two.
    assert fp["median_relative_size_after_crop"] == pytest.approx(0.375)
    # Sampling fewer voxels than exist is deterministic under a seed.
    a = fingerprint.compute_fingerprint(cases, samples_per_case=3, seed=5)
    b = fingerprint.compute_fingerprint(cases, samples_per_case=3, seed=5)
    assert a == b


def test_suggest_spec_ct_and_mr():
    cases = [_case((1.0, 1.0, 1.0), (6, 8, 8), s) for s in range(3)]
    fp = fingerprint.compute_fingerprint(cases)
    ct = fingerprint.suggest_spec(fp, "CT")
    norm = ct["normalization"]
    assert norm["name"] == "ct" and norm["window"][0] < norm["mean"] < norm["window"][1]
    assert ct["crop_foreground"] is True and ct["target_spacing_mm"] == [1.0, 1.0, 1.0]
    mr = fingerprint.suggest_spec(fp, "MR")
    assert mr["normalization"] == {"name": "zscore", "use_mask": True}  # crop kept < 75%


def test_anisotropic_target_spacing_uses_10th_percentile():
    fp = {
        "spacings": [[5.0, 0.7, 0.7], [6.0, 0.8, 0.8], [4.0, 0.75, 0.75], [7.0, 0.7, 0.7]],
        "median_shape": [40, 512, 512],
    }
    target = fingerprint.suggest_target_spacing(fp)
    assert target[0] == pytest.approx(np.percentile([5, 6, 4, 7], 10))
    assert target[1:] == pytest.approx([0.725, 0.725])
    fp["median_shape"] = [200, 512, 512]  # enough slices: plain median
    assert fingerprint.suggest_target_spacing(fp)[0] == pytest.approx(5.5)


def test_fingerprint_from_crawled_nifti_cases(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for i in range(2):
        img, lab = _case((2.0, 1.0, 1.0), (6, 8, 8), i)
        image = img.with_array(img.array.astype(np.float32))
        nifti.write_nifti(image, tmp_path / "imagesTr" / f"c{i}_0000.nii.gz")
        nifti.write_nifti(lab, tmp_path / "labelsTr" / f"c{i}.nii.gz")
    cases = crawlers_volume.get_nifti_volume()(str(tmp_path))
    fp = fingerprint.compute_fingerprint(cases)
    assert fp["num_cases"] == 2
    np.testing.assert_allclose(fp["median_spacing_mm"], [2.0, 1.0, 1.0], rtol=1e-6)
    assert fp["foreground_intensity"][0]["mean"] == pytest.approx(100, abs=10)


def test_no_cases():
    with pytest.raises(errors.DataError, match="no cases"):
        fingerprint.compute_fingerprint([])
