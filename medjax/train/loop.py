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
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import traverse_util

from medjax import distributed, errors, progress, registry
from medjax.augment import compose as augment_lib
from medjax.data import pipeline
from medjax.evaluate import runner
from medjax.losses import compound
from medjax.losses import regions as region_loss
from medjax.metrics import regions as region_lib
from medjax.models import spec as model_spec
from medjax.tasks import base
from medjax.tracking import system
from medjax.train import checkpoint as ckpt_lib
from medjax.train import hooks, metric_writer, optim
from medjax.train import mesh as mesh_lib
from medjax.train import state as state_lib
from medjax.train import step as step_lib
from medjax.train import workdir as workdir_lib

# ---------------------------------------------------------------------------------------------
# Components named by the config.
# ---------------------------------------------------------------------------------------------


def build_model(config: ml_collections.ConfigDict):
    """The model named by ``config.model`` (registry ``models.<name>``), see ``models.spec``."""
    return model_spec.build(config)


def build_loss(config: ml_collections.ConfigDict, *, train: bool = True):
    """The loss named by ``config.loss``.

    For training it is wrapped for deep supervision when the model has it, weighted by
    ``loss.deep_supervision_weights`` (checked against the model's outputs when first traced).
    With ``train=False`` it is never wrapped: evaluation sees only the full-resolution logits.
    """
    loss_fn = registry.lookup("losses", config.loss.name, **config.loss.kwargs.to_dict())
    regions = region_lib.parse(config.data.get("regions", ()))
    if regions:  # a sigmoid per label region (losses.regions)
        loss_fn = region_loss.with_regions(loss_fn, regions)
    if not (train and model_spec.deep_supervision(config)):
        return loss_fn
    weights = tuple(float(w) for w in config.loss.deep_supervision_weights)
    if weights and (min(weights) < 0 or sum(weights) <= 0):
        raise errors.ConfigError(
            f"loss.deep_supervision_weights={weights}: weights must be >= 0, not all 0."
        )
    ds_fn = compound.deep_supervision(loss_fn, weights or None)
    if not weights:

        def default_weighted(logits_levels, labels, **kwargs):
            if len(logits_levels) == 2:  # at trace time: said once per compilation
                logging.warning(
                    "model.deep_supervision=True with 2 outputs does nothing: nnU-Net's default "
                    "weights give the coarser one 0. Use a deeper model or set "
                    "loss.deep_supervision_weights, e.g. (0.67, 0.33)."
                )
            return ds_fn(logits_levels, labels, **kwargs)

        if hasattr(ds_fn, "terms"):
            default_weighted.terms = ds_fn.terms
        return default_weighted

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
        in_ch = model_spec.in_channels(config)
        if in_ch != self.channels:
            raise errors.ConfigError(
                f"model.in_channels={in_ch} but the data has {self.channels} channel(s)."
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

    def evaluate(self, state, split: str, *, keep_predictions: bool = False) -> base.EvalResult:
        """``state`` on every case of ``split``, through the one evaluation runner."""
        return runner.evaluate(
            self.task,
            self.eval_fns,
            state,
            split,
            batch_sharding=self.batch_sh,
            batch_size=self.config.eval.batch_size,
            keep_predictions=keep_predictions,
        )


def _init_from(
    run: _Run, state: state_lib.TrainState, path: str, params_only: bool
) -> state_lib.TrainState:
    """Copies every parameter (and BN statistic) whose path and shape match from another run.

    Parameters that do not match (a replaced head) keep their fresh initialisation; both lists
    are logged. With ``params_only=False`` the whole state comes along when it matches
    (parameters, batch statistics, optimiser moments), but the step and the schedule's counters
    restart at 0 (``_restart_schedule``): the new run's schedule runs from its start over the new
    run's epochs, instead of starting past the other run's end (a rate of 0).
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
                return _restart_schedule(restored, state)
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
        progress.say(
            f"medjax: init_from {path} (step {step}): loaded {len(merged) - len(skipped)} "
            f"{name}, kept fresh: {skipped or 'none'}"
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


def _restart_schedule(
    restored: state_lib.TrainState, fresh: state_lib.TrainState
) -> state_lib.TrainState:
    """``restored`` with the step, the schedule's step counters and the plateau tracker of
    ``fresh`` (all at their start); the moments (and Adam's bias-correction count, which
    belongs to them) stay as restored."""

    def is_schedule(x: Any) -> bool:
        return isinstance(x, (optax.ScaleByScheduleState, optim.PlateauState))

    opt_state = jax.tree.map(
        lambda new, old: new if is_schedule(new) else old,
        fresh.opt_state,
        restored.opt_state,
        is_leaf=is_schedule,
    )
    return restored.replace(step=fresh.step, opt_state=opt_state)


# ---------------------------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------------------------


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    on_validation: Callable[[int, int, dict[str, float]], None] | None = None,
    evaluate_after: bool = False,
) -> dict[str, Any]:
    """Trains (resuming from ``workdir`` if it holds a checkpoint), validates, checkpoints.

    Args:
      config: the experiment config.
      workdir: the run folder (the run's identity: a checkpoint there is resumed).
      on_validation: called as ``on_validation(epoch, step, metrics)`` (1-based epoch, the
        ``val/...`` metrics) right after each validation is written; a sweep reports to its
        scheduler through it.
      evaluate_after: then evaluate the best checkpoint on ``config.eval.split`` with the same
        built run (what ``--mode=train`` does; see ``evaluate``), its result under ``"eval"``.

    Returns:
      A summary: best metric and step, final step, checkpoint folder, last validation metrics.
    """
    fresh = not os.path.exists(workdir)
    workdir_lib.claim(workdir)  # one run per workdir: locked before anything touches it
    try:
        run = _Run(config, workdir, for_training=True)
        # A resume must use the config that started the run; then config.json is (re)written.
        resuming = run.ckpt.latest_step() is not None
        workdir_lib.check_and_save_config(config, run.workdir, resuming=resuming)
    except errors.MedjaxError:
        if fresh:  # refused before it started: no workdir holding only run.lock is left
            workdir_lib.abandon(workdir)
        raise
    cadences = hooks.Cadences.from_config(config, run.steps_per_epoch, run.total_steps)
    writer = metric_writer.MetricWriter(run.workdir, config)
    _record_run_files(run)
    # -- state: resume > init_from > fresh --
    val_hooks = hooks.validation_hooks(config)
    state = run.fresh_state()
    data_state = None
    start_step = 0
    latest = run.ckpt.latest_step()
    if latest is not None:  # the newest intact checkpoint (damaged ones: warned and skipped)
        latest, state, data_state = run.ckpt.restore_intact(run.abstract_state)
        start_step = int(jax.device_get(state.step))
        for hook in val_hooks:  # their state beside the metrics of the checkpoint
            hook.load_state_dict(run.ckpt.metrics(latest))
        logging.info("Resuming from %s at step %d", run.ckpt.directory, start_step)
        hooks.say(f"medjax: resuming {run.workdir} from step {start_step}")
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
    monitor = system.SystemMonitor(config.log.system_every_steps, writer)  # system/... scalars
    run_eta = progress.RunEta(run.total_steps, start_step)
    # Made and placed before the transfer guard: the step takes it replicated.
    # (made by a jitted function: device_put cannot reach other processes' devices).
    base_key = jax.jit(lambda: jax.random.key(config.seed + 1), out_shardings=run.repl_sh)()

    spe, epochs, profile = run.steps_per_epoch, config.train.epochs, cadences.profile
    last_val: dict[str, float] = {}
    step = start_step
    pending: list[dict[str, jax.Array]] = []
    t_log, step_log = time.time(), step
    t_epoch, step_epoch = t_log, step
    tracing = False
    try:
        while step < run.total_steps and not any(getattr(h, "stop", False) for h in val_hooks):
            # -- one step; the guard makes every host<->device copy in it explicit --
            if profile and step == profile[0]:
                jax.profiler.start_trace(os.path.join(run.workdir, "profile"))
                tracing = True
            with jax.transfer_guard("disallow"):
                state, metrics = run.train_step(state, monitor.next(it, step), base_key)
            pending.append(metrics)
            step += 1
            epoch = (step - 1) // spe  # 0-based epoch of this step
            if tracing and step == profile[1]:
                jax.block_until_ready(state)
                jax.profiler.stop_trace()
                tracing = False
            # -- periodic actions --
            if cadences.log(step):
                scalars = _mean_metrics(pending, step)
                pending = []
                now = time.time()
                scalars["steps_per_sec"] = (step - step_log) / max(now - t_log, 1e-9)
                scalars["samples_per_sec"] = scalars["steps_per_sec"] * config.train.batch_size
                t_log, step_log = now, step
                writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
                hooks.progress(
                    epoch, epochs, step - step_epoch, spe, now - t_epoch, scalars["loss"]
                )
            if not cadences.epoch_end(step):
                continue
            hooks.say("  " + run_eta.line(step))  # ends the epoch's progress line
            if cadences.validate(step):
                last_val, state = _validate(run, state, step, writer, val_hooks, cadences)
                if on_validation is not None:
                    on_validation(epoch + 1, step, last_val)
                hooks.say(
                    f"epoch {epoch + 1}: " + ", ".join(f"{k}={v:.4f}" for k, v in last_val.items())
                )
            # The rate the next epoch starts with (after any plateau reduction), once per epoch.
            lr_epoch = optim.effective_lr(run.schedule, state.opt_state, step)
            writer.write_scalars(step, {"train/lr_epoch": lr_epoch})
            stop = any(getattr(h, "stop", False) for h in val_hooks)
            if cadences.checkpoint(step) or stop:
                saved = {**last_val}
                for hook in val_hooks:
                    saved.update(hook.state_dict())
                run.ckpt.save(step, state, it.get_state(), metrics=saved or None)
            writer.flush()
            if stop:
                hooks.say(f"medjax: early stopping after epoch {epoch + 1}")
                break
            t_epoch, step_epoch = time.time(), step
    except BaseException:
        run.ckpt.close()  # waits for pending saves: the last good checkpoint stays whole
        raise
    finally:
        if tracing:  # stopped early (early stopping, an error) inside the profile window
            jax.profiler.stop_trace()
        it.close()
        writer.close()
    run.ckpt.wait()
    # The best step as --mode=eval picks it (the checkpointer's rule, ties included).
    best_step = run.ckpt.best_step()
    best_metrics = run.ckpt.metrics(best_step) if best_step is not None else None
    best_value = (best_metrics or {}).get(config.ckpt.monitor)
    summary = {
        "workdir": run.workdir,
        "final_step": step,
        "best_metric": config.ckpt.monitor,
        "best_value": best_value,
        "best_step": best_step if best_value is not None else None,
        "checkpoints": run.ckpt.directory,
        "baseline": baseline,
        **last_val,
    }
    _print_summary(summary)
    try:
        if evaluate_after:
            summary["eval"] = _evaluate_run(run)
    finally:
        run.ckpt.close()
    return summary


def _record_run_files(run: _Run) -> None:
    """The resolved preprocessing plan in the workdir (main process): ``plan.json``, which
    ``--mode=predict`` reads (``config.json`` is written by ``workdir.check_and_save_config``)."""
    if distributed.is_main():
        from medjax.predict import plan as plan_lib

        plan_lib.record_plan(run.task, run.config, run.workdir)


def _validate(
    run: _Run,
    state: state_lib.TrainState,
    step: int,
    writer: metric_writer.MetricWriter,
    val_hooks: list,
    cadences: hooks.Cadences,
) -> tuple[dict[str, float], state_lib.TrainState]:
    """Evaluates the validation split, logs it, feeds the hooks (plateau may change the state).

    Returns the ``val/...`` metrics and the state.
    """
    config = run.config
    result = run.evaluate(state, config.data.val_split, keep_predictions=cadences.images(step))
    val = {f"val/{k}": v for k, v in result.metrics.items()}
    writer.write_scalars(step, val)
    for hook in val_hooks:  # before the save: checkpoints carry their state
        state = hook(state, val)
    writer.write_images(step, run.task.images(config.data.val_split, result, config.log.num_images))
    return val, state


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
    progress.say("\n".join(lines))


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
    try:
        return _evaluate_run(run)
    finally:
        run.ckpt.close()


def _evaluate_run(run: _Run) -> dict[str, Any]:
    """``evaluate`` on an already built run (a finished training run reuses its own)."""
    config = run.config
    if config.eval.step < 0:  # the best intact checkpoint (damaged ones: warned and skipped)
        step, state, _ = run.ckpt.restore_intact(run.abstract_state, prefer="best")
    else:
        step, (state, _) = config.eval.step, run.ckpt.restore(config.eval.step, run.abstract_state)
    split = config.eval.split
    from medjax.plan import postprocessing  # lazy: medjax.plan's planner imports the trainer's

    # The run's chosen post-processing (<workdir>/postprocessing.json, eval.postprocess):
    # metrics and written predictions are then those of the post-processed label maps.
    post = postprocessing.for_eval(config, run.workdir)
    task = run.task
    if post is not None:
        task = postprocessing.evaluation_task(task, post[1], model_spec.num_classes(config))
    result = runner.evaluate(
        task,
        run.eval_fns,
        state,
        split,
        batch_sharding=run.batch_sh,
        batch_size=config.eval.batch_size,
        keep_predictions=config.eval.write_predictions,
    )
    metrics, per_case = result.metrics, result.per_case
    out_dir = os.path.join(run.workdir, "eval", f"{split}-step{step}")
    flags = {"postprocessed": post is not None, **({"postprocessing": post[0]} if post else {})}
    # Every process computed the same metrics (outputs are all-gathered); one writes them.
    if distributed.is_main():
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            json.dump({"step": step, "split": split, **flags, **metrics}, f, indent=1)
        with open(os.path.join(out_dir, "per_case.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(per_case[0]) if per_case else ["id", "index"])
            w.writeheader()
            w.writerows(per_case)
        run.task.write_outputs(split, result, out_dir)
    writer = metric_writer.MetricWriter(run.workdir, config)
    writer.write_scalars(step, {f"{split}/{k}": v for k, v in metrics.items()})
    writer.write_artifacts(out_dir)
    writer.close()
    unlabelled = int(metrics.get("unlabelled_cases", 0))
    if per_case:
        hooks.say(
            f"medjax: {split} metrics of step {step}: "
            + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        )
    if unlabelled:
        hooks.say(
            f"medjax: {unlabelled} {split} case(s) have no reference label (e.g. a Decathlon "
            "imagesTs): predicted, not scored" + ("" if per_case else "; no metrics")
        )
    if post is not None:
        hooks.say(f"medjax: post-processed ({postprocessing.summary(post[1])}) by {post[0]}")
    hooks.say(f"medjax: wrote {out_dir}")
    return {"step": step, "dir": out_dir, **flags, **metrics}
