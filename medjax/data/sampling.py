"""Generic samplers: training epochs with a fixed class ratio, for any labelled source.

``balanced_epoch_indices`` gives the item order of one epoch; ``BalancedIndices`` strings the
epochs together as an endless random-access sequence that ``data.pipeline`` turns into a Grain
``MapDataset`` (LUNA16 cutouts and classification folders use it alike).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medjax import errors

_EPOCHS_AHEAD = 1_000_000  # BalancedIndices is "endless": this many epochs


def _cycled(pool: np.ndarray, start: int, count: int, seed: Sequence[int]) -> np.ndarray:
    """Items ``[start, start + count)`` of an endless stream of fresh permutations of ``pool``.

    Walking this stream epoch after epoch shows every item equally often (up to one pass),
    which repeats a small class and cycles through a large one instead of re-drawing it.
    """
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    n = len(pool)
    first, last = start // n, (start + count - 1) // n
    stream = np.concatenate(
        [pool[np.random.default_rng([*seed, c]).permutation(n)] for c in range(first, last + 1)]
    )
    return stream[start - first * n : start - first * n + count]


def balanced_epoch_indices(
    labels: Sequence[int] | np.ndarray,
    *,
    ratio: Sequence[int] = (1, 1),
    epoch_length: int,
    seed: int,
    epoch: int,
) -> np.ndarray:
    """Source indices for one training epoch with a fixed class ratio.

    With two entries, ``ratio = (positive, negative)`` where positive means ``label > 0``; with
    ``K >= 3`` entries, ``ratio[k]`` weighs class ``k`` (e.g. ``(2, 1, 1)`` for non-nodule :
    benign : malignant). Class counts in the epoch are ``epoch_length * ratio / sum(ratio)``,
    exact when ``epoch_length`` is a multiple of ``sum(ratio)`` (else the remainder goes to the
    largest fractional parts). Each class is drawn from an endless stream of permutations of
    its members, continued across epochs: a rare class is repeated as needed, a common one is
    cycled through. The epoch is then shuffled.

    Args:
      labels: ``int[N]`` labels of the source's items (e.g. ``CutoutSource.labels``).
      ratio: relative class frequencies (non-negative integers).
      epoch_length: number of indices to return.
      seed: the run's data seed.
      epoch: epoch number; different epochs give different orders and members.

    Returns:
      ``int64[epoch_length]`` indices into the source.

    Raises:
      ConfigError: bad ratio or epoch length.
      DataError: a class with a non-zero ratio has no member.
    """
    labels = np.asarray(labels).reshape(-1)
    ratio = [int(r) for r in ratio]
    if len(ratio) < 2 or min(ratio) < 0 or sum(ratio) == 0:
        raise errors.ConfigError(f"ratio={ratio}: need >= 2 non-negative ints, not all zero.")
    if epoch_length <= 0:
        raise errors.ConfigError(f"epoch_length={epoch_length}: must be positive.")
    if len(ratio) == 2:
        groups = [np.flatnonzero(labels > 0), np.flatnonzero(labels <= 0)]
        names = ["positive", "negative"]
    else:
        groups = [np.flatnonzero(labels == k) for k in range(len(ratio))]
        names = [f"class {k}" for k in range(len(ratio))]
    total = sum(ratio)
    counts = [epoch_length * r // total for r in ratio]
    remainders = [epoch_length * r % total for r in ratio]
    for k in sorted(range(len(ratio)), key=lambda k: -remainders[k])[: epoch_length - sum(counts)]:
        counts[k] += 1
    picks = []
    for k, (group, count) in enumerate(zip(groups, counts, strict=True)):
        if count and not len(group):
            raise errors.DataError(f"ratio {ratio} asks for {names[k]} items but there are none.")
        picks.append(_cycled(group, epoch * count, count, (seed, 1, k)))
    out = np.concatenate(picks).astype(np.int64)
    # Stream tags 1 (class draws) and 2 (epoch shuffle) keep the two random streams apart.
    return out[np.random.default_rng([seed, 2, epoch]).permutation(len(out))]


class BalancedIndices:
    """Endless class-balanced epochs as a random-access sequence: position -> source index.

    Epoch ``e`` (positions ``[e * epoch_length, (e + 1) * epoch_length)``) is
    ``balanced_epoch_indices(labels, ratio, epoch_length, seed, e)``: a fixed class
    ratio, small classes repeated and large ones cycled through across epochs. Being a pure
    function of the position, it is a Grain ``MapDataset`` source whose iterator state is the
    position alone (checkpointable, identical on 1 or N processes).
    """

    def __init__(
        self, labels: np.ndarray, ratio: tuple[int, ...], epoch_length: int, seed: int
    ) -> None:
        self.labels = np.asarray(labels)
        self.ratio = tuple(int(r) for r in ratio)
        self.epoch_length, self.seed = int(epoch_length), int(seed)
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.epoch_length * _EPOCHS_AHEAD

    def __getitem__(self, position: int) -> int:
        epoch, offset = divmod(int(position), self.epoch_length)
        if epoch not in self._cache:
            # One epoch cached: reads walk the positions in order within each worker.
            self._cache = {
                epoch: balanced_epoch_indices(
                    self.labels,
                    ratio=self.ratio,
                    epoch_length=self.epoch_length,
                    seed=self.seed,
                    epoch=epoch,
                )
            }
        return int(self._cache[epoch][offset])
