"""Host segmentation metrics vs brute-force float64 references (2D and 3D, anisotropic)."""

import itertools
import math

import numpy as np
import pytest
from scipy import ndimage

from medjax import errors, registry
from medjax.metrics import segmentation, surface


def _brute_surface(mask, connectivity="face"):
    """Interior = the voxel and all its neighbours are set (outside counts as empty): the
    2 * ndim face neighbours (``"face"``) or all 3**ndim - 1 (``"full"``)."""
    padded = np.pad(mask, 1)
    interior = mask.copy()
    for offset in itertools.product((-1, 0, 1), repeat=mask.ndim):
        if connectivity == "face" and sum(map(abs, offset)) > 1:
            continue
        window = tuple(slice(1 + o, 1 + o + s) for o, s in zip(offset, mask.shape, strict=True))
        interior &= padded[window]
    return mask & ~interior


def _brute_distances(pred, ref, spacing, connectivity="face"):
    """Directed surface distances by all-pairs Euclidean distance between voxel centres (mm)."""
    p = np.argwhere(_brute_surface(pred, connectivity)) * np.asarray(spacing, np.float64)
    r = np.argwhere(_brute_surface(ref, connectivity)) * np.asarray(spacing, np.float64)
    d = np.sqrt(((p[:, None, :] - r[None, :, :]) ** 2).sum(-1))
    return d.min(1), d.min(0)


def _brute_metrics(pred, ref, spacing, connectivity="face"):
    if not pred.any() and not ref.any():
        return 1.0, math.nan, math.nan
    if not pred.any() or not ref.any():
        return 0.0, math.inf, math.inf
    d_pr, d_rp = _brute_distances(pred, ref, spacing, connectivity)
    hd95 = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    assd = (d_pr.sum() + d_rp.sum()) / (len(d_pr) + len(d_rp))
    dice = 2 * (pred & ref).sum() / (pred.sum() + ref.sum())
    return dice, hd95, assd


def _blobs(rng, shape, num_classes):
    """A smooth random label map with a few connected regions per class."""
    label = np.zeros(shape, np.int32)
    for c in range(1, num_classes):
        field = ndimage.gaussian_filter(rng.random(shape), 1.0)
        label[field > np.quantile(field, 0.75)] = c
    return label


@pytest.mark.parametrize("connectivity", ["face", "full"])
@pytest.mark.parametrize(
    "shape,spacing",
    [((14, 12), (0.7, 2.0)), ((9, 10, 11), (3.0, 0.8, 1.1)), ((8, 8, 8), (1.0, 1.0, 1.0))],
)
def test_case_metrics_match_brute_force(shape, spacing, connectivity):
    rng = np.random.default_rng(sum(shape))
    ref, pred = _blobs(rng, shape, 3), _blobs(rng, shape, 3)
    kwargs = {} if connectivity == "face" else {"connectivity": connectivity}  # face: default
    got = segmentation.case_metrics(pred, ref, num_classes=3, spacing=spacing, **kwargs)
    for i, c in enumerate((1, 2)):
        dice, hd95, assd = _brute_metrics(pred == c, ref == c, spacing, connectivity)
        assert got["dice"][i] == pytest.approx(dice, rel=1e-12)
        assert got["hd95"][i] == pytest.approx(hd95, rel=1e-9)
        assert got["assd"][i] == pytest.approx(assd, rel=1e-9)
        p, r = pred == c, ref == c
        assert got["iou"][i] == pytest.approx((p & r).sum() / (p | r).sum())
        assert got["sensitivity"][i] == pytest.approx((p & r).sum() / r.sum())
        assert got["precision"][i] == pytest.approx((p & r).sum() / p.sum())
        assert got["specificity"][i] == pytest.approx((~p & ~r).sum() / (~r).sum())
    assert all(v.dtype == np.float64 and v.shape == (2,) for v in got.values())


def test_hand_computed_single_voxels_and_shift():
    # Two single voxels 2 apart along axis 0 with spacing 3 mm: every distance is 6 mm.
    pred, ref = np.zeros((5, 4, 4), bool), np.zeros((5, 4, 4), bool)
    pred[0, 1, 1], ref[2, 1, 1] = True, True
    got = surface.distance_metrics(pred, ref, (3.0, 1.0, 1.0))
    assert got == {"hd95": 6.0, "assd": 6.0}
    # A 2D bar (20 x 2, so all 40 voxels are surface) shifted by one voxel along its length,
    # spacing 2.5 mm along the shift: per direction 38 distances are 0 and 2 are 2.5 mm.
    a, b = np.zeros((22, 4), bool), np.zeros((22, 4), bool)
    a[0:20, 1:3], b[1:21, 1:3] = True, True
    got = surface.distance_metrics(a, b, (2.5, 1.0))
    assert got["assd"] == pytest.approx(4 * 2.5 / 80)
    # 95th percentile, linear interpolation: position 0.95 * 39 = 37.05 between 0 and 2.5.
    assert got["hd95"] == pytest.approx(0.05 * 2.5)


def test_empty_conventions():
    empty, blob = np.zeros((6, 6, 6), np.int32), np.zeros((6, 6, 6), np.int32)
    blob[2:4, 2:5, 1:3] = 1
    both = segmentation.case_metrics(empty, empty, num_classes=2, spacing=(1, 1, 1))
    assert both["dice"][0] == 1 and both["iou"][0] == 1
    assert np.isnan(both["hd95"][0]) and np.isnan(both["assd"][0])  # undefined, as MONAI
    assert np.isnan(both["sensitivity"][0]) and np.isnan(both["precision"][0])
    assert both["specificity"][0] == 1
    for pred, ref in ((empty, blob), (blob, empty)):
        one = segmentation.case_metrics(pred, ref, num_classes=2, spacing=(1, 1, 1))
        assert one["dice"][0] == 0 and one["iou"][0] == 0
        assert np.isinf(one["hd95"][0]) and np.isinf(one["assd"][0])


def test_crop_matches_uncropped_distance_transform():
    # A structure touching the array border: cropping must keep the border-as-surface rule.
    rng = np.random.default_rng(3)
    ref = np.zeros((20, 16), bool)
    ref[0:5, 3:9] = True
    pred = ndimage.binary_dilation(ref) & (rng.random(ref.shape) > 0.1)
    spacing = (1.3, 0.4)
    d_pr, d_rp = surface.directed_surface_distances(pred, ref, spacing)
    s_pred, s_ref = _brute_surface(pred), _brute_surface(ref)
    full_to_ref = ndimage.distance_transform_edt(~s_ref, sampling=spacing)[s_pred]
    full_to_pred = ndimage.distance_transform_edt(~s_pred, sampling=spacing)[s_ref]
    np.testing.assert_allclose(np.sort(d_pr), np.sort(full_to_ref), rtol=1e-12)
    np.testing.assert_allclose(np.sort(d_rp), np.sort(full_to_pred), rtol=1e-12)


def test_accumulator_summary_per_case_and_reset():
    rng = np.random.default_rng(4)
    acc = registry.lookup(
        "metrics",
        "segmentation",
        num_classes=3,
        spacing=(2.0, 1.0, 1.0),
        class_names=["liver", "tumour"],
    )
    refs = [_blobs(rng, (6, 7, 8), 3) for _ in range(4)]
    preds = [_blobs(rng, (6, 7, 8), 3) for _ in range(4)]
    preds[3][preds[3] == 2] = 0  # case 3 misses the tumour: hd95 inf, dice 0
    refs[2][refs[2] == 2] = 0  # case 2 has no tumour in the reference
    preds[2][preds[2] == 2] = 0  # ... and none predicted: dice 1, sensitivity NaN
    spacings = [None, (1.0, 1.0, 3.0), None, None]
    for i in range(4):
        acc.update(preds[i], refs[i], f"case{i}", spacing=spacings[i])
    want = [
        segmentation.case_metrics(
            preds[i], refs[i], num_classes=3, spacing=spacings[i] or (2.0, 1.0, 1.0)
        )
        for i in range(4)
    ]
    out = acc.result()
    assert out["num_cases"] == 4
    dice_tumour = np.array([w["dice"][1] for w in want])
    assert dice_tumour[2] == 1 and dice_tumour[3] == 0
    assert out["dice/tumour/mean"] == pytest.approx(dice_tumour.mean())
    assert out["dice/tumour/median"] == pytest.approx(np.median(dice_tumour))
    assert out["dice/tumour/std"] == pytest.approx(dice_tumour.std())
    sens = np.array([w["sensitivity"][1] for w in want])
    assert np.isnan(sens[2]) and out["sensitivity/tumour/count"] == 3
    assert out["sensitivity/tumour/mean"] == pytest.approx(np.nanmean(sens))
    assert math.isinf(out["hd95/tumour/mean"]) and math.isfinite(out["hd95/tumour/median"])
    liver_hd = np.array([w["hd95"][0] for w in want])
    assert out["hd95/liver/mean"] == pytest.approx(liver_hd.mean())
    assert out["dice/mean"] == pytest.approx((out["dice/liver/mean"] + out["dice/tumour/mean"]) / 2)
    rows = acc.per_case()
    assert len(rows) == 8 and rows[3]["case_id"] == "case1" and rows[3]["class"] == "tumour"
    assert rows[3]["assd"] == pytest.approx(want[1]["assd"][1])
    acc.reset()
    assert acc.result() == {"num_cases": 0.0} and acc.per_case() == []


def test_accumulator_max_distance_and_errors():
    acc = segmentation.SegmentationMetrics(2, max_distance_mm=373.0)
    blob = np.zeros((5, 5), np.int32)
    blob[1:3, 1:3] = 1
    got = acc.update(np.zeros_like(blob), blob, "missed", spacing=(1.0, 1.0))
    assert got["hd95"][0] == 373.0 and acc.result()["assd/1/mean"] == 373.0
    with pytest.raises(errors.DataError, match="missed"):  # no spacing at all
        acc.update(blob, blob, "missed")
    with pytest.raises(errors.DataError, match="bad"):
        acc.update(blob[:4], blob, "bad", spacing=(1.0, 1.0))
    with pytest.raises(errors.DataError, match="bad"):
        acc.update(blob, blob, "bad", spacing=(1.0, 1.0, 1.0))
    with pytest.raises(errors.ConfigError):
        segmentation.SegmentationMetrics(4, class_names=["a"])
