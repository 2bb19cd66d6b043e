"""Tests for medjax.data.preprocess.resample against direct scipy.ndimage.zoom references."""

import numpy as np
import pytest
from scipy import ndimage

from medjax import errors
from medjax.data.preprocess import resample


def _zoom_to(array, shape, order):
    factors = [n / o for n, o in zip(shape, array.shape, strict=True)]
    return ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("order", [0, 1, 3])
def test_resample_image_matches_zoom(ndim, order):
    rng = np.random.default_rng(ndim)
    shape = (9, 11, 7)[:ndim]
    spacing, new = (2.0, 0.8, 1.2)[:ndim], (1.0, 1.1, 0.5)[:ndim]
    x = rng.normal(size=shape + (2,)).astype(np.float32)
    out = resample.resample_image(x, spacing, new, order)
    expect_shape = tuple(int(round(s * a / b)) for s, a, b in zip(shape, spacing, new, strict=True))
    assert out.shape == expect_shape + (2,) and out.dtype == np.float32
    for c in range(2):
        np.testing.assert_allclose(out[..., c], _zoom_to(x[..., c], expect_shape, order), atol=1e-6)
    # No channel axis: same result as channel 0.
    np.testing.assert_allclose(resample.resample_image(x[..., 0], spacing, new, order), out[..., 0])


def test_downsample_by_two_linear_is_block_mean():
    # Hand-computed: with grid_mode, output centre o sits at input 2o + 0.5 -> mean of 2 voxels.
    x = np.arange(16, dtype=np.float64).reshape(4, 4) ** 2
    out = resample.resample_image(x, (1, 1), (2, 2), order=1)
    ref = x.reshape(2, 2, 2, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_resample_label_modes_match_zoom_references():
    rng = np.random.default_rng(0)
    label = ndimage.median_filter(rng.integers(0, 4, (12, 10, 8)), size=3).astype(np.uint8)
    label[label == 2] = 7  # non-contiguous label values
    shape = (7, 15, 5)
    near = resample.resample_label(label, None, None, "nearest", shape=shape)
    np.testing.assert_array_equal(near, _zoom_to(label, shape, 0))
    lin = resample.resample_label(label, None, None, "linear_per_label", shape=shape)
    values = np.unique(label)
    scores = np.stack([_zoom_to((label == v).astype(np.float32), shape, 1) for v in values])
    np.testing.assert_array_equal(lin, values[np.argmax(scores, axis=0)])
    assert lin.dtype == np.uint8 and set(np.unique(lin)) <= set(values.tolist())


def test_linear_per_label_never_blends():
    # Labels 0 and 10 side by side: blending would create 5; per-label linear cannot.
    label = np.zeros((6, 6), np.int32)
    label[:, 3:] = 10
    out = resample.resample_label(label, (1.0, 1.0), (1.0, 0.4), "linear_per_label")
    assert set(np.unique(out)) == {0, 10}


def test_geometry_and_errors():
    spacing, origin = resample.resampled_geometry(
        (4, 6), (1.0, 2.0), (10.0, 0.0), np.eye(2), (8, 3)
    )
    np.testing.assert_allclose(spacing, (0.5, 4.0))
    # Outer edge kept: first centre at edge + half new spacing.
    np.testing.assert_allclose(origin, (10.0 - 0.5 + 0.25, 0.0 - 1.0 + 2.0))
    assert resample.shape_for_spacing((5, 5), (1.0, 1.0), (100.0, 0.5)) == (1, 10)
    with pytest.raises(errors.ConfigError, match="cubic"):
        resample.resample_label(np.zeros((2, 2), int), (1, 1), (1, 1), "cubic")
    with pytest.raises(errors.DataError):
        resample.resample_image(np.zeros((2, 2)), None, None)
