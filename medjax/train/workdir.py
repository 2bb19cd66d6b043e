"""One run per workdir: an exclusive lock, and a resume only with the config that started it.

The trainer calls ``claim(workdir)`` before it touches the workdir and
``check_and_save_config(config, workdir, resuming=...)`` once it knows whether it resumes:

1. **Lock.** Process 0 takes ``fcntl.flock`` on ``<workdir>/run.lock`` and writes who holds it
   (host, pid, start time) into it; the other processes wait for it at a barrier. A second run
   into the same workdir stops with one line naming the holder. The lock is the open file
   itself: it is released when the process exits, however it exits (a SIGKILLed run leaves no
   stale lock: the body stays, the lock does not). It is per process and re-entrant (train then
   eval in one ``launch.py``, or a test calling the trainer twice, hold it once).
2. **Same config.** When the workdir already holds a checkpoint (a resume), the saved
   ``config.json`` is compared with the new config: any difference outside ``MAY_CHANGE``
   (loss, optimiser, schedule, model, data, augmentation, seed, batch size, precision ...)
   refuses with a ``ConfigError`` listing ``key: old -> new``, unless
   ``train.allow_config_change=True`` (then the differences are printed as a warning).
3. ``config.json`` is (re)written only after both checks pass.

``MAY_CHANGE`` (documented in the README's resume section): the length of the run
(``train.epochs``; with a decaying schedule the rest of it is stretched to the new end), when
to validate, log, profile or stop early, what to keep (``ckpt`` counts), evaluation settings,
the device mesh, loader parallelism, the convolution formulation (same parameters), sweep
settings, and ``init_from`` (ignored when resuming).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import traverse_util
from jax.experimental import multihost_utils

from medjax import distributed, errors, progress

LOCK_FILE = "run.lock"

# Dotted keys (a trailing "." is a whole section) that a resumed run may change freely.
MAY_CHANGE = (
    "train.epochs",
    "train.val_every",
    "train.log_every_steps",
    "train.profile_steps",
    "train.early_stopping.",
    "train.allow_config_change",
    "ckpt.every_epochs",
    "ckpt.save_top_k",
    "ckpt.save_last",
    "log.",
    "eval.",
    "mesh.",
    "tune.",
    "data.num_workers",
    "data.read_threads",
    "data.prefetch_batches",
    "data.preprocess_workers",
    "model.conv_impl",
    "init_from",
    "init_params_only",
)

# workdir (real path) -> the open, locked file of this process.
_HELD: dict[str, Any] = {}


class WorkdirBusyError(errors.MedjaxError, RuntimeError):
    """Another live process is training into the same workdir."""


def claim(workdir: str) -> None:
    """Process 0 locks ``workdir`` for this run; the other processes wait for it.

    Call before anything reads or writes the workdir (opening the checkpoints for training
    removes unfinished saves: those of a live run must not be touched).

    Raises:
      WorkdirBusyError: another process holds the workdir (names its host, pid and start).
    """
    if jax.process_count() == 1:
        lock(workdir)
        return
    ok = 0
    if distributed.is_main():
        try:
            lock(workdir)
            ok = 1
        finally:  # the others wait here, and stop too when process 0 could not take it
            ok = int(multihost_utils.broadcast_one_to_all(np.int32(ok)))
    elif not int(multihost_utils.broadcast_one_to_all(np.int32(0))):
        raise WorkdirBusyError(f"Process 0 could not lock {workdir}; see its error.")


def check_and_save_config(
    config: ml_collections.ConfigDict, workdir: str, *, resuming: bool
) -> None:
    """``check_config``, then (process 0) writes ``<workdir>/config.json``.

    Raises:
      ConfigError: resuming with a different config without ``train.allow_config_change``.
    """
    check_config(config, workdir, resuming=resuming)
    if distributed.is_main():
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=1))


def workdir_key(workdir: str) -> str:
    return os.path.realpath(workdir)


def lock(workdir: str) -> None:
    """Takes the exclusive lock of ``workdir`` for this process (re-entrant); see the module doc.

    Raises:
      WorkdirBusyError: another process holds it.
    """
    key = workdir_key(workdir)
    if key in _HELD:
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    f = open(path, "a+")  # not "w": the holder's body must survive our failed attempt
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = _describe(f.read())
        f.close()
        raise WorkdirBusyError(
            f"{workdir} is in use by another run ({holder}); wait for it to finish, stop it, "
            f"or use another --workdir."
        ) from None
    f.seek(0)
    f.truncate()
    since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    json.dump({"host": socket.gethostname(), "pid": os.getpid(), "since": since}, f)
    f.flush()
    _HELD[key] = f  # kept open (and locked) until the process exits


def abandon(workdir: str) -> None:
    """Releases the lock of a run refused before it started, and (process 0) removes ``workdir``
    when the lock is all it holds (a fresh workdir that a config error refused stays absent)."""
    release(workdir)
    if not distributed.is_main() or not os.path.isdir(workdir):
        return
    files = [os.path.join(d, f) for d, _, names in os.walk(workdir) for f in names]
    if files != [os.path.join(workdir, LOCK_FILE)]:
        return  # anything else there is not ours to delete
    os.remove(files[0])
    for d, _, _ in sorted(os.walk(workdir), key=lambda t: -len(t[0])):  # deepest first
        os.rmdir(d)


def release(workdir: str) -> None:
    """Releases this process's lock of ``workdir`` (a no-op if it holds none)."""
    f = _HELD.pop(workdir_key(workdir), None)
    if f is not None:
        f.close()  # closing the last descriptor drops the flock


def check_config(config: ml_collections.ConfigDict, workdir: str, *, resuming: bool) -> None:
    """Refuses to resume ``workdir`` with a config that differs outside ``MAY_CHANGE``.

    Raises:
      ConfigError: naming each differing key as ``key: old -> new``.
    """
    path = os.path.join(workdir, "config.json")
    if not resuming or not os.path.exists(path):
        return
    try:
        with open(path) as f:
            old = _flat(json.load(f))
    except (OSError, ValueError) as e:
        progress.say(f"medjax: warning: cannot read {path} ({e}); not compared.")
        return
    new = _flat(json.loads(config.to_json_best_effort()))
    # Keys the saved config lacks are new in the schema (a newer medjax): not a change.
    diffs = [
        f"{k}: {old[k]!r} -> {new[k]!r}"
        for k in sorted(set(old) & set(new))
        if old[k] != new[k] and not _may_change(k)
    ]
    if not diffs:
        return
    listed = "; ".join(diffs)
    if config.train.allow_config_change:
        if distributed.is_main():
            progress.say(
                f"medjax: warning: resuming {workdir} with a changed config "
                f"(train.allow_config_change=True): {listed}"
            )
        return
    raise errors.ConfigError(
        f"{workdir} holds a run of a different config ({listed}). Resume it with the same "
        f"config, use a new --workdir (init_from={workdir!r} starts from its weights), or set "
        f"--config.train.allow_config_change=True to continue anyway."
    )


def _may_change(key: str) -> bool:
    return any(key == m or (m.endswith(".") and key.startswith(m)) for m in MAY_CHANGE)


def _flat(tree: dict) -> dict[str, Any]:
    return traverse_util.flatten_dict(tree, sep=".") if tree else {}


def _describe(body: str) -> str:
    try:
        info = json.loads(body)
        return f"host {info['host']}, pid {info['pid']}, since {info['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
