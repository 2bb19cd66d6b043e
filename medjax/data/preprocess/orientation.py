"""Array axes reordered and flipped to a named orientation (e.g. RAS from a LPS direction matrix),
and back: what preprocessing applies to each case and what inverting a prediction undoes.
"""

from __future__ import annotations

import itertools

import numpy as np

CANONICAL = {
    # For array axes (D, H, W): (world axis index in LPS, sign).
    "LPS": ((2, 1.0), (1, 1.0), (0, 1.0)),
    "RAS": ((2, 1.0), (1, -1.0), (0, -1.0)),
}


def orientation(direction: np.ndarray, code: str) -> tuple[list[int], list[bool]]:
    """Permutation and flips that bring array axes to ``code``'s canonical order.

    New axis ``b`` is old axis ``perm[b]``, reversed when ``flip[b]``. For oblique volumes the
    permutation maximises the summed cosines, so each old axis goes to its closest world axis.
    """
    target = CANONICAL[code]
    n = direction.shape[0]
    best = max(
        itertools.permutations(range(n)),
        key=lambda p: sum(abs(direction[target[b][0], p[b]]) for b in range(n)),
    )
    flips = [bool(np.sign(direction[target[b][0], best[b]]) != target[b][1]) for b in range(n)]
    return list(best), flips


def apply_orientation(array: np.ndarray, perm: list[int], flip: list[bool]) -> np.ndarray:
    n = len(perm)
    array = np.transpose(array, perm + list(range(n, array.ndim)))
    axes = tuple(b for b in range(n) if flip[b])
    return np.flip(array, axes) if axes else array


def undo_orientation(array: np.ndarray, perm: list[int], flip: list[bool]) -> np.ndarray:
    n = len(perm)
    axes = tuple(b for b in range(n) if flip[b])
    if axes:
        array = np.flip(array, axes)
    return np.transpose(array, list(np.argsort(perm)) + list(range(n, array.ndim)))
