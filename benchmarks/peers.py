"""medjax against its PyTorch/MONAI peers, side by side on one machine (issue 7, CPU targets).

    python benchmarks/peers.py [--workloads=unet2d,unet3d,luna,loader] [--rounds=4] [--steps=8]

Train step (forward + backward + Adam, one fixed device-resident batch, fp32), for the same
architectures with equal parameter counts (printed and checked):

* ``unet2d``: MONAI ``BasicUNet`` 2D, features (16, 32, 64, 128, 256, 16), 1 -> 1 channel,
  sigmoid Dice loss, 64x64, batch 16 (the CPU size of ``configs/unet.py``);
* ``unet3d``: MONAI ``BasicUNet`` 3D, features (32, 32, 64, 128, 256, 32), 1 -> 2 channels,
  softmax Dice + CE, 16x48x48, batch 2 (the CPU patch of ``configs/unet3d.py``);
* ``luna``: the book's LunaModel (8..64 channels), cross-entropy, 16x32x32, batch 16
  (``configs/luna.py``).

medjax's side is ``medjax.train.step.make_train_step`` jitted with the state donated, with
medjax's losses and, for the UNets, :class:`BasicUNet` below: MONAI's architecture built from
``medjax.models.layers`` (so the convolutions run as ``impl="auto"`` picks: im2col for 3D on
the CPU). The peer is PyTorch eager fp32 with MONAI's network and losses (LunaModel: the book's
torch code, written out here). ``loader`` compares medjax's Grain loader with MONAI's
``CacheDataset`` + ``RandCropByPosNegLabeld`` on the same NIfTI volumes (``peers_loader.py``).

Each side runs in its own long-lived worker process (one compile, one thread pool each, no
interference between JAX's and torch's pools); the parent asks them in turn, medjax then peer,
``--rounds`` times, so both see the same load. Each answer is the median step time of
``--steps`` steps; a row reports the best round of each side, the ratio of those, and the
median of the per-round ratios, with the load average (``/proc/loadavg``) at each round.
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
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import run_all  # noqa: E402

WORKLOADS: dict[str, dict[str, Any]] = {
    "unet2d": {"spatial": (64, 64), "batch": 16, "features": (16, 32, 64, 128, 256, 16), "k": 1},
    "unet3d": {"spatial": (16, 48, 48), "batch": 2, "features": (32, 32, 64, 128, 256, 32), "k": 2},
    "luna": {"spatial": (16, 32, 32), "batch": 16},
}
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
            return nn.leaky_relu(layers.make_norm("instance", train)(x), 0.1)

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

    def __init__(self, workload: str, impl: str = "auto"):
        import jax
        import numpy as np
        import optax

        import medjax.losses  # noqa: F401 - registers the losses
        import medjax.models  # noqa: F401 - registers the models
        from medjax import registry
        from medjax.train import state as state_lib
        from medjax.train import step as step_lib

        w = WORKLOADS[workload]
        rng = np.random.default_rng(0)
        shape = (w["batch"], *w["spatial"], 1)
        image = rng.standard_normal(shape).astype(np.float32)
        if workload == "luna":
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
        step = step_lib.make_train_step(loss, None, optax.constant_schedule(1e-3))
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
        """Static facts about this worker (versions, parameter count, compile time)."""
        import jax

        return {
            "framework": "medjax",
            "version": f"jax {jax.__version__}",
            "params": self.params,
            "compile_s": self.compile_s,
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
    """One workload's PyTorch eager fp32 train step; ``run(n)`` times ``n`` steps."""

    def __init__(self, workload: str):
        import torch
        import torch.nn.functional as F
        from monai.losses import DiceCELoss, DiceLoss
        from monai.networks.nets import BasicUNet

        w = WORKLOADS[workload]
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(w["batch"], 1, *w["spatial"], generator=g)
        if workload == "luna":
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
        self.model, self.x, self.y, self.loss_fn = model.train(), x, y, loss_fn
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        self.params = int(sum(p.numel() for p in model.parameters()))
        self.run(3)  # warm-up (allocator, oneDNN primitive caches)

    def run(self, n: int) -> list[float]:
        """Seconds per step; ``loss.item()`` synchronises, so a step's time is all of it."""
        times = []
        for _ in range(n):
            if len(times) >= 3 and sum(times) > MAX_ROUND_S:
                break
            t = time.perf_counter()
            self.opt.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(self.x), self.y)
            loss.backward()
            self.opt.step()
            self.loss = loss.item()
            times.append(time.perf_counter() - t)
        return times

    def answer(self, n: int) -> dict[str, Any]:
        """The protocol's answer to ``run n``: step times and the last loss."""
        return {"times": self.run(n), "loss": self.loss}

    def info(self) -> dict[str, Any]:
        """Static facts about this worker (versions, threads, parameter count)."""
        import monai
        import torch

        return {
            "framework": "torch eager",
            "version": f"torch {torch.__version__}, monai {monai.__version__}",
            "params": self.params,
            "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        }


# --- worker processes and the interleaving parent -----------------------------------------------


def worker_main(side: str, workload: str, impl: str) -> None:
    """A worker process: build, say READY, then answer ``run N`` lines until ``quit``.

    ``workload`` is a key of ``WORKLOADS`` (train step) or ``loader:<workers>``.
    """
    run_all.ensure_importable()
    if workload.startswith("loader:"):
        from benchmarks import peers_loader

        worker = peers_loader.make_worker(side, int(workload.split(":")[1]))
    elif side == "medjax":
        worker = MedjaxWorker(workload, impl)
    else:
        worker = TorchWorker(workload)
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
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
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
    bench: str, setting: str, unit: str, results: dict[str, list[dict]], infos: dict[str, dict]
) -> list[dict[str, Any]]:
    """One row per side (best round) plus, for each side but the last (the peer), its ratio to
    the peer: best vs best, and the median of the per-round (paired) ratios."""
    *ours, peer = results
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
        pairs = [a["value"] / b["value"] for a, b in zip(results[name], results[peer], strict=True)]
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


def train_step_rows(
    workloads: Sequence[str],
    rounds: int,
    steps: int,
    impl: str = "auto",
    also_impls: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Interleaved medjax / torch eager train-step samples/s for each workload.

    ``also_impls`` adds medjax sides with other conv formulations (``medjax[<impl>]``) to the
    same rounds: a before/after of a formulation change measured under the same load.
    """
    rows = []
    for workload in workloads:
        w = WORKLOADS[workload]
        sides = {}
        try:
            for name, i in (("medjax", impl), *((f"medjax[{a}]", a) for a in also_impls)):
                sides[name] = Worker(["--worker=medjax", f"--workload={workload}", f"--impl={i}"])
            sides["torch"] = Worker(["--worker=torch", f"--workload={workload}"], torch_env())
            infos = {k: s.info for k, s in sides.items()}
            if len({info["params"] for info in infos.values()}) != 1:
                raise RuntimeError(f"{workload}: parameter counts differ: {infos}")
            batch = w["batch"]
            results = interleave(
                sides,
                rounds,
                f"run {steps}",
                lambda a, batch=batch: batch / statistics.median(a["times"]),
            )
        finally:
            for s in sides.values():
                s.close()
        setting = f"{workload} {'x'.join(map(str, w['spatial']))} b{w['batch']} fp32"
        rows += summarize("peers", setting, "samples/s", results, infos)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", default="unet2d,unet3d,luna,loader")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds per workload")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per round")
    parser.add_argument("--impl", default="auto", help="medjax conv formulation (see layers)")
    parser.add_argument("--also_impls", default="", help="extra medjax sides, e.g. 'im2col'")
    parser.add_argument("--loader_workers", default="0,2", help="worker counts for 'loader'")
    parser.add_argument("--out", default=run_all.RESULTS, help="JSONL file ('' for none)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.workload, args.impl)
    missing = peers_available()
    if missing:
        print(f"peers skipped: {missing}")
        return
    run_all.ensure_importable()
    names = [n for n in args.workloads.split(",") if n]
    also = [a for a in args.also_impls.split(",") if a]
    steps = [n for n in names if n in WORKLOADS]
    rows = train_step_rows(steps, args.rounds, args.steps, args.impl, also)
    if "loader" in names:
        from benchmarks import peers_loader

        workers = [int(w) for w in args.loader_workers.split(",")]
        rows += peers_loader.loader_rows(workers, rounds=args.rounds)
    run_all.write_rows(rows, args.out)
    run_all.print_table(rows, "medjax vs PyTorch/MONAI, interleaved (value: best round)")


if __name__ == "__main__":
    main()
