"""The one evaluation loop: batches a task's inputs, shards them, gathers the outputs across
processes and hands them to the task's accumulator.

Multi-process rule (``medjax.distributed``): every process walks the whole split in the same
order, places each global batch with ``global_from_host`` (a process fills only its own
devices' shards) and reads outputs with ``to_host`` (an all-gather), so every process's
accumulator sees the same numbers and ``finalize`` returns the same ``EvalResult`` everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from medjax import distributed, progress
from medjax.tasks import base


def evaluate(
    task: base.Task,
    fns: Mapping[str, Callable],
    state: Any,
    split: str,
    *,
    batch_sharding: jax.sharding.NamedSharding,
    batch_size: int,
    keep_predictions: bool = False,
) -> base.EvalResult:
    """Evaluates ``state`` on every case of ``split`` of ``task``.

    Args:
      task: anything implementing ``base.Task``.
      fns: the task's eval functions, jitted (``in_shardings=(state, batch_sharding)``).
      state: the train state (params, batch stats).
      split: a split name of the task's data.
      batch_sharding: the sharding of a batch's leading axis (its mesh also shards windows).
      batch_size: global batch size (cases for ``Batches``, windows for ``Windows``).
      keep_predictions: ask the task to keep every case's prediction in the result.

    Returns:
      The task's ``EvalResult``, identical on every process.
    """
    evaluation = task.evaluation(split, keep_predictions=keep_predictions)
    inputs = evaluation.inputs
    source = getattr(evaluation, "source", None)
    bar = progress.Progress(len(source) if source is not None else 0, f"eval {split}", unit="case")
    fn = fns[inputs.fn]
    if isinstance(inputs, base.Batches):
        for batch in inputs.make(batch_size):
            batch = pad_batch(batch, batch_size)
            device = {k: batch[k] for k in inputs.device_keys if k in batch}
            out = distributed.to_host(
                fn(state, distributed.global_from_host(device, batch_sharding))
            )
            evaluation.accumulate(out, batch)
            bar.update(int(batch["valid"].sum()))
    elif isinstance(inputs, base.Windows):
        from medjax.evaluate import sliding_window

        for index, image in inputs.cases():
            logits = sliding_window.sliding_window_predict(
                lambda w: fn(state, w),
                np.asarray(image, np.float32),
                tile_size=inputs.tile_size,
                num_classes=inputs.num_classes,
                step_fraction=inputs.step_fraction,
                batch_size=batch_size,
                mirror_axes=inputs.mirror_axes,
                mesh=batch_sharding.mesh,
                blend=inputs.blend,
            )
            case = {"index": np.asarray([index], np.int32), "valid": np.ones(1, bool)}
            evaluation.accumulate({"logits": np.asarray(logits)[None]}, case)
            bar.update()
    else:
        raise TypeError(f"{type(task).__name__}.evaluation().inputs is {type(inputs).__name__}")
    bar.close()
    return evaluation.finalize()


def pad_batch(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """A batch of ``n <= batch_size`` rows -> exactly ``batch_size`` rows (one compiled shape).

    A batch that already has ``valid`` is returned as it is (padded by its maker). Otherwise
    every entry is padded with zero rows, ``valid bool[B]`` marks the ``n`` real rows and
    ``index`` (required) is -1 on the padding.
    """
    if "valid" in batch:
        return batch
    n = len(batch["index"])
    if n > batch_size:
        raise ValueError(f"a batch of {n} rows for batch_size {batch_size}")
    out = {
        k: np.concatenate([v, np.zeros((batch_size - n, *np.shape(v)[1:]), np.asarray(v).dtype)])
        for k, v in batch.items()
    }
    out["valid"] = np.arange(batch_size) < n
    out["index"] = np.where(out["valid"], out["index"], -1).astype(np.int32)
    return out
