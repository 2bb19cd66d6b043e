"""Trained models for prediction: a workdir -> its plan, weights and a jitted logits function.

Only the weights are restored (params and batch-norm statistics, no optimiser state), from the
checkpoint chosen by ``predict.checkpoint`` (``best``, ``last`` or a step). Several workdirs
form an ensemble; they must agree on the label set, the channels and the dimensionality.
"""

from __future__ import annotations

import dataclasses
import os
import types
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from medjax import errors
from medjax.predict import plan as plan_lib


@dataclasses.dataclass
class Member:
    """One trained model ready to predict.

    Attributes:
      workdir: the run folder.
      config: the run's config (its ``config.json``).
      plan: the run's preprocessing plan (``plan.load_plan``).
      step: the restored checkpoint step.
      variables: ``{"params", "batch_stats"?}`` as host numpy arrays.
      logits: jitted ``float32[b, *patch, C] -> float32[b, *patch, K]``.
      mesh: the mesh the windows are sharded over.
    """

    workdir: str
    config: ml_collections.ConfigDict
    plan: dict[str, Any]
    step: int
    variables: dict[str, Any]
    logits: Callable[[jax.Array], jax.Array]
    mesh: jax.sharding.Mesh


def choose_step(ckpt: Any, which: str | int, workdir: str) -> int:
    """The step ``which`` names: ``"best"``, ``"last"`` or a step number (int or digits).

    Raises:
      CheckpointError: the workdir holds no checkpoint, or not that step.
      ConfigError: ``which`` is none of these.
    """
    steps = ckpt.all_steps()
    if not steps:
        raise errors.CheckpointError(f"{workdir}: no checkpoint in {ckpt.directory}; train first.")
    which = str(which)
    if which == "best":
        return int(ckpt.best_step())
    if which == "last":
        return int(steps[-1])
    if not which.isdigit():
        raise errors.ConfigError(
            f"predict.checkpoint={which!r}; allowed: 'best', 'last' or a step number."
        )
    if int(which) not in steps:
        raise errors.CheckpointError(f"{workdir}: no checkpoint at step {which}; have {steps}.")
    return int(which)


def make_logits_fn(model: Any, precision: str) -> Callable[[dict, jax.Array], jax.Array]:
    """Unjitted ``(variables, image [b, *S, C]) -> float32 logits [b, *S, K]``.

    The same forward pass as evaluation (``step.predict_logits``: inference mode, the
    full-resolution head of a deep-supervision model, bf16 compute when trained so).
    """
    from medjax.train import step as step_lib

    def logits(variables: dict, image: jax.Array) -> jax.Array:
        state = types.SimpleNamespace(
            apply_fn=model.apply,
            params=variables["params"],
            batch_stats=variables.get("batch_stats") or {},
        )
        return step_lib.predict_logits(state, image, precision=precision)

    return logits


def load_member(workdir: str, checkpoint: str | int = "best") -> Member:
    """Restores one run's weights and plan (see the module docstring).

    Raises:
      CheckpointError: no config.json or no checkpoint (one line naming the workdir).
    """
    from medjax.train import checkpoint as ckpt_lib
    from medjax.train import loop
    from medjax.train import mesh as mesh_lib

    workdir = os.path.abspath(os.path.expanduser(workdir))
    config = plan_lib.load_run_config(workdir)
    ckpt_dir = os.path.join(workdir, "ckpt")
    if not os.path.isdir(ckpt_dir):
        raise errors.CheckpointError(f"{workdir}: no checkpoint folder ({ckpt_dir}); train first.")
    ckpt = ckpt_lib.Checkpointer(ckpt_dir, config.ckpt, read_only=True)
    try:
        step = choose_step(ckpt, checkpoint, workdir)
        raw = ckpt.restore_raw(step)
    finally:
        ckpt.close()
    plan = plan_lib.load_plan(workdir)
    variables = {"params": raw["params"]}
    if raw.get("batch_stats"):
        variables["batch_stats"] = raw["batch_stats"]
    mesh = mesh_lib.make_mesh(config.mesh)
    repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    device_vars = jax.device_put(variables, repl)
    fn = jax.jit(
        make_logits_fn(loop.build_model(config), config.train.precision),
        in_shardings=(repl, batch),
        out_shardings=batch,
    )
    return Member(workdir, config, plan, step, variables, lambda x: fn(device_vars, x), mesh)


def check_ensemble(members: Sequence[Member]) -> None:
    """Fails at once when ensemble members cannot be averaged.

    Raises:
      ConfigError: members disagree on the label set (classes), channels or dimensionality;
        the message names both workdirs and the differing values.
    """
    first = members[0]
    for other in members[1:]:
        for key in ("num_classes", "channels", "label_values"):
            if first.plan.get(key) != other.plan.get(key):
                raise errors.ConfigError(
                    f"predict.ensemble: {other.workdir} has {key}={other.plan.get(key)} but "
                    f"{first.workdir} has {first.plan.get(key)}; members must agree."
                )
        if len(first.plan["patch_size"]) != len(other.plan["patch_size"]):
            raise errors.ConfigError(
                f"predict.ensemble: {other.workdir} is {len(other.plan['patch_size'])}D but "
                f"{first.workdir} is {len(first.plan['patch_size'])}D."
            )


def probabilities(logits: np.ndarray, sigmoid: bool = False) -> np.ndarray:
    """Logits ``[..., K]`` -> probabilities ``float32[..., K]`` (sigmoid for K == 1 or, with
    ``sigmoid``, per channel as region runs train; else softmax), in float32 on the host."""
    from scipy import special

    x = np.asarray(logits, np.float32)
    if x.shape[-1] == 1 or sigmoid:
        return special.expit(x).astype(np.float32, copy=False)
    return special.softmax(x, axis=-1).astype(np.float32, copy=False)
