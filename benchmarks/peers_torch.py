"""The PyTorch/MONAI side of ``benchmarks/peers.py``: its worker and the book's LunaModel.

Imported by the parent too (for ``torch_env``), so torch and MONAI are imported inside the
functions, in the worker process only (``peers_available`` aside, which checks they import).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from benchmarks import peers_workloads


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

        w = peers_workloads.WORKLOADS[sizes][workload]
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

        def one() -> None:
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

        return peers_workloads.time_steps(one, n)

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
