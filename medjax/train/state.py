"""The train state: parameters, optimiser state and (for batch norm) running statistics."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
    """Flax's TrainState plus ``batch_stats`` (an empty dict for models without batch norm)."""

    batch_stats: Any = None


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, input_shape: tuple[int, ...], key: jax.Array
) -> TrainState:
    """Initialises a model for inputs of ``input_shape`` (``[B, *spatial, C]``).

    Pure and jit-able: the loop jits it with the state's shardings so the state is born sharded.
    """
    variables = model.init(key, jnp.zeros(input_shape, jnp.float32), train=False)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
    )
