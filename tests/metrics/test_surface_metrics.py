"""HD95/ASSD against MONAI's own published unit-test values, and the split-level empty rules.

The sphere cases and their expected numbers are those of MONAI's
``tests/metrics/test_hausdorff_distance.py`` and ``tests/metrics/test_surface_distance.py``
(``HausdorffDistanceMetric`` / ``SurfaceDistanceMetric``, euclidean, symmetric). MONAI is not
installed: the published numbers are the reference. The float64 brute force (all pairs of
surface voxels, 2D and 3D, anisotropic) is in ``test_segmentation_metrics.py``.
"""

import math

import numpy as np
import pytest

from medjax import errors
from medjax.metrics import segmentation, surface

MONAI_SPACING = (0.85, 1.2, 0.9)


def _sphere(radius, centre, spacing=(1.0, 1.0, 1.0), shape=(99, 99, 99)):
    """MONAI's ``create_spherical_seg_3d``: voxel index * spacing within ``radius`` of centre."""
    grid = np.ogrid[: shape[0], : shape[1], : shape[2]]
    d2 = sum((g.astype(float) * s - c) ** 2 for g, s, c in zip(grid, spacing, centre, strict=True))
    return d2 <= radius * radius


# (pred, ref, spacing, percentile, MONAI's symmetric euclidean Hausdorff distance).
MONAI_HAUSDORFF = [
    ((20, (20, 20, 20)), (20, (19, 19, 19)), None, None, 1.7320508075688772),
    ((33, (19, 33, 22)), (33, (20, 33, 22)), None, None, 1.0),
    ((20, (20, 33, 22)), (40, (20, 33, 22)), None, None, 20.223748416156685),
    ((20, (20, 33, 22)), (40, (20, 33, 22)), None, 95, 20.09975124224178),
    ((20, (20, 20, 20)), (20, (19, 19, 19)), MONAI_SPACING, None, 2.2671568),
    ((15, (20, 33, 22)), (30, (20, 33, 22)), MONAI_SPACING, None, 15.62594),
]
# (pred, ref, spacing, MONAI's symmetric euclidean average surface distance).
MONAI_ASSD = [
    ((33, (19, 33, 22)), (33, (20, 33, 22)), None, 0.350217),
    ((20, (20, 33, 22)), (40, (20, 33, 22)), None, 15.117741),
    ((33, (42, 45, 52)), (33, (43, 45, 52)), MONAI_SPACING, 0.4951),
]


def _masks(pred, ref, spacing):
    sp = spacing or (1.0, 1.0, 1.0)
    return _sphere(*pred, spacing=sp), _sphere(*ref, spacing=sp), sp


@pytest.mark.parametrize("pred,ref,spacing,percentile,expected", MONAI_HAUSDORFF)
def test_hausdorff_equals_monai_published_values(pred, ref, spacing, percentile, expected):
    a, b, sp = _masks(pred, ref, spacing)
    got = surface.distance_metrics(a, b, sp, percentile=percentile or 100.0)  # face: default
    assert got["hd95"] == pytest.approx(expected, rel=1e-6)  # MONAI's own rtol


@pytest.mark.parametrize("pred,ref,spacing,expected", MONAI_ASSD)
def test_assd_equals_monai_published_values(pred, ref, spacing, expected):
    a, b, sp = _masks(pred, ref, spacing)
    got = segmentation.case_metrics(a, b, num_classes=2, spacing=sp)  # default connectivity
    assert got["assd"][0] == pytest.approx(expected, rel=1e-5)  # MONAI's own rtol
    # The 26-neighbour surface is the other convention: it reads 33 % lower on this case.
    if expected < 1:
        full = surface.distance_metrics(a, b, sp, connectivity="full")["assd"]
        assert full < 0.8 * expected


def test_face_surface_of_a_2d_rounded_square_by_hand():
    # A 5x5 square with its corners removed: face surface = the 12 pixels with a background
    # face neighbour; full surface also takes the 4 pixels diagonal to a removed corner.
    mask = np.zeros((7, 7), bool)
    mask[1:6, 1:6] = True
    for r, c in ((1, 1), (1, 5), (5, 1), (5, 5)):
        mask[r, c] = False
    face = surface.surface_voxels(mask)
    full = surface.surface_voxels(mask, "full")
    assert face.sum() == 12 and not face[2, 2] and face[1, 2]
    assert full.sum() == 16 and full[2, 2]
    with pytest.raises(errors.ConfigError, match="eval.surface_connectivity"):
        surface.surface_voxels(mask, "edge")


def _case(shape, box):
    m = np.zeros(shape, np.uint8)
    m[box] = 1
    return m


def test_split_rules_never_report_zero_for_missed_cases():
    shape, spacing = (10, 12), (2.0, 0.5)
    a = _case(shape, np.s_[2:6, 3:9])
    b = _case(shape, np.s_[3:7, 3:10])
    empty = np.zeros(shape, np.uint8)
    pairs = [(a, b), (b, a), (empty, a), (a, empty), (empty, empty)]
    rows = surface.surface_metrics_for_batch(
        np.stack([p for p, _ in pairs]),
        np.stack([r for _, r in pairs]),
        [spacing] * 5,
        num_classes=1,
    )
    assert [r["surface"] for r in rows] == ["ok", "ok", "one_empty", "one_empty", "both_empty"]
    assert all(math.isnan(r["hd95"]) and math.isnan(r["assd"]) for r in rows[2:])
    want = surface.distance_metrics(a, b, spacing)
    assert rows[0]["hd95"] == rows[1]["hd95"] == want["hd95"] > 0
    summary = surface.summarize(rows)
    assert summary["hd95_mm"] == pytest.approx(want["hd95"])
    assert summary["assd_mm"] == pytest.approx(want["assd"])
    assert (summary["hd95_empty_cases"], summary["hd95_both_empty_cases"]) == (2, 1)

    # A model that predicts nothing: NaN and the count, never 0.0.
    refs = [a, b, empty]
    nothing = surface.summarize(
        surface.surface_metrics_for_batch(
            np.zeros((3, *shape), np.uint8), np.stack(refs), [spacing] * 3, num_classes=2
        )
    )
    assert math.isnan(nothing["hd95_mm"]) and math.isnan(nothing["assd_mm"])
    assert (nothing["hd95_empty_cases"], nothing["hd95_both_empty_cases"]) == (2, 1)


def test_multiclass_case_with_a_missed_class_is_counted():
    shape, spacing = (8, 9, 10), (3.0, 1.0, 1.0)
    ref = _case(shape, np.s_[1:4, 1:5, 1:5])
    ref[5:7, 4:8, 5:9] = 2
    pred = _case(shape, np.s_[1:4, 2:5, 1:6])
    got = surface.case_surface(pred, ref, spacing, num_classes=3)  # class 2 missed
    assert got["surface"] == "one_empty" and math.isnan(got["hd95"])
    ref3 = np.where(ref == 2, 0, ref)  # class 2 absent from both: the mean over class 1 only
    got = surface.case_surface(pred, ref3, spacing, num_classes=3)
    want = surface.distance_metrics(pred == 1, ref3 == 1, spacing)
    assert got == {"hd95": want["hd95"], "assd": want["assd"], "surface": "ok"}
