"""Measured memory of a candidate plan: the real train step, compiled, per XLA's analysis.

``make_measure(config, channels)`` returns ``measure(topology, batch_size) -> bytes``: it builds
the UNet the plan describes (the config's other model options, loss, augmentation, optimiser and
precision as they are), lowers ``jax.jit(train_step)`` on abstract inputs (nothing is
allocated) and compiles it for one device; the bytes are XLA's ``memory_analysis()``: arguments
+ outputs + temporaries, less what the donated state aliases.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from medjax.augment import compose as augment_lib
from medjax.models import spec as model_spec
from medjax.plan import planner
from medjax.plan import topology as topo_lib
from medjax.train import optim
from medjax.train import state as state_lib
from medjax.train import step as step_lib

# Without a memory figure from the device (XLA's CPU backend reports none), plans are sized
# for this much host memory per device; set plan.memory_gb to use another budget.
CPU_DEFAULT_GB = 8.0


def device_memory_bytes(device: jax.Device | None = None) -> int | None:
    """The device's memory (``memory_stats()["bytes_limit"]``), or None where unreported."""
    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning None
        stats = None
    if not stats or "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"])


def budget_bytes(memory_gb: float) -> int:
    """``plan.memory_gb`` in bytes; 0: the device's memory, else ``CPU_DEFAULT_GB``."""
    if memory_gb and memory_gb > 0:
        return int(memory_gb * 2**30)
    found = device_memory_bytes()
    return found if found is not None else int(CPU_DEFAULT_GB * 2**30)


def model_kwargs(
    config: ml_collections.ConfigDict, topology: topo_lib.Topology
) -> dict[str, object]:
    """The config's ``model.kwargs`` with the topology's depth, widths, pooling and kernels."""
    kwargs = config.model.kwargs.to_dict()
    nd = len(topology.patch_size)
    max_features = int(config.plan.max_features or planner.MAX_FEATURES[nd])
    kwargs.update(
        depth=topology.depth,
        features=list(
            planner.level_features(topology.depth, int(config.plan.base_features), max_features)
        ),
        pool_strides=[list(p) for p in topology.pool_strides],
        kernel_sizes=[list(k) for k in topology.kernel_sizes],
    )
    return kwargs


def compiled_bytes(compiled: jax.stages.Compiled) -> int:
    """Peak-style bytes of a compiled program: arguments + outputs + temporaries - aliases."""
    m = compiled.memory_analysis()
    return int(
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )


def make_measure(
    config: ml_collections.ConfigDict, channels: int
) -> Callable[[topo_lib.Topology, int], int]:
    """``measure(topology, per_device_batch) -> bytes`` of the config's train step.

    Args:
      config: the run's config (``model.name`` must accept ``depth``, ``features``,
        ``pool_strides`` and ``kernel_sizes``: the UNet).
      channels: input channels of the data.
    """
    tx, schedule = optim.make_optimizer(config, 1000)
    augment_fn = augment_lib.compose(list(config.augment)) if config.augment else None
    from medjax.train import loop  # the trainer's own loss wrapping (deep supervision)

    loss_fn = loop.build_loss(config)
    step = step_lib.make_train_step(
        loss_fn,
        augment_fn,
        schedule,
        precision=config.train.precision,
        grad_accum_steps=config.train.grad_accum_steps,
    )
    key = jax.eval_shape(lambda: jax.random.key(0))

    def measure(topology: topo_lib.Topology, batch: int) -> int:
        planned = config.copy_and_resolve_references()
        planned.model.kwargs = ml_collections.ConfigDict(model_kwargs(config, topology))
        model = model_spec.build(planned)
        shape = (batch, *topology.patch_size, channels)
        abstract = jax.eval_shape(
            lambda k: state_lib.create_train_state(model, tx, (1, *shape[1:]), k), key
        )
        inputs = {
            "image": jax.ShapeDtypeStruct(shape, jnp.float32),
            "label": jax.ShapeDtypeStruct(shape[:-1], jnp.int32),
        }
        compiled = jax.jit(step, donate_argnums=0).lower(abstract, inputs, key).compile()
        nbytes = compiled_bytes(compiled)
        gib = nbytes / 2**30
        logging.info("plan: patch %s batch %d -> %.3f GiB", topology.patch_size, batch, gib)
        return nbytes

    return measure
