"""Orbax checkpoints of the train state and the Grain iterator state (STYLE.md sec. 9).

A checkpoint is written to a temporary folder (``<step>.orbax-checkpoint-tmp-*``) and renamed
when complete (orbax's atomic finalisation); steps that the preservation policy drops are deleted
only after that rename (``CheckpointManager._finalize``), so a crash or SIGKILL mid-save costs at
most the epoch in progress. A tmp folder left by such a kill is ignored, and removed when the
workdir is next opened for training.

A damaged checkpoint (a truncated or garbled file, a missing item) never makes a workdir
unusable: steps whose metadata files do not parse are set aside when the manager is opened
(moved to ``<ckpt>_damaged/`` when training, merely skipped when read only), and a step whose
arrays fail to read is skipped at restore; either way a warning names the step and the file,
and the newest intact checkpoint is used (``restore_intact``). Only when none is intact does a
single ``CheckpointError`` say so.

Preservation mirrors the seed's ModelCheckpoint: the newest ``save_last`` plus the best
``save_top_k`` by ``monitor`` (``mode`` max or min).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from medjax import distributed, errors, progress
from medjax.train import checkpoint_faults as faults


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
        self.directory = os.path.abspath(directory)
        self._saving = self.directory  # the step folder of the latest save (for errors)
        self.read_only = read_only
        # Steps whose files are damaged -> what is wrong; orbax never sees them.
        self.damaged: dict[int, str] = {}
        for step, problem in faults.scan_damaged(self.directory).items():
            self._set_aside(step, problem)
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
            # A save killed before its rename leaves <step>.orbax-checkpoint-tmp-*: removed when
            # training reopens the folder (never by a read-only reader).
            cleanup_tmp_directories=not read_only,
            step_name_format=faults.SkipSteps(ocp.step.standard_name_format(), self.damaged),
            enable_async_checkpointing=True,
        )
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        except OSError as e:
            raise faults.disk_error(e, self.directory) from e
        if self.damaged and not self.all_steps():
            raise self._none_intact()

    def _set_aside(self, step: int, problem: str) -> None:
        """Warns about a damaged step and hides it from orbax."""
        self.damaged[step] = problem
        path = os.path.join(self.directory, str(step))
        logging.warning("Damaged checkpoint %s (%s); skipped.", path, problem)
        if distributed.is_main():
            progress.say(
                f"medjax: warning: checkpoint step {step} in {self.directory} is damaged "
                f"({problem}); skipped."
            )

    def _move_damaged(self) -> None:
        """Moves damaged steps to ``<ckpt>_damaged/`` once training resumes from an intact one.

        Moved, not deleted: the files stay for inspection, and the step numbers are free for
        the saves that the resumed run makes again. Never when read only or when none is intact.
        """
        if self.read_only or not distributed.is_main():
            return
        for step in sorted(self.damaged):
            path = os.path.join(self.directory, str(step))
            if os.path.isdir(path):
                stamp = time.strftime("%Y%m%d-%H%M%S")
                aside = os.path.join(self.directory + "_damaged", f"{step}-{stamp}")
                os.makedirs(os.path.dirname(aside), exist_ok=True)
                shutil.move(path, aside)
                progress.say(f"medjax: moved damaged checkpoint {path} to {aside}")

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
        """The preserved step with the best monitored metric (the latest when none has one).

        Ties go to the earliest step reaching the best value: the loop's summary counts only a
        strict improvement as a new best, so both name the same step.
        """
        ranked = self._ranked_steps()
        return ranked[0] if ranked else None

    def _ranked_steps(self) -> list[int]:
        """Steps with the monitored metric, best first (ties: earliest first); [latest] if none."""
        scored = [(s, self.metrics(s)) for s in self.all_steps()]
        scored = [(s, m) for s, m in scored if m and self.monitor in m]
        if not scored:
            latest = self.latest_step()
            return [] if latest is None else [latest]
        sign = -1.0 if self.mode == "max" else 1.0
        return [s for s, m in sorted(scored, key=lambda sm: (sign * self._metric(sm[1]), sm[0]))]

    def save(
        self,
        step: int,
        state: Any,
        data_state: dict | None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Saves asynchronously; call ``wait`` before reading it back or exiting.

        Raises:
          CheckpointError: the disk is full or not writable (naming the folder).
        """
        items = {"state": ocp.args.StandardSave(state)}
        if data_state is not None:
            items["data"] = ocp.args.JsonSave(data_state)
        clean = {k: float(v) for k, v in (metrics or {}).items()} or None
        self._saving = os.path.join(self.directory, str(step))
        # A resumed run saves again the step numbers of the damaged checkpoints it moved aside:
        # from now on the step is the new save, no longer hidden from orbax.
        self.damaged.pop(step, None)
        try:
            self._manager.save(step, args=ocp.args.Composite(**items), metrics=clean)
        except Exception as e:
            raise faults.disk_error(e, self._saving) from e

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict | None]:
        """Restores ``step`` into the shardings of ``abstract_state`` (ShapeDtypeStructs).

        Raises:
          CheckpointError: the step does not exist, does not match the model, or is damaged
            (then ``.damaged`` is True on the error).
        """
        if step not in self.all_steps():
            hint = f" (damaged: {self.damaged[step]})" if step in self.damaged else ""
            raise errors.CheckpointError(
                f"No checkpoint at step {step} in {self.directory}{hint}; "
                f"available: {self.all_steps()}."
            )
        path = os.path.join(self.directory, str(step))
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        has_data = os.path.isdir(os.path.join(path, "data"))
        if has_data:
            items["data"] = ocp.args.JsonRestore()
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # tensorstore raises plain Exception for an unreadable chunk
            differs = faults.shape_differences(os.path.join(path, "state"), abstract_state)
            if differs:
                workdir = os.path.dirname(self.directory)
                raise errors.CheckpointError(
                    f"Checkpoint {path} does not match this model/config: {differs}. Use a new "
                    f"workdir for a different model, or init_from={workdir!r} to start from "
                    f"its weights."
                ) from e
            err = errors.CheckpointError(f"Checkpoint {path} is damaged: {faults.read_failure(e)}")
            err.damaged = True
            raise err from e
        return restored["state"], (restored["data"] if has_data else None)

    def restore_intact(
        self, abstract_state: Any, *, prefer: str = "latest"
    ) -> tuple[int, Any, dict | None]:
        """Restores the newest (``prefer="latest"``) or best (``"best"``) intact checkpoint.

        A damaged candidate is skipped with a warning naming it, and the next one is tried.

        Returns:
          ``(step, state, data_state)``.

        Raises:
          CheckpointError: no checkpoint at all, or every one is damaged (one line), or the
            checkpoints do not match the model (not a damage: no fallback).
        """
        if prefer not in ("latest", "best"):
            raise ValueError(f"prefer={prefer!r}; expected 'latest' or 'best'.")
        order = self._ranked_steps() if prefer == "best" else self.all_steps()[::-1]
        if prefer == "best":  # steps without the metric come after the ranked ones
            order += [s for s in self.all_steps()[::-1] if s not in order]
        for step in order:
            try:
                state, data = self.restore(step, abstract_state)
            except errors.CheckpointError as e:
                if not getattr(e, "damaged", False):
                    raise
                self._set_aside(step, str(e).split(" is damaged: ", 1)[-1])
                self._manager.reload()  # forget it (the name format now hides it)
                continue
            self._move_damaged()
            return step, state, data
        if self.damaged:
            raise self._none_intact()
        raise errors.CheckpointError(f"No checkpoint in {self.directory}: train first.")

    def _none_intact(self) -> errors.CheckpointError:
        listed = ", ".join(f"step {s} ({p})" for s, p in sorted(self.damaged.items()))
        return errors.CheckpointError(
            f"No intact checkpoint in {self.directory}: {listed}. Use a new workdir, or delete "
            f"{self.directory} to train this one from scratch."
        )

    def restore_raw(self, step: int) -> Any:
        """Restores the saved state as host arrays, without a target (fine-tuning another model).

        Works whatever the topology it was saved with (e.g. by a multi-process run): the target
        is the saved tree's shapes placed on one local device.

        Raises:
          CheckpointError: the step's files are damaged.
        """
        path = os.path.join(self.directory, str(step))
        try:
            meta = ocp.StandardCheckpointer().metadata(os.path.join(path, "state"))
            tree = getattr(meta, "item_metadata", meta)
            one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            target = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device),
                getattr(tree, "tree", tree),
            )
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
            )
        except Exception as e:
            raise errors.CheckpointError(
                f"Checkpoint {path} is damaged: {faults.read_failure(e)}"
            ) from e
        return jax.device_get(restored["state"])

    def wait(self) -> None:
        """Blocks until pending async saves are on disk.

        Raises:
          CheckpointError: the save failed for lack of space or permission (naming the folder).
        """
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise faults.disk_error(e, self._saving) from e

    def close(self) -> None:
        """Waits and releases the manager."""
        try:
            self.wait()
        finally:
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
