"""Orbax checkpoints of the train state and the Grain iterator state (STYLE.md sec. 9).

A checkpoint is written to a temporary folder and renamed when complete (orbax's atomic
finalisation), so a crash or SIGKILL mid-save never corrupts the last good checkpoint.
Preservation mirrors the seed's ModelCheckpoint: the newest ``save_last`` plus the best
``save_top_k`` by ``monitor`` (``mode`` max or min).
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from medjax import errors


class Checkpointer:
    """Saves and restores ``{"state", "data"}`` in ``<workdir>/ckpt``.

    Args:
      directory: the checkpoint folder.
      ckpt_config: ``config.ckpt`` (monitor, mode, save_top_k, save_last).
      read_only: open without creating or deleting anything (eval mode, init_from).
    """

    def __init__(
        self, directory: str, ckpt_config: ml_collections.ConfigDict, *, read_only: bool = False
    ):
        self.monitor = ckpt_config.monitor
        self.mode = ckpt_config.mode
        if self.mode not in ("max", "min"):
            raise errors.ConfigError(f"ckpt.mode={self.mode!r}; expected 'max' or 'min'.")
        policies = [ocp.checkpoint_managers.LatestN(max(int(ckpt_config.save_last), 1))]
        if self.monitor and ckpt_config.save_top_k:
            policies.append(
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=self._metric,
                    reverse=self.mode == "min",
                    n=int(ckpt_config.save_top_k),
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            # best_fn makes orbax write and read the per-step metrics; which steps are kept is
            # decided by the preservation policy above.
            best_fn=self._metric,
            best_mode=self.mode,
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=True,
        )
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def _metric(self, metrics: dict[str, Any]) -> float:
        value = metrics.get(self.monitor) if metrics else None
        if value is None or not math.isfinite(float(value)):
            return -math.inf if self.mode == "max" else math.inf
        return float(value)

    def latest_step(self) -> int | None:
        """The newest saved step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every preserved step, ascending."""
        return sorted(self._manager.all_steps())

    def metrics(self, step: int) -> dict[str, float] | None:
        """The metrics saved with ``step`` (None when saved without)."""
        return self._manager.metrics(step)

    def best_step(self) -> int | None:
        """The preserved step with the best monitored metric (the latest when none has one)."""
        scored = [(s, self.metrics(s)) for s in self.all_steps()]
        scored = [(s, m) for s, m in scored if m and self.monitor in m]
        if not scored:
            return self.latest_step()
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda sm: (self._metric(sm[1]), sm[0]))[0]

    def save(
        self,
        step: int,
        state: Any,
        data_state: dict | None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Saves asynchronously; call ``wait`` before reading it back or exiting."""
        items = {"state": ocp.args.StandardSave(state)}
        if data_state is not None:
            items["data"] = ocp.args.JsonSave(data_state)
        clean = {k: float(v) for k, v in (metrics or {}).items()} or None
        self._manager.save(step, args=ocp.args.Composite(**items), metrics=clean)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict | None]:
        """Restores ``step`` into the shardings of ``abstract_state`` (ShapeDtypeStructs).

        Raises:
          CheckpointError: the step does not exist or does not match the model.
        """
        if step not in self.all_steps():
            raise errors.CheckpointError(
                f"No checkpoint at step {step} in {self.directory}; available: {self.all_steps()}."
            )
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        has_data = os.path.isdir(os.path.join(self.directory, str(step), "data"))
        if has_data:
            items["data"] = ocp.args.JsonRestore()
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, KeyError, TypeError) as e:
            raise errors.CheckpointError(
                f"Checkpoint {self.directory}/{step} does not match this model/config: {e}"
            ) from e
        return restored["state"], (restored["data"] if has_data else None)

    def restore_raw(self, step: int) -> Any:
        """Restores the saved state as host arrays, without a target (fine-tuning another model).

        Works whatever the topology it was saved with (e.g. by a multi-process run): the target
        is the saved tree's shapes placed on one local device.
        """
        meta = ocp.StandardCheckpointer().metadata(os.path.join(self.directory, str(step), "state"))
        tree = getattr(meta, "item_metadata", meta)
        one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device),
            getattr(tree, "tree", tree),
        )
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )
        return jax.device_get(restored["state"])

    def wait(self) -> None:
        """Blocks until pending async saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def find_checkpoint(path: str) -> tuple[str, int | None]:
    """Resolves ``init_from``: a workdir (``<workdir>/ckpt``), a ckpt folder or a step folder.

    Returns:
      ``(ckpt_dir, step)``; step None means "the best/latest there".
    """
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(os.path.join(path, "ckpt")):
        return os.path.join(path, "ckpt"), None
    base = os.path.basename(path)
    if base.isdigit() and os.path.isdir(path):
        return os.path.dirname(path), int(base)
    if os.path.isdir(path):
        return path, None
    raise errors.CheckpointError(f"init_from={path!r}: no such workdir or checkpoint folder.")


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the target shardings (restore targets)."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings
    )
