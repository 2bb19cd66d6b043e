"""JAX's multi-process runtime as medjax uses it: one code path for one process or many.

Every process runs the same program over a mesh of all processes' devices (``launch.py`` calls
``jax.distributed.initialize``). Training batches: each process loads only its rows of the
global batch (``pipeline.to_global``). Evaluation: every process walks the whole split, places
each global batch with ``global_from_host`` (a process fills only its own devices' shards) and
reads the sharded outputs back with ``to_host`` (an all-gather across processes), so every
process computes the same metrics exactly. Files (logs, TensorBoard, eval outputs) are written by
the main process only (``is_main``); checkpoints are written collectively by orbax.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

T = TypeVar("T")


def is_main() -> bool:
    """True on the process that writes logs and files (process 0)."""
    return jax.process_index() == 0


def global_from_host(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """Host arrays that every process holds in full -> global arrays with ``sharding``.

    Each process copies only the slices its own devices hold, so this works unchanged on one
    process or many (unlike ``jax.device_put`` of a host array onto devices of other processes).
    """

    def put(x: Any) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def to_host(tree: Any) -> Any:
    """Global arrays -> numpy arrays of their full value, on every process.

    With several processes an array sharded over all devices is not addressable from one
    process, so the shards are all-gathered (a collective: every process must call this in the
    same order).
    """
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def barrier(name: str) -> None:
    """Blocks until every process reaches the barrier ``name`` (no-op on one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def primary_first(fn: Callable[[], T], name: str) -> T:
    """Runs ``fn`` on process 0, then (after a barrier) on the other processes.

    For work whose results land on a shared disk and are reused when present (generating the
    built-in dataset, building the preprocessing store): process 0 does it once, the others then
    find it done. If process 0 fails it still reaches the barrier, so the others do not hang;
    they run ``fn`` themselves and report their own error.
    """
    if jax.process_count() == 1:
        return fn()
    if is_main():
        try:
            return fn()
        finally:
            barrier(name)
    barrier(name)
    return fn()
