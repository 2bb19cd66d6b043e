"""Hyperparameter sweeps on Ray Tune: ``run_sweep(config, workdir)`` (``launch.py --mode=tune``).

The search space is ``config.tune.params``, a tuple of ``"config.key=dist(args)"`` specs with
dist one of choice / uniform / loguniform / grid (``tune_space.py``). Each trial is the normal
``loop.train_and_evaluate`` on a copy of the config with the drawn values, in its own workdir
``<workdir>/trials/<trial id>`` (checkpoints, TensorBoard logs, ``metrics.jsonl`` and the trial's
console output in ``train.log``). It reports ``tune.metric`` to Ray Tune after every validation,
so ASHA can stop a poor trial early. Ray's experiment state lives in ``<workdir>/ray``: the same
command on the same workdir resumes an interrupted sweep (``Tuner.restore``), and a restarted
trial resumes from the checkpoint in its workdir. At the end the sweep writes
``<workdir>/trials.csv`` (one row per trial) and ``<workdir>/best_config.py``, a config file that
``launch.py --config=`` trains.

Ray is imported only inside the functions that need it: it is the optional ``tune`` extra.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from typing import Any

import ml_collections
from flax import traverse_util

from medjax import errors, progress, registry
from medjax.train import tune_results, tune_space

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------------------------------------
# One trial (runs in a Ray worker process).
# ---------------------------------------------------------------------------------------------


def _trial(values: dict[str, Any], base: ml_collections.ConfigDict, sweep_dir: str) -> None:
    """Trains ``base`` with ``values`` in the trial's workdir, reporting every validation."""
    from ray import tune

    from medjax.train import loop

    workdir = tune_results.trial_workdir(sweep_dir, tune.get_context().get_trial_id())
    os.makedirs(workdir, exist_ok=True)
    config = tune_space.apply_values(base, values)
    metric = base.tune.metric
    with open(os.path.join(workdir, "tune_params.json"), "w") as f:
        json.dump(values, f, indent=1)

    def report(epoch: int, step: int, metrics: dict[str, float]) -> None:
        if metric not in metrics:
            raise errors.ConfigError(
                f"tune.metric={metric!r} is not a validation metric of this run; it reports: "
                f"{', '.join(sorted(metrics))}."
            )
        tune.report({**metrics, "epoch": epoch, "step": step})

    # Trials run side by side: each one's progress bar and messages go to its own file.
    with (
        open(os.path.join(workdir, "train.log"), "a", buffering=1) as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        summary = loop.train_and_evaluate(config, workdir, on_validation=report)
    # Marks the trial as trained to the end (a trial ASHA stopped never gets here).
    with open(os.path.join(workdir, "tune_done.json"), "w") as f:
        json.dump({k: summary[k] for k in ("final_step", "best_value", "best_step")}, f)


def _trial_dirname(trial: Any) -> str:
    return trial.trial_id


# ---------------------------------------------------------------------------------------------
# The sweep.
# ---------------------------------------------------------------------------------------------


def _check_same_sweep(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuses to resume a sweep in ``workdir`` that was started with another config."""
    path = os.path.join(workdir, "sweep_config.json")
    now = json.loads(config.to_json_best_effort())
    if os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
        a, b = (traverse_util.flatten_dict(d, sep=".") for d in (before, now))
        if diff := sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)):
            raise errors.ConfigError(
                f"{workdir} holds a sweep of another config (it differs in {', '.join(diff)}); "
                "resume it with the same config or use a new --workdir."
            )
    else:
        with open(path, "w") as f:
            json.dump(now, f, indent=1)


def _init_ray(t: ml_collections.ConfigDict) -> bool:
    """Starts a local Ray (or joins ``RAY_ADDRESS``); returns whether this call started it."""
    import ray

    if ray.is_initialized():
        return False
    res = t.resources_per_trial
    env = {
        # Trials import medjax from this checkout, whatever their working directory.
        "PYTHONPATH": os.pathsep.join(filter(None, [_REPO_ROOT, os.environ.get("PYTHONPATH")])),
        # Relative paths in the config stay relative to where the sweep was started.
        "RAY_CHDIR_TO_TRIAL_DIR": "0",
    }
    if res.gpus == 0:
        env["JAX_PLATFORMS"] = "cpu"
    elif res.gpus < 1:
        # Trials share a GPU: JAX must not grab 75% of its memory up front.
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,  # each trial's output is in its train.log
        "logging_level": logging.ERROR,
        "runtime_env": {"env_vars": env},
    }
    if not os.environ.get("RAY_ADDRESS"):
        n = t.max_concurrent or 0
        kwargs["num_cpus"] = math.ceil(res.cpus * n) if n else os.cpu_count()
    ray.init(**kwargs)
    return True


def _progress_callback(metric: str) -> Any:
    from ray import tune

    class Progress(tune.Callback):
        """One line per reported validation and per failed trial, instead of Ray's tables."""

        def on_trial_result(self, iteration, trials, trial, result, **info):
            del iteration, trials, info
            value = result.get(metric)
            progress.say(
                f"medjax tune: trial {trial.trial_id} epoch {result.get('epoch')}: "
                f"{metric}={value:.4f}"
            )

        def on_trial_error(self, iteration, trials, trial, **info):
            del iteration, trials, info
            progress.say(f"medjax tune: trial {trial.trial_id} failed")

    return Progress()


def run_sweep(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) the sweep declared in ``config.tune``; see the module docstring.

    Args:
      config: the experiment config with its ``tune`` section.
      workdir: the sweep's folder: Ray's state, one workdir per trial, the summary.

    Returns:
      ``{"rows": [one dict per trial], "best": the best row, "csv": path, "best_config": path,
      "finished": False when the sweep was interrupted (rerun it to resume)}``.

    Raises:
      ConfigError: a bad ``tune`` section, or a sweep of another config in ``workdir``.
      MedjaxError: Ray Tune is not installed (the ``tune`` extra).
      TrainingError: no trial reported the metric.
    """
    params = tune_space.parse_space(config)
    try:
        from ray import tune
        from ray.tune import schedulers, search
        from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    except ImportError as e:
        raise errors.MedjaxError(
            f"--mode=tune runs on Ray Tune, which is not installed ({e}): "
            "pip install 'medjax[tune]'"
        ) from e
    import ray

    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    _check_same_sweep(config, workdir)
    # Build the dataset once here: concurrent trials would all generate the same cache.
    registry.get(f"tasks.{config.task}")(config)
    t = config.tune
    # Ray's TensorBoard copy of the metrics would sit beside each trial's own: only keep the
    # JSON and CSV results that Ray reads back. Ray's legacy reporter is the one verbose=0
    # silences (our callback prints one line per validation instead).
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    started = _init_ray(t)
    try:
        trainable = tune.with_resources(
            tune.with_parameters(_trial, base=config, sweep_dir=workdir),
            {"cpu": t.resources_per_trial.cpus, "gpu": t.resources_per_trial.gpus},
        )
        ray_dir = os.path.join(workdir, "ray")
        if tune.Tuner.can_restore(ray_dir):
            progress.say(f"medjax: resuming the sweep in {ray_dir}")
            tuner = tune.Tuner.restore(
                ray_dir, trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            scheduler = None
            if t.scheduler == "asha":
                scheduler = schedulers.ASHAScheduler(
                    time_attr="epoch",
                    max_t=tune_space.max_epochs(config, params),
                    grace_period=t.asha.grace_period,
                    reduction_factor=t.asha.reduction_factor,
                    # A trial at its last epoch finishes (and checkpoints) on its own.
                    stop_last_trials=False,
                )
            tuner = tune.Tuner(
                trainable,
                param_space=tune_space.ray_space(params),
                tune_config=tune.TuneConfig(
                    metric=t.metric,
                    mode=t.mode,
                    search_alg=search.BasicVariantGenerator(random_state=t.seed),
                    scheduler=scheduler,
                    num_samples=t.num_samples,
                    max_concurrent_trials=t.max_concurrent or None,
                    trial_dirname_creator=_trial_dirname,
                    # One worker process serves trial after trial: JAX is imported once.
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name="ray",
                    storage_path=workdir,
                    verbose=0,
                    callbacks=[
                        _progress_callback(t.metric),
                        JsonLoggerCallback(),
                        CSVLoggerCallback(),
                    ],
                ),
            )
        tuner.fit()
        # Read back from Ray's saved experiment state: it has every trial's status (pruned
        # trials are TERMINATED, those of an interrupted sweep are not) and reported history.
        analysis = tune.ExperimentAnalysis(ray_dir)
        frames = analysis.trial_dataframes
        rows = [
            tune_results.row(trial, frames.get(trial.trial_id), params, config, workdir)
            for trial in analysis.trials
        ]
    finally:
        if started:
            ray.shutdown()
    return tune_results.write_outputs(rows, params, config, workdir)


# ---------------------------------------------------------------------------------------------
# Outputs: the table of trials and the best config.
# ---------------------------------------------------------------------------------------------
