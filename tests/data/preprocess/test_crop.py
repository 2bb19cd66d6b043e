"""Tests for medjax.data.preprocess.crop."""

import numpy as np

from medjax.data.preprocess import crop


def test_nonzero_mask_fills_holes_and_uses_any_channel():
    img = np.zeros((7, 7, 2))
    img[1:6, 1:6, 0] = 1
    img[3, 3, 0] = 0  # a hole inside the body
    img[0, 6, 1] = 5  # only channel 1 is nonzero here
    mask = crop.nonzero_mask(img, 2)
    assert mask[3, 3] and mask[0, 6] and not mask[0, 0]
    assert mask.sum() == 25 + 1


def test_bbox_crop_uncrop_roundtrip():
    mask = np.zeros((5, 6, 7), bool)
    mask[1, 2:4, 6] = True
    mask[3, 3, 2] = True
    box = crop.bbox(mask)
    assert box == [(1, 4), (2, 4), (2, 7)]
    assert crop.bbox(mask, margin=1) == [(0, 5), (1, 5), (1, 7)]
    assert crop.bbox(np.zeros((3, 4), bool)) == [(0, 3), (0, 4)]
    x = np.arange(5 * 6 * 7 * 2).reshape(5, 6, 7, 2)
    c = crop.crop(x, box)
    assert c.shape == (3, 2, 5, 2)
    full = crop.uncrop(c, box, (5, 6, 7), fill=np.array([1, 0]))
    inside = tuple(slice(lo, hi) for lo, hi in box)
    np.testing.assert_array_equal(full[inside], x[inside])
    outside = np.ones((5, 6, 7), bool)
    outside[inside] = False
    np.testing.assert_array_equal(full[outside], np.tile([1, 0], (outside.sum(), 1)))


def test_cropped_origin():
    direction = np.array([[0.0, 1.0], [-1.0, 0.0]])
    origin = crop.cropped_origin((10.0, 20.0), (2.0, 0.5), direction, [(3, 5), (4, 8)])
    # index (3, 4) -> 10 + 0*6 + 1*2 = 12 ; 20 - 6 + 0 = 14
    np.testing.assert_allclose(origin, (12.0, 14.0))
