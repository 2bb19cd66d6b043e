"""Label regions (BraTS style): targets, painting back into a label map, config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax import errors
from medjax.losses import regions as region_loss
from medjax.metrics import regions

BRATS = ((1, 2, 3), (2, 3), (3,))  # whole tumour, tumour core, enhancing


def test_region_targets_of_a_hand_made_label_map():
    labels = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])
    want = np.array(  # [2, 4, 3]: (whole, core, enhancing) per voxel, written out by hand
        [
            [[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]],
            [[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]],
        ]
    )
    np.testing.assert_array_equal(regions.class_masks(labels, num_classes=3, regions=BRATS), want)
    got = jax.jit(lambda x: region_loss.region_targets(x, BRATS))(jnp.asarray(labels))
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), want)


def test_plain_classes_and_binary_masks():
    labels = np.array([0, 1, 2, 5])
    np.testing.assert_array_equal(
        regions.class_masks(labels, num_classes=3), [[0, 0], [1, 0], [0, 1], [0, 0]]
    )
    np.testing.assert_array_equal(regions.class_masks(labels, num_classes=1), [[0], [1], [1], [1]])


def test_painting_regions_back_into_labels():
    assert regions.region_labels(BRATS) == (1, 2, 3)
    assert regions.region_labels(((2, 3), (1, 2, 3))) == (3, 1)  # later one holds all: max
    # Per voxel (whole, core, enhancing) logits; later regions overwrite earlier ones.
    on = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 1], [0, 1, 0], [1, 0, 1]])
    logits = np.where(on, 2.0, -2.0)
    want = [0, 1, 2, 3, 3, 2, 3]
    np.testing.assert_array_equal(regions.labels_from_logits(logits, BRATS), want)
    np.testing.assert_array_equal(regions.labels_from_logits(jnp.asarray(logits), BRATS), want)
    # Nested regions round-trip: label map -> region masks -> logits -> the same label map.
    labels = np.random.default_rng(0).integers(0, 4, (5, 6))
    masks = regions.class_masks(labels, num_classes=3, regions=BRATS)
    round_trip = regions.labels_from_logits(np.where(masks, 1.0, -1.0), BRATS)
    np.testing.assert_array_equal(round_trip, labels)


def test_parse_check_and_names():
    assert regions.parse([[1, 2, 3], [2, 3], 3]) == BRATS
    assert regions.parse(()) == ()
    for bad in (((),), ((0, 1),), (("a",),)):
        with pytest.raises(errors.ConfigError, match=r"data\.regions"):
            regions.parse(bad)
    with pytest.raises(errors.ConfigError, match=r"model\.num_classes must be 3"):
        regions.check(BRATS, 4)
    regions.check(BRATS, 3)
    assert regions.names(3, BRATS) == ("1+2+3", "2+3", "3")
    assert regions.names(4) == ("1", "2", "3")
    assert regions.names(1) == ("1",)
    assert regions.names(3, (), ("cord", "lesion")) == ("cord", "lesion")
    with pytest.raises(errors.ConfigError, match=r"data\.class_names"):
        regions.names(3, BRATS, ("a", "b"))
