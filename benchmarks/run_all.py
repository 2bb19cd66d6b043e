"""Runs every medjax benchmark and prints one table (issue 7).

    python benchmarks/run_all.py [--quick] [--skip=train_step,inference] [--ct]

Benchmarks, each also runnable alone (``python benchmarks/<name>.py --help``):

* ``conv``: forward + backward of single 3x3(x3) convolution layers, XLA's native convolution
  against the im2col formulation of ``medjax.models.layers`` (the ``auto`` choice's evidence);
* ``train_step``: ``benchmarks/train_step.py`` (step-only samples/s) for the 2D UNet, the 3D
  UNet and LunaModel configs, each in a subprocess (one compile cache and flag set per config);
* ``loader``: Grain patches/s per CPU core over a built store (``benchmarks/loader.py``);
* ``preprocess``: DICOM/NIfTI volumes/s and MB/s through ``build_store`` and memory-mapped patch
  reads/s from a small and a large stored volume (``benchmarks/preprocess.py``);
* ``inference``: sliding-window volumes/s of the 3D UNet (``benchmarks/inference.py``).

Every row is appended as one JSON line to ``benchmarks/results.jsonl`` (git-ignored) together
with the machine, versions and date (``environment()``); ``benchmarks/RESULTS.md`` keeps the
figures that matter. Timings take the best of repeats: the CPU machines are shared.

This module also holds the small helpers the other benchmark scripts share (``environment``,
``write_rows``, ``print_table``, ``best_time``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results.jsonl")
BENCHMARKS = ("conv", "train_step", "loader", "preprocess", "inference")


def ensure_importable() -> None:
    """Puts the repo root on ``sys.path`` and ``PYTHONPATH`` (Grain's spawned workers need it)."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if ROOT not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, paths)])


def environment() -> dict[str, Any]:
    """Machine, software versions and date, stored with every result row."""
    import jax
    import numpy as np

    device = jax.devices()[0]
    return {
        "device": f"{device.platform}:{getattr(device, 'device_kind', '')} x{jax.device_count()}",
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``fn`` in seconds (noise on a shared host only adds)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def write_rows(rows: Iterable[Mapping[str, Any]], out: str | None = RESULTS) -> None:
    """Appends rows (with ``environment()``) as JSON lines to ``out`` (None: do not write)."""
    if not out:
        return
    env = environment()
    with open(out, "a") as f:
        for row in rows:
            f.write(json.dumps({**env, **row}, default=str) + "\n")


def spread(values: Sequence[float]) -> str:
    """``"mean m sd s min a max b"`` of ``values`` (sample sd; 0 for one value)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return (
        f"mean {statistics.mean(values):.4f} sd {sd:.4f} min {min(values):.4f} "
        f"max {max(values):.4f}"
    )


def print_table(rows: Sequence[Mapping[str, Any]], title: str = "") -> None:
    """Prints ``benchmark | setting | value unit | extra`` rows as an aligned table."""
    if title:
        print(f"\n{title}")
    head = f"{'benchmark':<12} {'setting':<46} {'value':>12} {'unit':<16} extra"
    print(head)
    print("-" * len(head))
    for r in rows:
        value = r.get("value")
        text = f"{value:12.4g}" if isinstance(value, float | int) else f"{value!s:>12}"
        print(
            f"{r.get('benchmark', ''):<12} {r.get('setting', ''):<46} {text} "
            f"{r.get('unit', ''):<16} {r.get('extra', '')}"
        )


# --- conv: one convolution layer, fwd + bwd, xla vs im2col ---------------------------------------

CONV_LAYERS = (
    # (input shape [B, *S, C_in], C_out): the first and deepest layers of the three CPU configs.
    ((16, 64, 64, 16), 16),  # UNet 2D, level 0
    ((16, 8, 8, 128), 128),  # UNet 2D, level 3
    ((2, 16, 48, 48, 1), 32),  # BasicUNet 3D (benchmarks/peers.py), first layer
    ((2, 16, 48, 48, 32), 32),  # BasicUNet 3D, level 0
    ((2, 16, 48, 48, 64), 32),  # BasicUNet 3D, decoder level 0 (after the concat)
    ((2, 8, 24, 24, 32), 32),  # BasicUNet 3D, level 1
    ((2, 24, 64, 64, 1), 16),  # UNet 3D, first layer
    ((2, 24, 64, 64, 16), 16),  # UNet 3D, level 0
    ((2, 12, 32, 32, 32), 32),  # UNet 3D, level 1
    ((2, 3, 8, 8, 128), 128),  # UNet 3D, level 3
    ((16, 16, 32, 32, 1), 8),  # LunaModel block 1, first conv
    ((16, 16, 32, 32, 8), 8),  # LunaModel block 1, second conv
    ((16, 8, 16, 16, 16), 16),  # LunaModel block 2
    ((16, 2, 4, 4, 64), 64),  # LunaModel block 4
)


def _conv_ms(impl: str, x: Any, k: Any, repeats: int) -> float:
    """Best ms of one jitted forward + backward (input and kernel gradients) of a 'SAME' conv."""
    import jax
    import jax.numpy as jnp

    from medjax.models import conv_impls

    nd = x.ndim - 2
    numbers = ("NHWC", "HWIO", "NHWC") if nd == 2 else ("NDHWC", "DHWIO", "NDHWC")
    conv = conv_impls.conv_general_dilated_fn(impl)

    def loss(x, k):
        y = conv(x, k, (1,) * nd, "SAME", dimension_numbers=numbers)
        return jnp.sum(y * y)

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    jax.block_until_ready(step(x, k))
    return 1e3 * best_time(lambda: jax.block_until_ready(step(x, k)), repeats)


def conv_rows(repeats: int = 5, layers_: Sequence = CONV_LAYERS) -> list[dict[str, Any]]:
    """Forward + backward (input and kernel gradients) ms per layer for each formulation."""
    import jax.numpy as jnp
    import numpy as np

    from medjax.models import conv_impls

    rows = []
    rng = np.random.default_rng(0)
    for shape, cout in layers_:
        nd = len(shape) - 2
        x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
        k = jnp.asarray(0.1 * rng.standard_normal((*(3,) * nd, shape[-1], cout)), jnp.float32)
        impls = ("xla", "im2col") if nd == 2 else ("xla", "im2col", "depth2d")
        ms = {impl: _conv_ms(impl, x, k, repeats) for impl in impls}
        setting = f"{tuple(shape)}->{cout}"
        for impl, value in ms.items():
            rows.append(
                {
                    "benchmark": "conv",
                    "setting": f"{setting} {impl}",
                    "value": value,
                    "unit": "ms fwd+bwd",
                    "extra": f"speed-up over xla {ms['xla'] / value:.2f}x" if impl != "xla" else "",
                    "shape": list(shape),
                    "c_out": cout,
                    "impl": impl,
                    "auto": conv_impls.auto_conv_impl(nd),
                }
            )
    return rows


# --- train_step: the lead's script, one subprocess per config ------------------------------------

TRAIN_STEP_CONFIGS = ("configs/unet.py", "configs/unet3d.py", "configs/luna.py")


def train_step_rows(configs: Sequence[str], steps: int, out: str | None) -> list[dict[str, Any]]:
    """Runs ``benchmarks/train_step.py`` (step only) per config; its rows come back from JSONL."""
    import tempfile

    rows = []
    for config in configs:
        with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as tmp:
            cmd = [
                sys.executable,
                os.path.join(ROOT, "benchmarks", "train_step.py"),
                f"--config={config}",
                f"--steps={steps}",
                "--warmup=1",
                "--end_to_end=false",
                f"--out={tmp.name}",
            ]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode:
                print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                rows.append({"benchmark": "train_step", "setting": config, "value": "FAILED"})
                continue
            for line in tmp:
                r = json.loads(line)
                rows.append(
                    {
                        **r,
                        "benchmark": "train_step",
                        "setting": f"{r['config']} {tuple(r['patch'])} b{r['batch']} "
                        f"{r['precision']}",
                        "value": r["samples_per_s"],
                        "unit": "samples/s",
                        "extra": f"compile {r['compile_s']:.1f}s",
                    }
                )
    if out:
        with open(out, "a") as f:
            for r in rows:
                f.write(json.dumps(r, default=str) + "\n")
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip", default="", help=f"comma-separated subset of {BENCHMARKS}")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes")
    parser.add_argument("--ct", action="store_true", help="inference on a 512x512x300 volume")
    parser.add_argument("--out", default=RESULTS, help="JSONL file to append to ('' for none)")
    args = parser.parse_args(argv)
    ensure_importable()
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmarks {sorted(unknown)}; choose from {BENCHMARKS}")
    from benchmarks import inference, loader
    from benchmarks import preprocess as preprocess_bench

    rows: list[dict[str, Any]] = []
    if "conv" not in skip:
        conv = conv_rows(repeats=2 if args.quick else 5)
        write_rows(conv, args.out)
        rows += conv
    if "train_step" not in skip:
        rows += train_step_rows(TRAIN_STEP_CONFIGS, 3 if args.quick else 10, args.out)
    if "loader" not in skip:
        rows += loader.run(
            ("unet", "unet3d"), (0, 1, 2), batches=5 if args.quick else 20, out=args.out
        )
    if "preprocess" not in skip:
        rows += preprocess_bench.run(quick=args.quick, out=args.out)
    if "inference" not in skip:
        rows += inference.run(ct=args.ct, repeats=1 if args.quick else 2, out=args.out)
    env = environment()
    print_table(
        rows, f"medjax benchmarks on {env['device']} ({env['cpus']} CPUs), jax {env['jax']}"
    )


if __name__ == "__main__":
    main()
