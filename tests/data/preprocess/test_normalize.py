"""Tests for medjax.data.preprocess.normalize against numpy float64 references."""

import numpy as np
import pytest

from medjax import errors
from medjax.data.preprocess import normalize


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return np.stack([rng.normal(100, 20, (6, 7, 5)), rng.uniform(-5, 5, (6, 7, 5))], -1)


def test_zscore_per_channel(image):
    out, stats = normalize.normalize(image, {"name": "zscore"})
    assert out.dtype == np.float32 and out.shape == image.shape
    for c in range(2):
        ref = (image[..., c] - image[..., c].mean()) / image[..., c].std()
        np.testing.assert_allclose(out[..., c], ref, atol=1e-5)
    np.testing.assert_allclose(stats["mean"], image.reshape(-1, 2).mean(0))


def test_zscore_inside_mask(image):
    mask = np.zeros(image.shape[:3], bool)
    mask[1:4, 2:6, 1:4] = True
    out, _ = normalize.normalize(image, {"name": "zscore", "use_mask": True}, mask)
    inside = image[mask][:, 0]
    np.testing.assert_allclose(out[mask][:, 0], (inside - inside.mean()) / inside.std(), atol=1e-5)
    assert np.all(out[~mask] == 0)


def test_ct_window_scale_and_fingerprint_stats():
    hu = np.array([-2000.0, -1000.0, -300.0, 400.0, 3000.0]).reshape(5, 1)
    out, _ = normalize.normalize(hu, {"name": "ct", "window": [-1000, 400]})
    np.testing.assert_allclose(out[:, 0], [-1.0, -1.0, 0.0, 1.0, 1.0], atol=1e-6)
    out, stats = normalize.normalize(
        hu, {"name": "ct", "window": [-1000, 400], "mean": 50, "std": 10}
    )
    np.testing.assert_allclose(out[:, 0], (np.clip(hu[:, 0], -1000, 400) - 50) / 10)
    assert stats["window"] == [-1000.0, 400.0]


def test_percentile_and_minmax(image):
    out, stats = normalize.normalize(image, {"name": "percentile", "lower": 5, "upper": 95})
    lo, hi = np.percentile(image[..., 1], [5, 95])
    np.testing.assert_allclose(
        out[..., 1], (np.clip(image[..., 1], lo, hi) - lo) / (hi - lo), atol=1e-6
    )
    assert stats["clip_lo"][1] == pytest.approx(lo)
    out, _ = normalize.normalize(image, {"name": "minmax"})
    assert out.min() == pytest.approx(0) and out.max() == pytest.approx(1)
    u8 = np.array([[0.0], [51.0], [255.0]])
    out, _ = normalize.normalize(u8, {"name": "minmax", "min": 0, "max": 255})
    np.testing.assert_allclose(out[:, 0], [0, 0.2, 1])
    out, _ = normalize.normalize(u8, {"name": "none"})
    np.testing.assert_array_equal(out, u8)


def test_bad_params():
    x = np.zeros((2, 1))
    with pytest.raises(errors.ConfigError, match="zscore"):
        normalize.normalize(x, {"name": "zcore"})
    with pytest.raises(errors.ConfigError, match="window"):
        normalize.normalize(x, {"name": "ct"})
    with pytest.raises(errors.ConfigError, match="unknown keys"):
        normalize.normalize(x, {"name": "minmax", "lo": 0})
    with pytest.raises(errors.ConfigError, match="both"):
        normalize.normalize(x, {"name": "ct", "window": [0, 1], "mean": 3})
