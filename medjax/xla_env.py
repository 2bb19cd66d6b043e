"""XLA settings medjax applies before JAX starts its backends.

XLA reads ``XLA_FLAGS`` once, when the first backend starts, so these are set at
``import medjax`` (``medjax/__init__.py``), before anything can run on a device.

The one setting today is for the CPU. jaxlib 0.10 hands every convolution to the YNNPACK
library (``LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION`` in XLA's default list); XLA's own
(Eigen) convolution is much faster for the networks medjax trains. Train step, forward +
backward + Adam, 2 CPU cores, jax 0.10.2, median of 6 steps, measured in alternation with
and without the flag (benchmarks/RESULTS.md section 0):

* 2D BasicUNet 64x64 batch 16 (fwd + bwd only): 536-600 ms -> 328-351 ms;
* 3D BasicUNet 16x48x48 batch 2: 2008-2080 ms -> 897-908 ms;
* LunaModel 16x32x32 batch 16: 535-565 ms -> 289 ms.

Turning every YNNPACK fusion off (``=``) was slower than removing only the convolutions
(2D 340-381 ms, 3D 1000-1176 ms). The flag changes nothing on a GPU.

A user's own ``--xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` wins, and
``MEDJAX_XLA_DEFAULTS=0`` (or false/no/off) turns all of this off; another value warns.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import warnings
from collections.abc import MutableMapping

OPT_OUT = "MEDJAX_XLA_DEFAULTS"
_ON = ("1", "true", "yes", "on", "")
_OFF = ("0", "false", "no", "off")


def is_off(value: str | None) -> bool:
    """Whether an environment switch's value turns something off (``0/false/no/off``)."""
    return (value or "").strip().lower() in _OFF


# (flag, value, oldest and newest jaxlib (major, minor) it is known to). An XLA that does not
# know a flag or one of its values aborts the process at backend start, so a flag goes only to
# the jaxlib versions checked: 0.10 measured here; 0.11 (the GPU image's) has the same flag and
# enum value in its XLA source. A newer jaxlib gets nothing until someone checks it.
CPU_DEFAULTS: tuple[tuple[str, str, tuple[int, int], tuple[int, int]], ...] = (
    ("xla_cpu_experimental_ynn_fusion_type", "-individual_convolution", (0, 10), (0, 11)),
)


def _jaxlib_version() -> tuple[int, int] | None:
    """(major, minor) of the installed jaxlib, None when it is not installed or unreadable."""
    try:
        parts = importlib.metadata.version("jaxlib").split(".")
        return int(parts[0]), int(parts[1])
    except (importlib.metadata.PackageNotFoundError, ValueError, IndexError):
        return None


def _backends_started() -> bool:
    """Whether JAX has already started a backend (then XLA_FLAGS is read and fixed)."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    started = getattr(bridge, "backends_are_initialized", None)
    return bool(started and started())


def xla_defaults(environ: MutableMapping[str, str], jaxlib: tuple[int, int] | None) -> list[str]:
    """The ``--flag=value`` strings medjax would add to ``environ["XLA_FLAGS"]``.

    Args:
      environ: the process environment (or a copy); only read.
      jaxlib: the installed jaxlib's (major, minor); None adds nothing.

    Returns:
      The flags, in order; empty when ``MEDJAX_XLA_DEFAULTS=0`` or all are set by the user.
    """
    setting = environ.get(OPT_OUT, "1").strip().lower()
    if setting not in _ON + _OFF:
        warnings.warn(
            f"{OPT_OUT}={environ[OPT_OUT]!r} is not one of {_ON + _OFF}; medjax applies its "
            f"XLA defaults (set {OPT_OUT}=0 to turn them off).",
            stacklevel=2,
        )
    if setting in _OFF or jaxlib is None:
        return []
    current = environ.get("XLA_FLAGS", "")
    return [
        f"--{name}={value}"
        for name, value, oldest, newest in CPU_DEFAULTS
        if oldest <= jaxlib <= newest and f"--{name}=" not in current
    ]


def apply_xla_defaults(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Appends medjax's XLA defaults to ``XLA_FLAGS`` (see the module docstring).

    Called by ``import medjax``. If JAX has already started a backend the flags cannot take
    effect any more: it warns once and leaves the environment as it is.

    Args:
      environ: the environment to change; ``os.environ`` when None.

    Returns:
      The flags added.
    """
    environ = os.environ if environ is None else environ
    flags = xla_defaults(environ, _jaxlib_version())
    if not flags:
        return []
    if environ is os.environ and _backends_started():
        warnings.warn(
            f"medjax was imported after JAX started its backends, so its XLA defaults "
            f"({' '.join(flags)}) are not applied; CPU convolutions may be ~2x slower. Import "
            f"medjax before the first JAX computation, or set them in XLA_FLAGS yourself.",
            stacklevel=3,
        )
        return []
    environ["XLA_FLAGS"] = " ".join([environ.get("XLA_FLAGS", ""), *flags]).strip()
    return flags
