r"""medjax against its PyTorch/MONAI peers, side by side on one machine (issue 7).

    python benchmarks/peers.py [--workloads=unet2d,unet3d,luna,loader] [--rounds=4] [--steps=8]
        [--sizes=cpu|issue] [--precisions=fp32,bf16] [--torch_modes=eager,compile] [--dry_run]

Train step (forward + backward + Adam, one fixed device-resident batch), for the same
architectures with equal parameter counts (printed and checked). ``--sizes=cpu`` (the default)
holds the CPU targets:

* ``unet2d``: MONAI ``BasicUNet`` 2D, features (16, 32, 64, 128, 256, 16), 1 -> 1 channel,
  sigmoid Dice loss, 64x64, batch 16 (the CPU size of ``configs/unet.py``);
* ``unet3d``: MONAI ``BasicUNet`` 3D, features (32, 32, 64, 128, 256, 32), 1 -> 2 channels,
  softmax Dice + CE, 16x48x48, batch 2 (the CPU patch of ``configs/unet3d.py``);
* ``luna``: the book's LunaModel (8..64 channels), cross-entropy, 16x32x32, batch 16
  (``configs/luna.py``).

``--sizes=issue`` holds issue 7's GPU table: ``unet2d`` at 320x320 batch 64, ``unet3d`` at
128^3 batch 2, ``luna`` at 32x48x48 batch 32 and ``luna256`` (the same at batch 256).

medjax's side is ``medjax.train.step.make_train_step`` jitted with the state donated, with
medjax's losses and, for the UNets, ``BasicUNet`` in ``peers_medjax.py``: MONAI's
architecture built from ``medjax.models.layers`` (so the convolutions run as ``impl="auto"``
picks: im2col for 3D on the CPU, XLA's convolution on a GPU). It runs on JAX's default
backend. The peers are PyTorch with MONAI's network and losses (LunaModel: the book's torch
code, in ``peers_torch.py``), on ``cuda`` when ``torch.cuda.is_available()`` (with
``cudnn.benchmark``, as for any fixed-shape training), else on the CPU; one side per
``--torch_modes`` entry:

* ``torch eager``: the module as is;
* ``torch compile``: ``torch.compile(model)`` in its default mode (inductor, no CUDA graphs,
  no max-autotune); the first step, which compiles, is timed apart as ``compile_s``. A side
  that fails to build or compile (no C++ compiler, out of memory) shows its error as its row
  and the others still run.

``--precisions``: ``fp32`` is each framework's default float32 math (on Ampere and later GPUs
both use TF32 for convolutions by default: XLA's default precision, torch's
``cudnn.allow_tf32``). ``bf16`` is medjax's ``train.precision=bfloat16`` (the step casts the
inputs and a copy of the float32 parameters to bfloat16; parameters, optimiser and loss stay
float32) against MONAI's AMP: ``torch.autocast(dtype=torch.bfloat16)`` around forward and loss,
float32 parameters (no GradScaler: bfloat16 does not need one). Each precision is its own group
of worker processes with its own ratios.

``loader`` compares medjax's Grain loader with MONAI's ``CacheDataset`` +
``RandCropByPosNegLabeld`` on the same NIfTI volumes (``peers_loader.py``).

Each side runs in its own long-lived worker process (one compile, one thread pool each, no
interference between JAX's and torch's pools); the parent asks them in turn, medjax then the
peers, ``--rounds`` times, so all see the same load. Each answer is the median step time of
``--steps`` steps; a row reports the best round of each side, then one ratio row
``medjax/<peer>`` per peer side: the ratio of the best rounds and the median of the per-round
ratios, with the load average (``/proc/loadavg``) at each round. The JSONL rows also carry each
side's device, compile time and peak device memory (None on the CPU).

On a GPU machine (the sides share the GPU, asked one at a time; medjax's worker gets
``XLA_PYTHON_CLIENT_PREALLOCATE=false`` unless set, so that JAX leaves memory to the peers)::

    pip install -e ".[bench]"
    python benchmarks/peers.py --sizes=issue --precisions=fp32,bf16 \
        --torch_modes=eager,compile --workloads=unet2d,unet3d,luna,luna256

Needs ``pip install -e .[bench]`` (torch, monai); without them it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import traceback
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import peers_medjax, peers_rows, peers_torch, peers_workloads, run_all  # noqa: E402
from medjax import xla_env  # noqa: E402

# The tables live in peers_workloads.py (both sides read them); these names stay here for
# callers of this module, as do the helpers peers_loader.py uses (torch_env, summarize).
WORKLOADS = peers_workloads.WORKLOADS
PRECISIONS = peers_workloads.PRECISIONS
TORCH_MODES = peers_workloads.TORCH_MODES
jax_env = peers_medjax.jax_env
torch_env = peers_torch.torch_env
summarize = peers_rows.summarize

_TAG = "@@peers "  # prefix of protocol lines on a worker's stdout (libraries may print too)


def loadavg() -> float:
    """The 1-minute load average (nan where /proc is missing)."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return float("nan")


# --- worker processes and the interleaving parent -----------------------------------------------


def worker_main(
    side: str,
    workload: str,
    impl: str,
    sizes: str = "cpu",
    precision: str = "fp32",
    torch_mode: str = "eager",
) -> None:
    """A worker process: build, say READY, then answer ``run N`` lines until ``quit``.

    ``workload`` is a key of ``WORKLOADS[sizes]`` (train step) or ``loader:<workers>``. A train
    step that fails to build or warm up (``torch.compile`` without a C++ compiler, out of
    memory) says ``{"ready": false, "error": ...}`` and exits: the parent reports it as the
    side's row and goes on with the other sides.
    """
    run_all.ensure_importable()
    if workload.startswith("loader:"):
        from benchmarks import peers_loader

        worker = peers_loader.make_worker(side, int(workload.split(":")[1]))
    else:
        try:
            if side == "medjax":
                worker = peers_medjax.MedjaxWorker(workload, impl, sizes, precision)
            else:
                worker = peers_torch.TorchWorker(workload, sizes, precision, torch_mode)
        except Exception as e:  # any failure becomes the side's row, not the run's end
            traceback.print_exc()  # the whole story on stderr; the row gets its start
            lines = [x.strip() for x in f"{type(e).__name__}: {e}".splitlines() if x.strip()]
            print(_TAG + json.dumps({"ready": False, "error": " | ".join(lines)[:300]}))
            sys.stdout.flush()
            return
    print(_TAG + json.dumps({"ready": True, **worker.info()}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        print(_TAG + json.dumps(worker.answer(int(cmd[1]))), flush=True)


class Worker:
    """The parent's handle on a worker process (line protocol over stdin/stdout)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=run_all.ROOT,
        )
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        for line in self.proc.stdout:
            if line.startswith(_TAG):
                return json.loads(line[len(_TAG) :])
        raise RuntimeError(f"worker {self.proc.args} exited with {self.proc.wait()}")

    def ask(self, line: str) -> dict[str, Any]:
        """Sends one command and returns the worker's JSON answer."""
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        """Asks the worker to quit and waits for it."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass  # it is exiting on its own (a worker that failed to build)
            self.proc.wait(timeout=60)


def interleave(
    sides: dict[str, Worker], rounds: int, command: str, value: Any
) -> dict[str, list[dict[str, Any]]]:
    """Asks every side in turn, ``rounds`` times; each answer gets ``value(answer)`` and load."""
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, worker in sides.items():
            load = loadavg()
            answer = worker.ask(command)
            out[name].append({"value": value(answer), "load": load, "answer": answer})
    return out


def side_specs(
    workload: str,
    sizes: str,
    precision: str,
    impl: str = "auto",
    also_impls: Sequence[str] = (),
    torch_modes: Sequence[str] = ("eager",),
    also_no_xla_defaults: bool = False,
) -> dict[str, tuple[list[str], dict[str, str]]]:
    """The sides of one train-step comparison, in the order they are asked.

    Returns:
      Side name -> (worker command-line arguments, worker environment): ``medjax``, then
      ``medjax[<impl>]`` for each of ``also_impls``, then ``medjax[no xla defaults]`` (medjax
      with ``MEDJAX_XLA_DEFAULTS=0``, see ``medjax/xla_env.py``) when asked, then
      ``torch <mode>`` for each mode.
    """
    common = [f"--workload={workload}", f"--sizes={sizes}", f"--worker_precision={precision}"]
    specs = {}
    for name, i in (("medjax", impl), *((f"medjax[{a}]", a) for a in also_impls)):
        specs[name] = (["--worker=medjax", *common, f"--impl={i}"], jax_env())
    if also_no_xla_defaults:
        env = {**jax_env(), "MEDJAX_XLA_DEFAULTS": "0"}
        # This process may have imported medjax (which added its flags to XLA_FLAGS): drop them.
        added = {f"--{name}={value}" for name, value, *_ in xla_env.CPU_DEFAULTS}
        env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if f not in added)
        specs["medjax[no xla defaults]"] = (["--worker=medjax", *common, f"--impl={impl}"], env)
    for mode in torch_modes:
        specs[f"torch {mode}"] = (["--worker=torch", *common, f"--worker_mode={mode}"], torch_env())
    return specs


def setting_of(workload: str, sizes: str, precision: str) -> str:
    """The ``setting`` of a train-step comparison, e.g. ``luna 16x32x32 b16 bf16``."""
    w = WORKLOADS[sizes][workload]
    return f"{workload} {'x'.join(map(str, w['spatial']))} b{w['batch']} {precision}"


def train_step_rows(
    workloads: Sequence[str],
    rounds: int,
    steps: int,
    impl: str = "auto",
    also_impls: Sequence[str] = (),
    *,
    sizes: str = "cpu",
    precisions: Sequence[str] = ("fp32",),
    torch_modes: Sequence[str] = ("eager",),
    also_no_xla_defaults: bool = False,
) -> list[dict[str, Any]]:
    """Interleaved medjax / torch train-step samples/s for each workload and precision.

    Each (workload, precision) is one group of worker processes (so one GPU holds one
    precision's sides at a time), with ratio rows ``medjax/torch <mode>`` for each torch mode.
    ``also_impls`` adds medjax sides with other conv formulations (``medjax[<impl>]``) to the
    same rounds: a before/after of a formulation change measured under the same load. A side
    that fails to start gets an ``error`` row; the others still run.

    Raises:
      RuntimeError: the sides' parameter counts differ (the networks are not the same).
    """
    rows = []
    for workload in workloads:
        batch = WORKLOADS[sizes][workload]["batch"]
        for precision in precisions:
            setting = setting_of(workload, sizes, precision)
            specs = side_specs(
                workload, sizes, precision, impl, also_impls, torch_modes, also_no_xla_defaults
            )
            sides, failed = {}, {}
            try:
                for name, (args, env) in specs.items():
                    try:
                        worker = Worker(args, env)
                    except RuntimeError as e:  # died before READY (crashed, killed)
                        failed[name] = {"error": str(e)}
                        continue
                    if worker.info["ready"]:
                        sides[name] = worker
                    else:
                        failed[name] = worker.info
                        worker.close()
                infos = {k: s.info for k, s in sides.items()}
                if len({info["params"] for info in infos.values()}) > 1:
                    raise RuntimeError(f"{setting}: parameter counts differ: {infos}")
                results = interleave(
                    sides,
                    rounds,
                    f"run {steps}",
                    lambda a, batch=batch: batch / statistics.median(a["times"]),
                )
            finally:
                for s in sides.values():
                    s.close()
            peers = [name for name in results if name.startswith("torch ")]
            if results:
                rows += peers_rows.summarize("peers", setting, "samples/s", results, infos, peers)
            rows += [peers_rows.error_row(setting, name, info) for name, info in failed.items()]
    return rows


def _names(
    text: str, allowed: Sequence[str], flag: str, parser: argparse.ArgumentParser
) -> list[str]:
    """Comma-separated ``text`` as a list, every name checked against ``allowed``."""
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        parser.error(f"{flag}: unknown {unknown}; expected some of {list(allowed)}")
    return names


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", default="unet2d,unet3d,luna,loader")
    parser.add_argument("--sizes", default="cpu", choices=sorted(WORKLOADS), help="shape set")
    parser.add_argument("--precisions", default="fp32", help="of fp32,bf16")
    parser.add_argument("--torch_modes", default="eager", help="of eager,compile")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds per workload")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per round")
    parser.add_argument("--impl", default="auto", help="medjax conv formulation (see layers)")
    parser.add_argument("--also_impls", default="", help="extra medjax sides, e.g. 'im2col'")
    parser.add_argument(
        "--also_no_xla_defaults",
        action="store_true",
        help="add a medjax side with MEDJAX_XLA_DEFAULTS=0 (before/after of medjax/xla_env.py)",
    )
    parser.add_argument("--loader_workers", default="0,2", help="worker counts for 'loader'")
    parser.add_argument("--out", default=run_all.RESULTS, help="JSONL file ('' for none)")
    parser.add_argument("--dry_run", action="store_true", help="list the comparisons, run none")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--worker_precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--worker_mode", default="eager", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(
            args.worker,
            args.workload,
            args.impl,
            args.sizes,
            args.worker_precision,
            args.worker_mode,
        )
    table = WORKLOADS[args.sizes]
    names = _names(args.workloads, [*table, "loader"], "--workloads", parser)
    precisions = _names(args.precisions, list(PRECISIONS), "--precisions", parser)
    modes = _names(args.torch_modes, TORCH_MODES, "--torch_modes", parser)
    also = [a for a in args.also_impls.split(",") if a]
    steps = [n for n in names if n in table]
    if args.dry_run:
        for workload in steps:
            print(f"{workload}: {table[workload]}")
            for precision in precisions:
                specs = side_specs(
                    workload,
                    args.sizes,
                    precision,
                    args.impl,
                    also,
                    modes,
                    args.also_no_xla_defaults,
                )
                print(f"  {setting_of(workload, args.sizes, precision)}:")
                for name, (worker_args, _) in specs.items():
                    print(f"    {name:<16} {' '.join(worker_args)}")
        if "loader" in names:
            print(f"loader: workers {args.loader_workers}")
        return
    missing = peers_torch.peers_available()
    if missing:
        print(f"peers skipped: {missing}")
        return
    run_all.ensure_importable()
    rows = train_step_rows(
        steps,
        args.rounds,
        args.steps,
        args.impl,
        also,
        sizes=args.sizes,
        precisions=precisions,
        torch_modes=modes,
        also_no_xla_defaults=args.also_no_xla_defaults,
    )
    if "loader" in names:
        from benchmarks import peers_loader

        workers = [int(w) for w in args.loader_workers.split(",")]
        rows += peers_loader.loader_rows(workers, rounds=args.rounds)
    run_all.write_rows(rows, args.out)
    run_all.print_table(rows, "medjax vs PyTorch/MONAI, interleaved (value: best round)")


if __name__ == "__main__":
    main()
