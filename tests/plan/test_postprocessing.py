"""Post-processing ops and the choice on validation, against hand-made label maps."""

from __future__ import annotations

import numpy as np
import pytest

from medjax import errors
from medjax.plan import postprocessing as pp


def _blob(shape, box, value=1):
    a = np.zeros(shape, np.uint8)
    a[tuple(slice(lo, hi) for lo, hi in box)] = value
    return a


def test_component_ops_on_a_hand_made_map():
    m = np.zeros((6, 8), bool)
    m[0:3, 0:3] = True  # 9 voxels
    m[5, 7] = True  # 1 voxel
    m[4:6, 0:2] = True  # 4 voxels
    m[3, 3] = True  # touches the 9-block only diagonally: its own face component
    assert pp.keep_largest_component(m).sum() == 9
    assert pp.keep_largest_component(m)[0:3, 0:3].all()
    kept = pp.remove_small_components(m, 4)
    assert kept.sum() == 13 and not kept[5, 7] and not kept[3, 3]
    assert not pp.keep_largest_component(np.zeros((3, 3), bool)).any()
    labels = np.zeros((6, 8), np.uint8)
    labels[m] = 2
    labels[0, 7] = 1
    out = pp.apply(labels, {"classes": {"2": {"keep_largest": True, "min_size_voxels": 0}}})
    assert (out == 2).sum() == 9 and out[0, 7] == 1 and out[5, 7] == 0


def test_choice_takes_an_option_only_when_it_raises_dice():
    shape = (12, 12)
    # Class 1: one true blob of 16; predictions add a 1-voxel false positive -> keep-largest
    # (and the size cut) both give Dice 1; keep-largest is tried first and kept on a tie.
    truth1 = _blob(shape, [(0, 4), (0, 4)])
    pred1 = truth1.copy()
    pred1[10, 10] = 1
    # Class 2 (other cases): two true blobs of 9 and 4 -> keep-largest would lose one; the
    # cut below 10 % / 25 % / 50 % of the smallest true component (4): 0 / 1 / 2 voxels.
    truth2 = _blob(shape, [(0, 3), (0, 3)], 2) + _blob(shape, [(6, 8), (6, 8)], 2)
    pred2 = truth2.copy()
    pred2[11, 0] = 2
    # Dice before: class 1: case A 2*16/(17+16); case B empty/empty = 1.
    doc = pp.choose([pred1, pred2], [truth1, truth2], [1, 2])
    c1, c2 = doc["classes"]["1"], doc["classes"]["2"]
    assert c1["dice_before"] == pytest.approx((32 / 33 + 1) / 2)
    assert c1["keep_largest"] and c1["min_size_voxels"] == 0 and c1["dice_after"] == 1.0
    # Class 2: keep-largest gives 2*9/(9+13) on case B; removing < 2 voxels gives 1.0.
    assert not c2["keep_largest"] and c2["min_size_voxels"] == 2
    assert c2["dice_before"] == pytest.approx((1 + 26 / 27) / 2) and c2["dice_after"] == 1.0
    # A clean prediction keeps "none".
    doc = pp.choose([truth2], [truth2], [2])
    assert doc["classes"]["2"] == {
        "keep_largest": False,
        "min_size_voxels": 0,
        "dice_before": 1.0,
        "dice_after": 1.0,
    }
    np.testing.assert_array_equal(pp.apply(pred2, doc), pred2)


def test_predict_options_from_the_choice():
    doc = {
        "classes": {
            "1": {"keep_largest": True, "min_size_voxels": 0},
            "2": {"keep_largest": False, "min_size_voxels": 5},
        }
    }
    assert pp.predict_options(doc) == {"keep_largest": (1,), "min_size_voxels": 5}
    doc["classes"]["3"] = {"keep_largest": False, "min_size_voxels": 7}
    with pytest.raises(errors.ConfigError, match="min_size_voxels"):
        pp.predict_options(doc)
