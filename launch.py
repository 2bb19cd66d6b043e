"""medjax entry point: ``python launch.py --config=configs/unet.py [--workdir=runs/x]``.

Flags only: parse, start JAX's multi-process runtime when the cluster says so, log devices,
call the trainer. ``--config.a.b=v`` overrides any config value; an unknown key is an error.
"""

from __future__ import annotations

import errno
import logging as py_logging
import os
import re
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

import medjax  # noqa: F401 - its XLA defaults (medjax/xla_env.py) precede any JAX backend

config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (path[:arg]).", lock_config=True
)
flags.DEFINE_string(
    "workdir", None, "Run folder (checkpoints, logs). Default: a new folder under runs/."
)
flags.DEFINE_enum(
    "mode", "train", ["train", "eval", "preprocess", "tune"], "What to do (tune: a sweep)."
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


# OSErrors a user fixes (space, permissions, a path through a file): one line, not a traceback.
_USER_ERRNOS = {
    errno.ENOSPC: "the disk is full: free space or choose another --workdir",
    errno.EDQUOT: "the disk quota is exceeded: free space or choose another --workdir",
    errno.EROFS: "the file system is read-only: choose a writable --workdir",
    errno.EACCES: "permission denied: choose a writable --workdir or fix its permissions",
    errno.EPERM: "permission denied: choose a writable --workdir or fix its permissions",
    errno.ENOTDIR: "a part of the path is a file, not a folder: fix the path",
}


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad ``--config`` or ``--config.a.b=v`` said in one line.

    ml_collections raises AttributeError/KeyError/TypeError/ValueError (and absl flags.Error)
    from deep inside the override machinery; the user only needs the flag and a hint.
    """
    try:
        return FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - every parse failure is the user's command line
        print(f"medjax error: {_flag_error(argv, e)}", file=sys.stderr)
        sys.exit(2)


def _flag_error(argv: list[str], e: Exception) -> str:
    text = str(e).replace("\\n", "\n").replace("\\'", "'")
    first = text.splitlines()[0] if text.strip() else type(e).__name__
    overrides = [a[2:].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    missing = re.match(r"""^['"]*([A-Za-z_][\w]*)['"]*$""", first.strip())
    if missing:
        name = missing.group(1)
        key = next((k for k in overrides if name in k.split(".")[1:]), None)
        if key is not None:
            guess = re.search(r'Did you mean "([^"]+)"', text)
            hint = f" (did you mean {guess.group(1)!r}?)" if guess else ""
            return (
                f"--{key}: {key[len('config.') :]!r} is not a config key{hint}; every key and "
                f"its default is in configs/common.py."
            )
    return f"bad command line ({type(e).__name__}): {first.strip()}"


def _quiet_orbax() -> None:
    """Drops orbax's own ERROR logs (with tracebacks) of a failed save: the failure reaches
    medjax as an exception and is said in one line. ``-v``/``--verbosity`` keeps them."""

    class _NoOrbax(py_logging.Filter):
        def filter(self, record: py_logging.LogRecord) -> bool:
            return "/orbax/" not in record.pathname

    logging.get_absl_logger().addFilter(_NoOrbax())


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


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.ERROR)  # orbax and grain are chatty; -v brings them back
        _quiet_orbax()
    if FLAGS.mode == "tune":
        # Before JAX starts a backend here: the trials (Ray workers) own the devices.
        return _tune()
    _maybe_initialize_distributed()
    import jax

    from medjax import distributed, errors, registry
    from medjax.train import loop

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
        if FLAGS.mode == "preprocess":
            # The task prepares its own data (segmentation/classification store, LUNA cutouts);
            # process 0 first, the others then reuse it.
            make_task = registry.get(f"tasks.{config.task}")
            task = distributed.primary_first(lambda: make_task(config), "medjax-preprocess")
            if distributed.is_main():
                print(task.describe())
        elif FLAGS.mode == "train":
            loop.train_and_evaluate(config, workdir)
            loop.evaluate(config, workdir)
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
        if e.errno not in _USER_ERRNOS:
            raise
        print(
            f"medjax error: {e.filename or workdir}: {_USER_ERRNOS[e.errno]}.",
            file=sys.stderr,
        )
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
