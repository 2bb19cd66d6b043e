"""The device mesh and the shardings of state and batches (STYLE.md sec. 5)."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from medjax import errors


def make_mesh(mesh_config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """A mesh over all devices (of all processes) with a single ``data`` axis.

    ``mesh.data=-1`` takes every device. Axis types are explicitly ``Auto``: with JAX's
    ``Explicit`` default an eager slice of a sharded array raises.
    """
    n = jax.device_count()
    size = n if mesh_config.data == -1 else int(mesh_config.data)
    # Fewer devices than visible is allowed on one process (e.g. comparing 1 vs 8 devices).
    if size < 1 or size > n or (size != n and jax.process_count() > 1):
        raise errors.ConfigError(f"mesh.data={mesh_config.data} but {n} devices are visible.")
    return jax.make_mesh(
        (size,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:size]
    )


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``; the rest replicated."""
    return NamedSharding(mesh, P("data"))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Fully replicated."""
    return NamedSharding(mesh, P())


def state_sharding(abstract_state: Any, mesh: jax.sharding.Mesh) -> Any:
    """Shardings for every leaf of the state: replicated (pure data parallelism)."""
    return jax.tree.map(lambda _: replicated(mesh), abstract_state)


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh, key: str) -> None:
    """The global batch must be a positive integer that splits evenly over the data axis."""
    n = int(np.prod(mesh.devices.shape))
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise errors.ConfigError(f"{key}={batch_size!r}: expected a positive integer.")
    if batch_size % n:
        raise errors.ConfigError(
            f"{key}={batch_size} is not divisible by the {n} devices of the mesh."
        )
