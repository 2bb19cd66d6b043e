"""The one trainer: ``train_and_evaluate(config, workdir)`` and ``evaluate(config, workdir)``.

Read top to bottom: setup -> data -> components -> state (born sharded; resumed, initialised
from another run, or fresh) -> epochs of jitted steps with periodic logging, validation and
checkpoints -> summary. Side effects (files, logs, checkpoints) live here and in launch.py only.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from medjax import distributed, errors, registry
from medjax.augment import compose as augment_lib
from medjax.data import pipeline
from medjax.losses import compound
from medjax.models import layers
from medjax.train import checkpoint as ckpt_lib
from medjax.train import mesh as mesh_lib
from medjax.train import metric_writer, optim
from medjax.train import state as state_lib
from medjax.train import step as step_lib

# ---------------------------------------------------------------------------------------------
# Components named by the config.
# ---------------------------------------------------------------------------------------------


def build_model(config: ml_collections.ConfigDict):
    """The model named by ``config.model`` (registry ``models.<name>``).

    ``model.conv_impl`` other than ``"auto"`` forces that convolution formulation on the model's
    auto convolutions (``layers.with_conv_impl``); parameters are the same either way.
    """
    model = registry.lookup("models", config.model.name, **config.model.kwargs.to_dict())
    return layers.with_conv_impl(model, config.model.get("conv_impl", "auto"))


def build_loss(config: ml_collections.ConfigDict, *, train: bool = True):
    """The loss named by ``config.loss``.

    For training it is wrapped for deep supervision when the model has it, weighted by
    ``loss.deep_supervision_weights`` (checked against the model's outputs when first traced).
    With ``train=False`` it is never wrapped: evaluation sees only the full-resolution logits.
    """
    loss_fn = registry.lookup("losses", config.loss.name, **config.loss.kwargs.to_dict())
    if not (train and config.model.kwargs.get("deep_supervision", False)):
        return loss_fn
    weights = tuple(float(w) for w in config.loss.deep_supervision_weights)
    if weights and (min(weights) < 0 or sum(weights) <= 0):
        raise errors.ConfigError(
            f"loss.deep_supervision_weights={weights}: weights must be >= 0, not all 0."
        )
    ds_fn = compound.deep_supervision(loss_fn, weights or None)
    if not weights:
        return ds_fn

    def checked(logits_levels, labels, **kwargs):
        if len(logits_levels) != len(weights):
            raise errors.ConfigError(
                f"loss.deep_supervision_weights has {len(weights)} weights but model "
                f"{config.model.name!r} returns {len(logits_levels)} outputs in training; give "
                f"one per output (full resolution first) or () for nnU-Net's default."
            )
        return ds_fn(logits_levels, labels, **kwargs)

    if hasattr(ds_fn, "terms"):
        checked.terms = ds_fn.terms
    return checked


class _Run:
    """Everything set up for one workdir: data, mesh, jitted functions, state, checkpoints."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, *, for_training: bool):
        self.config = config
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        # -- task: data, evaluation and outputs (segmentation, LUNA16, ...) --
        # Process 0 generates the built-in data and builds the store; the others then reuse it.
        task_factory = registry.get(f"tasks.{config.task}")
        self.task = distributed.primary_first(lambda: task_factory(config), "medjax-prepare-data")
        self.channels = self.task.channels
        in_ch = config.model.kwargs.get("in_channels", self.channels)
        if in_ch != self.channels:
            raise errors.ConfigError(
                f"model.kwargs.in_channels={in_ch} but the data has {self.channels} channel(s)."
            )
        # -- mesh and sizes --
        self.mesh = mesh_lib.make_mesh(config.mesh)
        self.batch_sh = mesh_lib.batch_sharding(self.mesh)
        self.repl_sh = mesh_lib.replicated(self.mesh)
        mesh_lib.check_batch_size(config.train.batch_size, self.mesh, "train.batch_size")
        mesh_lib.check_batch_size(config.eval.batch_size, self.mesh, "eval.batch_size")
        n_train = self.task.num_train
        self.steps_per_epoch = config.train.steps_per_epoch or max(
            n_train // config.train.batch_size, 1
        )
        self.total_steps = self.steps_per_epoch * config.train.epochs
        # -- components --
        self.model = build_model(config)
        self.loss_fn = build_loss(config)
        self.augment_fn = augment_lib.compose(list(config.augment)) if config.augment else None
        self.tx, self.schedule = optim.make_optimizer(config, self.total_steps)
        if config.train.precision not in step_lib.PRECISIONS:
            raise errors.ConfigError(
                f"train.precision={config.train.precision!r}; "
                f"expected one of {list(step_lib.PRECISIONS)}."
            )
        # -- state, born sharded --
        input_shape = self.task.input_shape()
        init = lambda key: state_lib.create_train_state(self.model, self.tx, input_shape, key)  # noqa: E731
        self.init_key = jax.random.key(config.seed)
        abstract = jax.eval_shape(init, self.init_key)
        self.state_sh = mesh_lib.state_sharding(abstract, self.mesh)
        self.abstract_state = ckpt_lib.abstract_with_shardings(abstract, self.state_sh)
        self._init = jax.jit(init, out_shardings=self.state_sh)
        # -- jitted steps --
        eval_fns = self.task.make_eval_fns(build_loss(config, train=False), config.train.precision)
        self.eval_fns = {
            name: jax.jit(
                fn, in_shardings=(self.state_sh, self.batch_sh), out_shardings=self.batch_sh
            )
            for name, fn in eval_fns.items()
        }
        if for_training:
            train_step = step_lib.make_train_step(
                self.loss_fn,
                self.augment_fn,
                self.schedule,
                precision=config.train.precision,
                grad_accum_steps=config.train.grad_accum_steps,
            )
            self.train_step = jax.jit(
                train_step,
                in_shardings=(self.state_sh, self.batch_sh, self.repl_sh),
                out_shardings=(self.state_sh, self.repl_sh),
                donate_argnums=0,
            )
        self.ckpt = ckpt_lib.Checkpointer(
            os.path.join(self.workdir, "ckpt"), config.ckpt, read_only=not for_training
        )

    def fresh_state(self) -> state_lib.TrainState:
        return self._init(self.init_key)

    def evaluate(self, state, split: str, *, keep_predictions: bool = False):
        return self.task.evaluate(
            self.eval_fns,
            state,
            split,
            mesh=self.mesh,
            batch_size=self.config.eval.batch_size,
            keep_predictions=keep_predictions,
        )


def _init_from(
    run: _Run, state: state_lib.TrainState, path: str, params_only: bool
) -> state_lib.TrainState:
    """Copies every parameter (and BN statistic) whose path and shape match from another run.

    Parameters that do not match (a replaced head) keep their fresh initialisation; both lists
    are logged. With ``params_only=False`` the optimiser state and step come along too when the
    whole state matches.
    """
    ckpt_dir, step = ckpt_lib.find_checkpoint(path)
    other = ckpt_lib.Checkpointer(ckpt_dir, run.config.ckpt, read_only=True)
    step = other.best_step() if step is None else step
    if step is None:
        raise errors.CheckpointError(f"init_from={path!r}: no checkpoint in {ckpt_dir}.")
    try:
        if not params_only:
            try:
                restored, _ = other.restore(step, run.abstract_state)
                logging.info("init_from: continued from %s step %d (full state)", ckpt_dir, step)
                return restored
            except errors.CheckpointError as e:
                logging.warning(
                    "init_from: full state does not match (%s); loading parameters only.", e
                )
        loaded = other.restore_raw(step)
    finally:
        other.close()

    def merge(fresh: Any, old: Any, name: str) -> Any:
        fresh_flat = traverse_util.flatten_dict(jax.device_get(fresh), sep="/")
        old_flat = traverse_util.flatten_dict(old or {}, sep="/")
        merged, skipped = {}, []
        for k, v in fresh_flat.items():
            if k in old_flat and np.shape(old_flat[k]) == np.shape(v):
                merged[k] = np.asarray(old_flat[k], v.dtype)
            else:
                merged[k] = v
                skipped.append(k)
        print(
            f"medjax: init_from {path} (step {step}): loaded {len(merged) - len(skipped)} "
            f"{name}, kept fresh: {skipped or 'none'}",
            file=sys.stderr,
        )
        if len(skipped) == len(merged):
            raise errors.CheckpointError(f"init_from={path!r}: no {name} matches this model.")
        return traverse_util.unflatten_dict(merged, sep="/")

    params = merge(state.params, loaded.get("params"), "params")
    stats = (
        merge(state.batch_stats, loaded.get("batch_stats"), "batch_stats")
        if state.batch_stats
        else state.batch_stats
    )
    new = state.replace(params=params, batch_stats=stats)
    return jax.tree.map(distributed.global_from_host, new, run.state_sh)


# ---------------------------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------------------------


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    on_validation: Callable[[int, int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Trains (resuming from ``workdir`` if it holds a checkpoint), validates, checkpoints.

    Args:
      config: the experiment config.
      workdir: the run folder (the run's identity: a checkpoint there is resumed).
      on_validation: called as ``on_validation(epoch, step, metrics)`` (1-based epoch, the
        ``val/...`` metrics) right after each validation is written; a sweep reports to its
        scheduler through it.

    Returns:
      A summary: best metric and step, final step, checkpoint folder, last validation metrics.
    """
    run = _Run(config, workdir, for_training=True)
    profile = _profile_window(config.train.profile_steps, run.total_steps)  # before any work
    writer = metric_writer.MetricWriter(run.workdir)
    if distributed.is_main():
        with open(os.path.join(run.workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=1))
        # The resolved preprocessing plan travels with the run: --mode=predict reads it.
        from medjax.predict import plan as plan_lib

        plan_lib.record_plan(run.task, config, run.workdir)
    # -- state: resume > init_from > fresh --
    state = run.fresh_state()
    data_state = None
    start_step = 0
    latest = run.ckpt.latest_step()
    if latest is not None:  # the newest intact checkpoint (damaged ones: warned and skipped)
        latest, state, data_state = run.ckpt.restore_intact(run.abstract_state)
        start_step = int(jax.device_get(state.step))
        logging.info("Resuming from %s at step %d", run.ckpt.directory, start_step)
        _say(f"medjax: resuming {run.workdir} from step {start_step}")
    elif config.init_from:
        state = _init_from(run, state, config.init_from, config.init_params_only)
    if start_step == 0:
        writer.write_text(0, "config", "```\n" + str(config) + "\n```")
        writer.write_hparams(_flat_hparams(config))
    # -- baseline, once per run --
    baseline = run.task.baseline(config.data.val_split)
    writer.write_scalars(start_step, {f"val/{k}": v for k, v in baseline.items()})

    # -- data iterator, positioned after the last batch the restored state saw --
    dataset = run.task.train_dataset(global_batch_size=config.train.batch_size, seed=config.seed)
    it = pipeline.TrainIterator(dataset, run.batch_sh)
    if data_state is not None:
        it.set_state(data_state)
    # Made and placed before the transfer guard: the step takes it replicated.
    # (made by a jitted function: device_put cannot reach other processes' devices).
    base_key = jax.jit(lambda: jax.random.key(config.seed + 1), out_shardings=run.repl_sh)()

    best = {"value": None, "step": None}
    if latest is not None:
        best_step = run.ckpt.best_step()
        if (
            best_step is not None
            and (m := run.ckpt.metrics(best_step))
            and config.ckpt.monitor in m
        ):
            best = {"value": m[config.ckpt.monitor], "step": best_step}
    early = _EarlyStopping(config.train.early_stopping)
    last_val: dict[str, float] = {}
    step = start_step
    pending: list[dict[str, jax.Array]] = []
    t_log, step_log = time.time(), step
    tracing = False
    try:
        start_epoch = step // run.steps_per_epoch
        for epoch in range(start_epoch, config.train.epochs):
            epoch_end = (epoch + 1) * run.steps_per_epoch
            epoch_start_time, epoch_start_step = time.time(), step
            # The guard makes every host<->device copy in the hot loop explicit.
            with jax.transfer_guard("disallow"):
                while step < epoch_end:
                    if profile and step == profile[0]:
                        jax.profiler.start_trace(os.path.join(run.workdir, "profile"))
                        tracing = True
                    batch = next(it)
                    state, metrics = run.train_step(state, batch, base_key)
                    pending.append(metrics)
                    step += 1
                    if tracing and step == profile[1]:
                        jax.block_until_ready(state)
                        jax.profiler.stop_trace()
                        tracing = False
                    if step % config.train.log_every_steps == 0 or step == epoch_end:
                        scalars = _mean_metrics(pending, step)
                        pending = []
                        now = time.time()
                        scalars["steps_per_sec"] = (step - step_log) / max(now - t_log, 1e-9)
                        scalars["samples_per_sec"] = (
                            scalars["steps_per_sec"] * config.train.batch_size
                        )
                        t_log, step_log = now, step
                        writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
                        _progress(
                            epoch,
                            config.train.epochs,
                            step - epoch_start_step,
                            run.steps_per_epoch,
                            time.time() - epoch_start_time,
                            scalars["loss"],
                        )
            _say("")
            is_last = epoch + 1 == config.train.epochs
            if (epoch + 1) % config.train.val_every == 0 or is_last:
                last_val, _, preds = run.evaluate(
                    state,
                    config.data.val_split,
                    keep_predictions=_wants_images(config, epoch, is_last),
                )
                last_val = {f"val/{k}": v for k, v in last_val.items()}
                writer.write_scalars(step, last_val)
                if on_validation is not None:
                    on_validation(epoch + 1, step, last_val)
                if config.schedule.name == "plateau":  # before the save: checkpoints carry it
                    state = _step_plateau(run, state, last_val)
                writer.write_images(
                    step, run.task.images(config.data.val_split, preds, config.log.num_images)
                )
                _say(
                    f"epoch {epoch + 1}: " + ", ".join(f"{k}={v:.4f}" for k, v in last_val.items())
                )
                mon = last_val.get(config.ckpt.monitor)
                if mon is not None and (
                    best["value"] is None or _better(mon, best["value"], config.ckpt.mode)
                ):
                    best = {"value": mon, "step": step}
            # The rate the next epoch starts with (after any plateau reduction), once per epoch.
            lr_epoch = optim.effective_lr(run.schedule, state.opt_state, step)
            writer.write_scalars(step, {"train/lr_epoch": lr_epoch})
            if (epoch + 1) % config.ckpt.every_epochs == 0 or is_last:
                run.ckpt.save(step, state, it.get_state(), metrics=last_val or None)
            writer.flush()
            if early.should_stop(last_val):
                _say(f"medjax: early stopping after epoch {epoch + 1}")
                if not (epoch + 1) % config.ckpt.every_epochs == 0:
                    run.ckpt.save(step, state, it.get_state(), metrics=last_val or None)
                break
    except BaseException:
        run.ckpt.close()  # waits for pending saves: the last good checkpoint stays whole
        raise
    finally:
        if tracing:  # stopped early (early stopping, an error) inside the profile window
            jax.profiler.stop_trace()
        it.close()
        writer.close()
    run.ckpt.wait()
    summary = {
        "workdir": run.workdir,
        "final_step": step,
        "best_metric": config.ckpt.monitor,
        "best_value": best["value"],
        "best_step": best["step"],
        "checkpoints": run.ckpt.directory,
        "baseline": baseline,
        **last_val,
    }
    run.ckpt.close()
    _print_summary(summary)
    return summary


def _profile_window(steps: Any, total_steps: int) -> tuple[int, ...]:
    """``train.profile_steps`` as ``(start, stop)`` steps to trace, or ``()`` for none."""
    window = tuple(steps or ())
    if window and not (
        len(window) == 2
        and all(isinstance(s, int) for s in window)
        and 0 <= window[0] < window[1] <= total_steps
    ):
        raise errors.ConfigError(
            f"train.profile_steps={window}: expected (start, stop) steps with "
            f"0 <= start < stop <= {total_steps} (the run's last step), or () for none."
        )
    return window


def _step_plateau(run: _Run, state: state_lib.TrainState, val_metrics: dict[str, float]):
    """Feeds one validation to the reduce-on-plateau tracker in the optimiser state.

    The tracker is four replicated scalars: it is fetched, stepped on the host by the pure
    ``optim.update_plateau`` and put back with the same sharding (outside the step loop).
    """
    cfg = run.config.schedule.plateau
    if cfg.monitor not in val_metrics:
        raise errors.ConfigError(
            f"schedule.plateau.monitor={cfg.monitor!r} is not a validation metric; "
            f"these are: {sorted(val_metrics)}."
        )
    old = optim.plateau_tracker(state.opt_state)
    new = optim.update_plateau(
        jax.device_get(old), val_metrics[cfg.monitor], cfg, run.config.optim.lr
    )
    new = optim.PlateauState(
        *(distributed.global_from_host(n, o.sharding) for n, o in zip(new, old, strict=True))
    )
    return state.replace(opt_state=optim.replace_plateau_tracker(state.opt_state, new))


def _mean_metrics(pending: list[dict[str, jax.Array]], step: int) -> dict[str, float]:
    host = jax.device_get(pending)  # one explicit fetch per log interval
    out = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
    for k in ("loss", "grad_norm"):
        if not math.isfinite(out[k]):
            raise errors.TrainingError(
                f"Non-finite {k}={out[k]} at step {step}: training diverged. Lower optim.lr, "
                f"enable optim.grad_clip_norm, or check the data. The last good checkpoint is kept."
            )
    return out


def _better(value: float, ref: float, mode: str) -> bool:
    return value > ref if mode == "max" else value < ref


def _wants_images(config: ml_collections.ConfigDict, epoch: int, is_last: bool) -> bool:
    every = config.log.images_every
    return bool(config.log.num_images) and every > 0 and ((epoch + 1) % every == 0 or is_last)


class _EarlyStopping:
    """Stops when ``monitor`` has not improved by ``min_delta`` for ``patience`` validations."""

    def __init__(self, cfg: ml_collections.ConfigDict):
        self.monitor, self.mode = cfg.monitor, cfg.mode
        self.patience, self.min_delta = cfg.patience, cfg.min_delta
        self.best: float | None = None
        self.bad = 0

    def should_stop(self, metrics: dict[str, float]) -> bool:
        if not self.monitor or not self.patience or self.monitor not in metrics:
            return False
        value = metrics[self.monitor]
        sign = 1.0 if self.mode == "max" else -1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.bad = value, 0
            return False
        self.bad += 1
        return self.bad >= self.patience


def _say(message: str) -> None:
    """Progress for the user: printed by the main process only."""
    if distributed.is_main():
        print(message, file=sys.stderr)


def _progress(epoch: int, epochs: int, done: int, total: int, elapsed: float, loss: float) -> None:
    if not distributed.is_main():
        return
    rate = done / max(elapsed, 1e-9)
    eta = (total - done) / max(rate, 1e-9)
    bar = "#" * int(20 * done / total) + "." * (20 - int(20 * done / total))
    print(
        f"\repoch {epoch + 1}/{epochs} [{bar}] {done}/{total} {rate:.2f} steps/s "
        f"ETA {eta:.0f}s loss {loss:.4f}",
        end="",
        file=sys.stderr,
        flush=True,
    )


def _print_summary(summary: dict[str, Any]) -> None:
    if not distributed.is_main():
        return
    lines = ["", "medjax: training finished"]
    if summary["best_value"] is not None:
        lines.append(
            f"  best {summary['best_metric']} = {summary['best_value']:.4f} "
            f"at step {summary['best_step']}"
        )
    for k, v in summary["baseline"].items():
        lines.append(f"  val/{k} = {v:.4f}")
    lines.append(f"  checkpoints: {summary['checkpoints']}")
    lines.append(f"  view: tensorboard --logdir {summary['workdir']}")
    print("\n".join(lines), file=sys.stderr)


def _flat_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
    flat = traverse_util.flatten_dict(json.loads(config.to_json_best_effort()), sep=".")
    return {k: v for k, v in flat.items() if isinstance(v, (int, float, str, bool))}


# ---------------------------------------------------------------------------------------------
# Evaluation of a finished run.
# ---------------------------------------------------------------------------------------------


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Restores the best (or ``config.eval.step``) checkpoint and evaluates ``config.eval.split``.

    Writes ``<workdir>/eval/<split>-step<N>/``: ``metrics.json``, ``per_case.csv`` and, with
    ``eval.write_predictions``, one predicted mask per case (PNG for 2D, in the case's original
    size and geometry when the preprocessing props allow inverting it).
    """
    run = _Run(config, workdir, for_training=False)
    if config.eval.step < 0:  # the best intact checkpoint (damaged ones: warned and skipped)
        step, state, _ = run.ckpt.restore_intact(run.abstract_state, prefer="best")
    else:
        step, (state, _) = config.eval.step, run.ckpt.restore(config.eval.step, run.abstract_state)
    split = config.eval.split
    metrics, per_case, preds = run.evaluate(
        state, split, keep_predictions=config.eval.write_predictions
    )
    out_dir = os.path.join(run.workdir, "eval", f"{split}-step{step}")
    # Every process computed the same metrics (outputs are all-gathered); one writes them.
    if distributed.is_main():
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            json.dump({"step": step, "split": split, **metrics}, f, indent=1)
        with open(os.path.join(out_dir, "per_case.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(per_case[0]))
            w.writeheader()
            w.writerows(per_case)
        run.task.write_outputs(split, preds, per_case, out_dir)
    writer = metric_writer.MetricWriter(run.workdir)
    writer.write_scalars(step, {f"{split}/{k}": v for k, v in metrics.items()})
    writer.close()
    run.ckpt.close()
    _say(
        f"medjax: {split} metrics of step {step}: "
        + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
    )
    _say(f"medjax: wrote {out_dir}")
    return {"step": step, "dir": out_dir, **metrics}
