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
medjax's losses and, for the UNets, :class:`BasicUNet` below: MONAI's architecture built from
``medjax.models.layers`` (so the convolutions run as ``impl="auto"`` picks: im2col for 3D on
the CPU, XLA's convolution on a GPU). It runs on JAX's default backend. The peers are PyTorch
with MONAI's network and losses (LunaModel: the book's torch code, written out here), on
``cuda`` when ``torch.cuda.is_available()`` (with ``cudnn.benchmark``, as for any fixed-shape
training), else on the CPU; one side per ``--torch_modes`` entry:

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
import time
import traceback
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import run_all  # noqa: E402
from medjax import xla_env  # noqa: E402

_UNET2D = {"model": "unet", "features": (16, 32, 64, 128, 256, 16), "k": 1}
_UNET3D = {"model": "unet", "features": (32, 32, 64, 128, 256, 32), "k": 2}
# Size set -> workload -> shapes. ``model`` picks the networks (``unet``: BasicUNet with
# ``features`` and ``k`` output channels; ``luna``: LunaModel, 2 classes).
WORKLOADS: dict[str, dict[str, dict[str, Any]]] = {
    "cpu": {
        "unet2d": {**_UNET2D, "spatial": (64, 64), "batch": 16},
        "unet3d": {**_UNET3D, "spatial": (16, 48, 48), "batch": 2},
        "luna": {"model": "luna", "spatial": (16, 32, 32), "batch": 16},
    },
    "issue": {  # issue 7's GPU targets
        "unet2d": {**_UNET2D, "spatial": (320, 320), "batch": 64},
        "unet3d": {**_UNET3D, "spatial": (128, 128, 128), "batch": 2},
        "luna": {"model": "luna", "spatial": (32, 48, 48), "batch": 32},
        "luna256": {"model": "luna", "spatial": (32, 48, 48), "batch": 256},
    },
}
# --precisions name -> medjax's ``train.precision`` (torch: autocast to bfloat16 unless fp32).
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}
TORCH_MODES = ("eager", "compile")
# A round stops after 3 steps once it has run this long (3D steps take seconds on 2 cores).
MAX_ROUND_S = 30.0
_TAG = "@@peers "  # prefix of protocol lines on a worker's stdout (libraries may print too)


def peers_available() -> str | None:
    """None when torch and monai import; else the reason they do not."""
    try:
        import monai  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        return f"{e} (pip install -e '.[bench]')"
    return None


def torch_env(wait_policy: str = "PASSIVE") -> dict[str, str]:
    """The environment of a torch worker process.

    PyTorch's OpenMP threads spin while they wait by default; on a loaded 2-core machine the
    spinning threads steal the cores the working ones need: the 2D UNet step took 6.5-9.3 s
    with the default and 1.1-1.5 s with ``OMP_WAIT_POLICY=PASSIVE`` (load 9-11, 2026-11-24).
    The peer gets its best setting (an explicit ``OMP_WAIT_POLICY`` in the environment wins).
    """
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", wait_policy)
    return env


def jax_env() -> dict[str, str]:
    """The environment of a medjax worker process.

    JAX takes 75% of a GPU's memory when it starts; the torch sides, alive in their own
    processes on the same GPU, would then run out of memory. Without preallocation JAX's
    allocator grows as needed (an explicit ``XLA_PYTHON_CLIENT_PREALLOCATE`` wins; no effect
    on the CPU).
    """
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return env


def loadavg() -> float:
    """The 1-minute load average (nan where /proc is missing)."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return float("nan")


# --- medjax side: MONAI's BasicUNet from medjax layers ------------------------------------------


def _flax_basic_unet():
    """Builds the Flax module class lazily (benchmarks import this file without JAX work)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from medjax.models import layers

    class Convolution(nn.Module):
        """MONAI ``Convolution`` (conv 3 + bias -> InstanceNorm(affine) -> LeakyReLU 0.1)."""

        features: int
        impl: str = "auto"

        @nn.compact
        def __call__(self, x: jax.Array, train: bool) -> jax.Array:
            x = layers.conv(self.features, 3, x.ndim - 2, impl=self.impl)(x)
            # The norm computes in float32; back to the conv's dtype, as ``layers.ConvNormAct``
            # does, or under bfloat16 every later layer would promote to float32.
            x = layers.make_norm("instance", train)(x).astype(x.dtype)
            return nn.leaky_relu(x, 0.1)

    class TwoConv(nn.Module):
        features: int
        impl: str = "auto"

        @nn.compact
        def __call__(self, x: jax.Array, train: bool) -> jax.Array:
            x = Convolution(self.features, self.impl)(x, train)
            return Convolution(self.features, self.impl)(x, train)

    class Deconv2(nn.Module):
        """ConvTranspose(kernel 2, stride 2) with torch's parameters (one bias per channel),
        computed as ``layers.UpsampleMatmul`` does: one matmul, then depth-to-space."""

        features: int

        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            nd, cin = x.ndim - 2, x.shape[-1]
            kernel = self.param(
                "kernel", nn.initializers.lecun_normal(), (cin, 2**nd * self.features)
            )
            bias = self.param("bias", nn.initializers.zeros, (self.features,))
            b, spatial = x.shape[0], x.shape[1:-1]
            y = (x @ kernel).reshape(b, *spatial, *(2,) * nd, self.features)
            perm = [0, *(i for a in range(nd) for i in (1 + a, 1 + nd + a)), 1 + 2 * nd]
            return y.transpose(perm).reshape(b, *(2 * s for s in spatial), self.features) + bias

    class BasicUNet(nn.Module):
        """MONAI ``BasicUNet`` layer for layer (5 levels; spatial sizes divisible by 16)."""

        out_channels: int
        features: tuple
        impl: str = "auto"

        @nn.compact
        def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
            f = self.features
            x0 = TwoConv(f[0], self.impl)(x, train)
            skips = [x0]
            for level in range(1, 5):
                down = layers.max_pool2(skips[-1])
                skips.append(TwoConv(f[level], self.impl)(down, train))
            x = skips.pop()
            for level, out in zip((3, 2, 1, 0), (f[3], f[2], f[1], f[5]), strict=True):
                up = x.shape[-1] if level == 0 else x.shape[-1] // 2  # MONAI's ``halves``
                x = jnp.concatenate([skips[level], Deconv2(up)(x)], axis=-1)
                x = TwoConv(out, self.impl)(x, train)
            return nn.Dense(self.out_channels)(x)

    return BasicUNet


class MedjaxWorker:
    """One workload's medjax train step, compiled once; ``run(n)`` times ``n`` steps."""

    def __init__(
        self, workload: str, impl: str = "auto", sizes: str = "cpu", precision: str = "fp32"
    ):
        import jax
        import numpy as np
        import optax

        import medjax.losses  # noqa: F401 - registers the losses
        import medjax.models  # noqa: F401 - registers the models
        from medjax import registry
        from medjax.train import state as state_lib
        from medjax.train import step as step_lib

        w = WORKLOADS[sizes][workload]
        self.precision = precision
        rng = np.random.default_rng(0)
        shape = (w["batch"], *w["spatial"], 1)
        image = rng.standard_normal(shape).astype(np.float32)
        if w["model"] == "luna":
            model = registry.lookup("models", "luna")
            loss = registry.lookup("losses", "ce")
            label = rng.integers(0, 2, w["batch"]).astype(np.int32)
        else:
            model = _flax_basic_unet()(w["k"], w["features"], impl)
            # MONAI's DiceLoss(sigmoid=True) for K=1; DiceCELoss(softmax, background kept).
            if w["k"] == 1:
                loss = registry.lookup("losses", "dice")
            else:
                loss = registry.lookup("losses", "dice_ce", dice={"include_background": True})
            label = (image[..., 0] > 0.5).astype(np.int32)
        tx = optax.adam(1e-3)
        self.state = state_lib.create_train_state(model, tx, shape, jax.random.key(0))
        self.params = int(sum(x.size for x in jax.tree.leaves(self.state.params)))
        # bf16 exactly as training runs it (``config.train.precision``): the step casts.
        step = step_lib.make_train_step(
            loss, None, optax.constant_schedule(1e-3), precision=PRECISIONS[precision]
        )
        self.batch = jax.device_put({"image": image, "label": label})
        self.key = jax.random.key(1)
        t = time.perf_counter()
        self.step = jax.jit(step, donate_argnums=0).lower(self.state, self.batch, self.key)
        self.step = self.step.compile()
        self.compile_s = time.perf_counter() - t
        self.run(3)  # warm-up

    def run(self, n: int) -> list[float]:
        """Seconds per step for ``n`` steps, each ended with ``block_until_ready``."""
        import jax

        times = []
        for _ in range(n):
            if len(times) >= 3 and sum(times) > MAX_ROUND_S:
                break
            t = time.perf_counter()
            self.state, metrics = self.step(self.state, self.batch, self.key)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t)
        self.loss = float(metrics["loss"])
        return times

    def answer(self, n: int) -> dict[str, Any]:
        """The protocol's answer to ``run n``: step times and the last loss."""
        return {"times": self.run(n), "loss": self.loss}

    def info(self) -> dict[str, Any]:
        """Static facts about this worker (versions, device, parameter count, compile time and
        peak device memory so far: build and warm-up)."""
        import jax

        device = jax.devices()[0]
        stats = device.memory_stats() or {}  # None on the CPU
        return {
            "framework": "medjax",
            "version": f"jax {jax.__version__}",
            "device": f"{device.platform}:{device.device_kind}",
            "precision": self.precision,
            "params": self.params,
            "compile_s": self.compile_s,
            "peak_bytes": stats.get("peak_bytes_in_use"),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
        }


# --- peer side: PyTorch eager -----------------------------------------------------------------


def _torch_luna_model(spatial: Sequence[int]):
    """The book's LunaModel (p2ch11/model.py) in torch; the head's size follows the input."""
    import math

    import torch
    from torch import nn

    def block(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv3d(cin, cout, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv3d(cout, cout, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(2, 2),
        )

    head_in = 64 * math.prod(s // 16 for s in spatial)
    model = nn.Sequential(
        nn.BatchNorm3d(1), block(1, 8), block(8, 16), block(16, 32), block(32, 64),
        nn.Flatten(), nn.Linear(head_in, 2),
    )  # fmt: skip
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_out", nonlinearity="relu")
            _, fan_out = nn.init._calculate_fan_in_and_fan_out(m.weight)
            nn.init.normal_(m.bias, -1 / math.sqrt(fan_out), 1 / math.sqrt(fan_out))
    del torch
    return model


class TorchWorker:
    """One workload's PyTorch train step (eager or compiled, fp32 or bf16 autocast) on ``cuda``
    when there is one, else the CPU; ``run(n)`` times ``n`` steps."""

    def __init__(
        self, workload: str, sizes: str = "cpu", precision: str = "fp32", mode: str = "eager"
    ):
        import torch
        import torch.nn.functional as F
        from monai.losses import DiceCELoss, DiceLoss
        from monai.networks.nets import BasicUNet

        w = WORKLOADS[sizes][workload]
        self.precision, self.mode = precision, mode
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda":
            # Fixed shapes: let cuDNN pick its fastest kernels (the warm-up steps pay for it),
            # as MONAI's tutorials do for training; the peer gets its best setting.
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(w["batch"], 1, *w["spatial"], generator=g)
        if w["model"] == "luna":
            model = _torch_luna_model(w["spatial"])
            y = torch.randint(0, 2, (w["batch"],), generator=g)
            loss_fn = F.cross_entropy
        else:
            nd = len(w["spatial"])
            model = BasicUNet(
                spatial_dims=nd, in_channels=1, out_channels=w["k"], features=w["features"]
            )
            y = (x > 0.5).float()
            dice = (
                DiceLoss(sigmoid=True)
                if w["k"] == 1
                else DiceCELoss(softmax=True, to_onehot_y=True)
            )
            loss_fn = dice
        model = model.to(self.device).train()
        self.x, self.y, self.loss_fn = x.to(self.device), y.to(self.device), loss_fn
        # The optimiser holds the module's own parameters, which the compiled module shares.
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        self.params = int(sum(p.numel() for p in model.parameters()))
        self.model = torch.compile(model) if mode == "compile" else model
        # MONAI's AMP: autocast around forward and loss, float32 parameters and optimiser.
        self.autocast = torch.autocast(
            device_type=self.device.type, dtype=torch.bfloat16, enabled=precision != "fp32"
        )
        t = time.perf_counter()
        self.run(1)  # torch.compile compiles here (forward and backward graphs), not later
        self.first_step_s = time.perf_counter() - t
        self.run(3)  # warm-up (allocator, cuDNN / oneDNN kernel choices)

    def run(self, n: int) -> list[float]:
        """Seconds per step, each ended by a device synchronisation (see below)."""
        import torch

        times = []
        for _ in range(n):
            if len(times) >= 3 and sum(times) > MAX_ROUND_S:
                break
            t = time.perf_counter()
            self.opt.zero_grad(set_to_none=True)
            with self.autocast:
                loss = self.loss_fn(self.model(self.x), self.y)
            loss.backward()
            self.opt.step()
            # CUDA kernels run asynchronously: without waiting for the optimiser's kernels the
            # clock would stop before the step is done (``loss.item()`` alone waits too, as the
            # stream is in order; the explicit call says so).
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.loss = loss.item()
            times.append(time.perf_counter() - t)
        return times

    def answer(self, n: int) -> dict[str, Any]:
        """The protocol's answer to ``run n``: step times and the last loss."""
        return {"times": self.run(n), "loss": self.loss}

    def info(self) -> dict[str, Any]:
        """Static facts about this worker (versions, device, threads, parameter count, compile
        time and peak device memory so far: build and warm-up)."""
        import monai
        import torch

        cuda = self.device.type == "cuda"
        return {
            "framework": f"torch {self.mode}",
            "version": f"torch {torch.__version__}, monai {monai.__version__}",
            "device": f"cuda:{torch.cuda.get_device_name(self.device)}" if cuda else "cpu",
            "precision": self.precision,
            "params": self.params,
            # The first step's time, one step's work included (it is where compiling happens).
            "compile_s": self.first_step_s if self.mode == "compile" else None,
            "first_step_s": self.first_step_s,
            "peak_bytes": torch.cuda.max_memory_allocated(self.device) if cuda else None,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32 if cuda else None,
            "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        }


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
                worker = MedjaxWorker(workload, impl, sizes, precision)
            else:
                worker = TorchWorker(workload, sizes, precision, torch_mode)
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


def summarize(
    bench: str,
    setting: str,
    unit: str,
    results: dict[str, list[dict]],
    infos: dict[str, dict],
    peers: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Rows for one interleaved comparison.

    Args:
      bench: the rows' ``benchmark``.
      setting: what was compared; each row appends its side's name.
      unit: unit of the values (higher is better).
      results: side name -> per-round ``{"value", "load"}``, as ``interleave`` returns them.
      infos: side name -> the worker's static facts, copied into its row.
      peers: the sides the others are compared with (default: the last side).

    Returns:
      One row per side (its best round), then for each other side and each peer a ratio row
      ``<side>/<peer>``: best vs best, and the median of the per-round (paired) ratios.
    """
    peers = list(results)[-1:] if peers is None else list(peers)
    ours = [name for name in results if name not in peers]
    best = {name: max(r["value"] for r in rs) for name, rs in results.items()}
    rows = []
    for name, rs in results.items():
        i = max(range(len(rs)), key=lambda j: rs[j]["value"])
        row = {
            "benchmark": bench,
            "setting": f"{setting} {name}",
            "value": best[name],
            "unit": unit,
            "extra": f"load {rs[i]['load']:.1f}; rounds "
            + ", ".join(f"{r['value']:.3g}@{r['load']:.1f}" for r in rs),
            "side": name,
            "rounds": [{"value": r["value"], "load": r["load"]} for r in rs],
            **{k: v for k, v in infos[name].items() if k != "ready"},
        }
        rows.append(row)
    for name in ours:
        for peer in peers:
            pairs = [
                a["value"] / b["value"] for a, b in zip(results[name], results[peer], strict=True)
            ]
            rows.append(
                {
                    "benchmark": bench,
                    "setting": f"{setting} {name}/{peer}",
                    "value": best[name] / best[peer],
                    "unit": "ratio (best)",
                    "extra": f"median of paired rounds {statistics.median(pairs):.2f} "
                    f"({', '.join(f'{p:.2f}' for p in pairs)})",
                    "side": "ratio",
                    "paired": pairs,
                }
            )
    return rows


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


def _error_row(setting: str, name: str, info: dict[str, Any]) -> dict[str, Any]:
    """The row of a side that could not run: its error where the value would be."""
    return {
        "benchmark": "peers",
        "setting": f"{setting} {name}",
        "value": "error",
        "unit": "",
        "extra": info["error"],
        "side": name,
        **{k: v for k, v in info.items() if k not in ("ready", "error")},
    }


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
                rows += summarize("peers", setting, "samples/s", results, infos, peers)
            rows += [_error_row(setting, name, info) for name, info in failed.items()]
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
    missing = peers_available()
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
