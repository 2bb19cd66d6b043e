"""data.sampling: class-balanced epochs (exact ratios, cycling, determinism) and the endless
random-access sequence the pipeline reads them through."""

import numpy as np
import pytest

from medjax import errors
from medjax.data import sampling


@pytest.mark.parametrize("ratio, length", [((1, 1), 40), ((1, 3), 40), ((2, 1), 30)])
def test_balanced_ratio_exact(ratio, length):
    labels = np.array([1] * 3 + [0] * 50)
    idx = sampling.balanced_epoch_indices(labels, ratio=ratio, epoch_length=length, seed=0, epoch=0)
    assert idx.shape == (length,) and idx.dtype == np.int64
    n_pos = int((labels[idx] > 0).sum())
    assert n_pos * ratio[1] == (length - n_pos) * ratio[0]
    # The 3 positives are repeated as needed, evenly (a full pass before any repeat).
    counts = np.bincount(idx[labels[idx] == 1], minlength=3)
    assert counts.max() - counts.min() <= 1


def test_balanced_three_classes_and_remainder():
    labels = np.array([0] * 20 + [1] * 4 + [2] * 2)
    idx = sampling.balanced_epoch_indices(labels, ratio=(2, 1, 1), epoch_length=40, seed=1, epoch=0)
    np.testing.assert_array_equal(np.bincount(labels[idx]), [20, 10, 10])
    odd = sampling.balanced_epoch_indices(labels, ratio=(1, 1), epoch_length=7, seed=1, epoch=0)
    assert len(odd) == 7 and abs(int((labels[odd] > 0).sum()) - 3.5) == 0.5


def test_balanced_deterministic_and_epochs_differ():
    labels = np.array([1] * 5 + [0] * 100)
    kw = dict(ratio=(1, 1), epoch_length=20)
    a = sampling.balanced_epoch_indices(labels, seed=3, epoch=0, **kw)
    np.testing.assert_array_equal(a, sampling.balanced_epoch_indices(labels, seed=3, epoch=0, **kw))
    assert not np.array_equal(a, sampling.balanced_epoch_indices(labels, seed=4, epoch=0, **kw))
    b = sampling.balanced_epoch_indices(labels, seed=3, epoch=1, **kw)
    assert not np.array_equal(a, b)
    # Negatives are cycled across epochs: 10 per epoch, so 10 epochs see all 100 exactly once.
    seen = np.concatenate(
        [sampling.balanced_epoch_indices(labels, seed=3, epoch=e, **kw) for e in range(10)]
    )
    negatives = seen[labels[seen] == 0]
    assert sorted(negatives.tolist()) == list(range(5, 105))


def test_balanced_errors():
    with pytest.raises(errors.DataError, match="positive"):
        sampling.balanced_epoch_indices(np.zeros(5), epoch_length=4, seed=0, epoch=0)
    with pytest.raises(errors.ConfigError):
        sampling.balanced_epoch_indices(np.ones(5), ratio=(0, 0), epoch_length=4, seed=0, epoch=0)
    only_pos = sampling.balanced_epoch_indices(
        np.ones(5), ratio=(1, 0), epoch_length=4, seed=0, epoch=0
    )
    assert len(only_pos) == 4


def test_balanced_indices_strings_the_epochs_together():
    labels = np.array([1] * 3 + [0] * 9)
    seq = sampling.BalancedIndices(labels, (1, 2), epoch_length=6, seed=5)
    assert len(seq) == 6 * sampling._EPOCHS_AHEAD
    for epoch in (0, 1, 7):
        expected = sampling.balanced_epoch_indices(
            labels, ratio=(1, 2), epoch_length=6, seed=5, epoch=epoch
        )
        assert [seq[epoch * 6 + i] for i in range(6)] == expected.tolist()
