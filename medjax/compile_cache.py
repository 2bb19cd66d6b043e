"""JAX's persistent compilation cache for medjax's commands: compiled programs kept on disk.

Every start of a run compiles its train step, evaluation and prediction functions again: about
10 s of the 80 s built-in 3D run on 2 CPU cores, more for planned networks. ``enable`` points
JAX's persistent cache at ``<medjax cache>/jax`` (``$MEDJAX_CACHE``, else ``~/.cache/medjax``),
so a re-run, ``--mode=eval`` / ``predict`` of a trained run or the next seed of a sweep loads
them instead. Programs that compile in under a second are not stored (JAX's default). With the
``filelock`` package installed the cache is capped at ``MAX_BYTES`` (least recently used
entries go first); without it the cap cannot be enforced and the cache is unbounded.

JAX treats the cache as trusted code, so it lives in the user's own cache folder. A
``JAX_COMPILATION_CACHE_DIR`` the user set wins; ``MEDJAX_COMPILATION_CACHE=0`` turns it off.
The test suite sets its own (``tests/conftest.py``).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping

import jax

from medjax import xla_env

OPT_OUT = "MEDJAX_COMPILATION_CACHE"
MAX_BYTES = 4 * 2**30


def enable(environ: Mapping[str, str] | None = None) -> str | None:
    """Turns JAX's persistent compilation cache on for this process (see the module docstring).

    Call before the first compilation.

    Args:
      environ: the environment to read; ``os.environ`` when None.

    Returns:
      The cache folder in use (the user's own when set), or None when turned off.
    """
    environ = os.environ if environ is None else environ
    if xla_env.is_off(environ.get(OPT_OUT)):
        return None
    current = jax.config.jax_compilation_cache_dir
    if current:  # JAX_COMPILATION_CACHE_DIR or an earlier jax.config.update: theirs
        return current
    from medjax.data import synthetic

    path = os.path.join(synthetic.cache_dir(), "jax")
    jax.config.update("jax_compilation_cache_dir", path)
    if importlib.util.find_spec("filelock") is not None:
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return path
