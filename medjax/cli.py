"""The ``medjax`` command (and ``python launch.py``): flags, subcommands, packaged configs.

    medjax train --config=unet3d:tiny --workdir=runs/x     # a packaged config by name
    medjax predict --workdir=runs/x --config.predict.input=scans/ --config.predict.output=out/
    python launch.py --config=configs/unet.py --mode=eval  # the same flags through launch.py

Subcommands ``train | eval | predict | export | preprocess | tune | plan | cv_summary |
choose_postprocessing | explain`` are ``--mode=<name>``;
both forms take the same flags. ``--config`` is a config file (``path[:arg]``) or the name of a
built-in config shipped with the package (``unet``, ``unet3d:tiny``, ... : the ``configs``
package installed beside ``medjax``). ``predict`` and ``export`` need no ``--config``: they use
the run's own ``<workdir>/config.json``.

Flags only: parse, start JAX's multi-process runtime when the cluster says so, log devices,
call the trainer. ``--config.a.b=v`` overrides any config value; an unknown key is an error.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

import medjax  # noqa: F401 - its XLA defaults (medjax/xla_env.py) precede any JAX backend
from medjax import cli_errors

config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (path[:arg]).", lock_config=True
)
flags.DEFINE_string(
    "workdir", None, "Run folder (checkpoints, logs). Default: a new folder under runs/."
)
flags.DEFINE_enum(
    "mode",
    "train",
    [
        "train",
        "eval",
        "preprocess",
        "tune",
        "predict",
        "export",
        "plan",
        "cv_summary",
        "choose_postprocessing",
        "explain",
    ],
    "What to do (tune: a sweep; predict: a trained --workdir on new data; export: a bundle of "
    "it; --config optional for predict/export; plan: print and record the planned "
    "patch/batch/UNet; cv_summary: collect the folds of <workdir>; choose_postprocessing: "
    "per-class post-processing from the validation predictions, <workdir>/postprocessing.json; "
    "explain: saliency maps of the best checkpoint).",
)
flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's id.")
flags.DEFINE_bool(
    "distributed",
    False,
    "Multi-process with JAX's own cluster detection (Cloud TPU pods, Kubernetes, SLURM, "
    "Open MPI); SLURM/Open MPI jobs with more than one task are detected without it.",
)
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def _maybe_initialize_distributed() -> None:
    import jax

    explicit = FLAGS.coordinator_address is not None
    # SLURM, Open MPI and cloud TPU environments are detected by JAX itself.
    cluster = any(
        v in os.environ for v in ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS")
    )
    if explicit:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    elif FLAGS.distributed:
        jax.distributed.initialize()
    elif (
        cluster
        and int(os.environ.get("SLURM_NTASKS", os.environ.get("OMPI_COMM_WORLD_SIZE", "2"))) > 1
    ):
        jax.distributed.initialize()


def _tune() -> None:
    """``--mode=tune``: a Ray Tune sweep (medjax/train/tune.py) instead of one run."""
    import jax

    from medjax import errors
    from medjax.train import tune

    # The driver only builds the dataset: JAX on CPU here leaves the accelerators to the trials.
    jax.config.update("jax_platforms", "cpu")

    workdir = FLAGS.workdir or os.path.join("runs", "tune-" + time.strftime("%Y%m%d-%H%M%S"))
    try:
        summary = tune.run_sweep(FLAGS.config, workdir)
    except errors.MedjaxError as e:
        print(f"medjax error: {e}", file=sys.stderr)
        sys.exit(2)
    if not summary["finished"]:
        sys.exit(130)  # interrupted (Ray Tune caught the Ctrl-C); the same command resumes


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.ERROR)  # orbax and grain are chatty; -v brings them back
        cli_errors.quiet_orbax()
    if FLAGS.mode == "tune":
        # Before JAX starts a backend here: the trials (Ray workers) own the devices.
        return _tune()
    from medjax import compile_cache

    compile_cache.enable()  # compiled steps on disk: a re-run or another mode skips compiling
    _maybe_initialize_distributed()
    import jax

    from medjax import distributed, errors, registry
    from medjax.data import splits
    from medjax.train import crossval, loop

    config = FLAGS.config
    workdir = FLAGS.workdir or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    logging.info(
        "JAX %s, process %d/%d, devices: %s",
        jax.__version__,
        jax.process_index(),
        jax.process_count(),
        jax.devices(),
    )
    try:
        # predict/export read the trained run's own config.json (already planned).
        if FLAGS.mode == "plan" or (FLAGS.mode not in ("predict", "export") and config.plan.auto):
            from medjax.plan import apply as plan_lib

            config = plan_lib.for_mode(config, workdir, FLAGS.mode, sys.argv)
            if config is None:
                return  # --mode=plan: printed and recorded
        if FLAGS.mode == "preprocess":
            # The task prepares its own data (segmentation/classification store, LUNA cutouts);
            # process 0 first, the others then reuse it.
            make_task = registry.get(f"tasks.{config.task}")
            task = distributed.primary_first(lambda: make_task(config), "medjax-preprocess")
            if distributed.is_main():
                print(task.describe())
        elif FLAGS.mode == "predict":
            from medjax.predict import runner

            if FLAGS.workdir is None:
                raise errors.ConfigError("--mode=predict needs --workdir=<trained run or bundle>.")
            runner.predict(config, FLAGS.workdir)
        elif FLAGS.mode == "export":
            from medjax.predict import bundle

            if FLAGS.workdir is None:
                raise errors.ConfigError("--mode=export needs --workdir=<trained run>.")
            out = config.predict.bundle or os.path.join(FLAGS.workdir or "", "bundle")
            out = bundle.export_bundle(FLAGS.workdir, out, checkpoint=config.predict.checkpoint)
            if config.log.mlflow:  # the training run's MLflow run gets the bundle as its model
                bundle.log_model(FLAGS.workdir, out, config)
            print(out)
        elif FLAGS.mode == "cv_summary":
            crossval.summarize(workdir, config.data.val_split)
        elif FLAGS.mode == "choose_postprocessing":
            crossval.choose_postprocessing(config, workdir)
        elif FLAGS.mode == "train" and splits.active_fold(config) == "all":
            crossval.train_folds(config, workdir)  # fold_<k>/ each, then cv_summary.json
        elif FLAGS.mode == "train":
            loop.train_and_evaluate(config, workdir, evaluate_after=True)
        elif FLAGS.mode == "explain":
            from medjax.explain import maps

            print(f"medjax: wrote {maps.explain(config, workdir)}", file=sys.stderr)
        else:
            if not os.path.isdir(os.path.join(workdir, "ckpt")):  # and never create it
                raise errors.CheckpointError(
                    f"--workdir={workdir}: no run there (no {os.path.join(workdir, 'ckpt')}); "
                    f"check the path, or train first."
                )
            loop.evaluate(config, workdir)
    except errors.MedjaxError as e:
        # One clear line for bad input, config or checkpoints; tracebacks are for bugs.
        print(f"medjax error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        line = cli_errors.os_error_line(e, workdir)
        if line is None:
            raise
        print(f"medjax error: {line}", file=sys.stderr)
        sys.exit(2)


SUBCOMMANDS = (
    "train",
    "eval",
    "predict",
    "export",
    "preprocess",
    "tune",
    "plan",
    "cv_summary",
    "choose_postprocessing",
    "explain",
)


def packaged_config(name: str) -> str | None:
    """The file of built-in config ``name`` (``unet3d`` -> ``.../configs/unet3d.py``), or None."""
    import importlib.util

    if not name.replace("_", "").isalnum():
        return None
    spec = importlib.util.find_spec("configs")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, f"{name}.py")
        if os.path.isfile(path):
            return path
    return None


def prepare_argv(argv: list[str]) -> list[str]:
    """The command line as absl should parse it.

    ``medjax <subcommand> ...`` -> ``--mode=<subcommand>``; ``--config=<name>[:arg]`` of a
    packaged config -> its file; ``predict`` / ``export`` without ``--config`` -> the run's own
    config (``medjax/predict/run_config.py`` reads ``<workdir>/config.json``), so that
    ``--config.predict.*`` overrides still apply.
    """
    argv = list(argv)
    if len(argv) > 1 and argv[1] in SUBCOMMANDS:
        argv = [argv[0], f"--mode={argv[1]}", *argv[2:]]
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
            name, sep, rest = value.partition(":")
            path = None if os.path.exists(name) else packaged_config(name)
            if path is not None:
                argv[i] = f"--config={path}{sep}{rest}"
    modes = ("--mode=predict", "--mode=export")
    if any(m in argv for m in modes) and not any(a.startswith("--config=") for a in argv):
        from medjax.predict import run_config

        workdir = next((a.split("=", 1)[1] for a in argv if a.startswith("--workdir=")), "")
        argv = [argv[0], f"--config={run_config.__file__}:{workdir}", *argv[1:]]
    return argv


def main(argv: list[str] | None = None) -> None:
    """The console entry point (``[project.scripts] medjax``) and ``launch.py``'s."""
    argv = prepare_argv(sys.argv if argv is None else argv)
    if any(a in ("--help", "-h", "--helpshort") for a in argv[1:]):
        # absl lists the flags of the __main__ module only: an installed console script (or
        # launch.py) is not this module, so its --help would name no flag at all.
        print(__doc__ + "\nFlags:\n" + FLAGS.module_help(sys.modules[__name__]))
        raise SystemExit(0)
    try:
        app.run(_main, argv=argv, flags_parser=cli_errors.flags_parser(FLAGS))
    except SystemExit as e:
        # absl exits 1 after printing --help; asking for help is not a failure.
        if e.code == 1 and any(a in ("--help", "-h", "--helpshort", "--helpfull") for a in argv):
            raise SystemExit(0) from None
        raise


if __name__ == "__main__":
    main()
