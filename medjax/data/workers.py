"""Worker processes (Grain loaders, preprocessing pools) that never outlive their parent.

A spawn worker blocks on its queues for ever once its parent is gone (it holds both ends of
every pipe, so it never reads end-of-file): after a SIGKILL of ``launch.py`` its Grain workers
stayed alive with parent 1, and so did a ``ProcessPoolExecutor``'s. Each worker therefore runs
``exit_with_parent``: a daemon thread that polls the worker's parent pid and kills the worker
once it changes.

``prctl(PR_SET_PDEATHSIG)`` does not do: it fires when the *thread* that started the worker
exits, and Grain starts its workers from prefetch threads that it replaces while the workers
live on (``set_state`` on resume): measured with Grain 0.2.18, the workers were killed there and
the trainer hung.
"""

from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing
import os
import signal
import threading
import time

import grain

_POLL_S = 0.5  # how soon an orphan goes; one getppid() per poll costs nothing


def exit_with_parent(parent_pid: int, *unused: int, poll_s: float = _POLL_S) -> None:
    """Makes this worker process exit (SIGKILL) once ``parent_pid`` is no longer its parent.

    Args:
      parent_pid: pid of the process that started this worker, recorded there (so a parent
        that died before this worker got here is noticed too).
      *unused: ignored; Grain's ``worker_init_fn`` passes ``(worker_index, worker_count)``.
      poll_s: seconds between two looks at the parent pid.
    """
    del unused

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGKILL)  # nothing to flush: the trainer is gone

    threading.Thread(target=watch, name="medjax-exit-with-parent", daemon=True).start()


def mp_prefetch(ds: grain.IterDataset, num_workers: int) -> grain.IterDataset:
    """``ds.mp_prefetch`` over ``num_workers`` processes that exit when this process dies.

    The dataset must be iterated by the process that calls this (the one whose pid the
    workers watch), as everywhere in medjax.
    """
    return ds.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=num_workers),
        worker_init_fn=functools.partial(exit_with_parent, os.getpid()),
    )


def process_pool(max_workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """A pool of ``max_workers`` spawn processes that exit when this process dies.

    Spawn, not fork: the parent may hold JAX or thread pools that a fork would copy.
    """
    return concurrent.futures.ProcessPoolExecutor(
        max_workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=exit_with_parent,
        initargs=(os.getpid(),),
    )
