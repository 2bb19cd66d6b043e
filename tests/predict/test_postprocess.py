"""Post-processing of predicted label maps against scipy.ndimage computed independently."""

import numpy as np
from scipy import ndimage

from medjax.predict import segment


def _blobs(seed=0, shape=(12, 20, 20)):
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 1.2)
    labels = np.zeros(shape, np.uint8)
    labels[noise > 0.15] = 1
    labels[noise < -0.2] = 2
    return labels


def _reference(labels, spacing, keep_largest, min_voxels, min_ml):
    """Per class: components by ndimage.label, sizes by ndimage.sum_labels (float64 mm^3)."""
    out = labels.copy()
    voxel_mm3 = float(np.prod(spacing))
    for value in (1, 2):
        comp, n = ndimage.label(labels == value)
        if n == 0:
            continue
        index = np.arange(1, n + 1)
        sizes = ndimage.sum_labels(np.ones_like(comp), comp, index)
        keep = np.ones(n, bool)
        if value in keep_largest:
            keep[:] = False
            keep[int(np.argmax(sizes))] = True
        keep &= sizes >= min_voxels
        keep &= sizes * voxel_mm3 / 1000.0 >= min_ml - 1e-12
        out[(comp > 0) & ~keep[np.maximum(comp, 1) - 1]] = 0
    return out


def test_keep_largest_and_minimum_sizes_match_scipy():
    labels = _blobs()
    spacing = (2.0, 0.7, 0.7)
    assert ndimage.label(labels == 1)[1] > 2 and ndimage.label(labels == 2)[1] > 2
    for keep, vox, ml in [((1,), 0, 0.0), ((), 5, 0.0), ((), 0, 0.01), ((2,), 3, 0.005)]:
        got = segment.postprocess(
            labels, spacing, keep_largest=keep, min_size_voxels=vox, min_size_ml=ml
        )
        np.testing.assert_array_equal(got, _reference(labels, spacing, keep, vox, ml))
    np.testing.assert_array_equal(segment.postprocess(labels, spacing), labels)


def test_class_stats_count_voxels_millilitres_and_components():
    labels = np.zeros((4, 10, 10), np.uint8)
    labels[0, 0:2, 0:2] = 1  # 4 voxels
    labels[3, 5:8, 5:8] = 1  # 9 voxels, a second component
    labels[1, 9, 9] = 2
    stats = segment.class_stats(labels, (2.0, 0.5, 0.5), [0, 1, 2])
    assert stats["class1_voxels"] == 13 and stats["class1_components"] == 2
    assert abs(stats["class1_ml"] - 13 * 0.5 / 1000) < 1e-12  # 2 * 0.5 * 0.5 mm^3 a voxel
    assert stats["class2_voxels"] == 1 and stats["class2_components"] == 1
