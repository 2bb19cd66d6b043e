"""What ``benchmarks/peers.py`` compares: the workload shapes, precisions and torch modes.

Both sides' workers (``peers_medjax.py``, ``peers_torch.py``) and the parent read these, so
they live apart from all three: no side imports the parent module or the other side.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

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


def time_steps(step: Callable[[], None], n: int) -> list[float]:
    """Seconds of each of ``n`` calls of ``step`` (which must end synchronised with the device).

    Stops early, after at least 3 steps, once a round has run ``MAX_ROUND_S``.
    """
    times: list[float] = []
    for _ in range(n):
        if len(times) >= 3 and sum(times) > MAX_ROUND_S:
            break
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times
