"""Sliding-window inference throughput of the 3D UNet: volumes/s on a CT-sized volume.

    python benchmarks/inference.py [--shape=32,96,96] [--ct] [--batch=4] [--precision=bfloat16]
        [--blend=host,device] [--peer] [--repeats=2] [--out='']

The model is ``configs/unet3d.py``'s (random weights: speed does not depend on them), the tile
its patch size unless ``--tile`` is given. The whole volume goes through
``medjax.evaluate.sliding_window.sliding_window_predict`` (Gaussian blending, ``--overlap`` 0.5,
fixed window batches), as evaluation does, once per ``--blend`` (comma-separated: ``auto``,
``device``, ``host``; where the windows are blended). ``--ct`` uses a CT-sized
``300 x 512 x 512`` volume (for a GPU: thousands of windows); the CPU default is small.

``--peer`` adds MONAI's ``sliding_window_inference`` (``mode="gaussian"``, the same overlap,
tile and ``sw_batch_size``) with a torch eager fp32 MONAI ``BasicUNet`` of
``PEER_FEATURES`` (83k parameters against medjax unet3d's 85k; the same widths at full and half
resolution), on the same volume. torch runs in this process with ``OMP_WAIT_POLICY=PASSIVE``
so its idle OpenMP threads do not spin on the cores JAX needs (see ``benchmarks/peers.py``).

Compilation is excluded (one warm-up whole-volume run per side). The sides run interleaved,
``--repeats`` rounds, so they see the same load; each reports its fastest round, with the load
average at the start.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import run_all  # noqa: E402

CT_SHAPE = (300, 512, 512)
# MONAI BasicUNet widths for the peer: (8, 16) at full and half resolution like medjax's
# unet3d (features 8, depth 3); the three deeper levels kept narrow to match its parameters.
PEER_FEATURES = (8, 16, 16, 8, 8, 8)


def _monai_peer(image: np.ndarray, tile: tuple[int, ...], batch: int, overlap: float, k: int):
    """A zero-argument callable predicting ``image`` ``[*spatial, 1]`` with MONAI; its params."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch's OpenMP starts
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import BasicUNet

    torch.manual_seed(0)
    net = BasicUNet(spatial_dims=len(tile), in_channels=1, out_channels=k, features=PEER_FEATURES)
    net = net.eval()
    volume = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 0))[None])

    def predict() -> None:
        with torch.inference_mode():
            sliding_window_inference(
                volume, tile, batch, net, overlap=overlap, mode="gaussian", sigma_scale=0.125
            )

    return predict, int(sum(p.numel() for p in net.parameters()))


def run(
    *,
    ct: bool = False,
    shape: Sequence[int] = (32, 96, 96),
    tile: Sequence[int] | None = None,
    batch: int = 4,
    overlap: float = 0.5,
    precision: str = "float32",
    repeats: int = 2,
    blends: Sequence[str] = ("auto",),
    peer: bool = False,
    out: str | None = run_all.RESULTS,
) -> list[dict[str, Any]]:
    """Times sliding-window prediction of one volume; the rows are appended to ``out``.

    Args:
      ct: use ``300 x 512 x 512`` instead of ``shape``.
      shape: volume ``(D, H, W)`` (one channel).
      tile: window size; None: the config's patch size.
      batch: windows per device call.
      overlap: window overlap fraction (``step_fraction = 1 - overlap``).
      precision: ``float32`` or ``bfloat16`` (parameters and windows cast; logits float32).
      repeats: interleaved rounds of whole-volume runs; each side's fastest counts.
      blends: ``sliding_window_predict``'s ``blend`` values to time, one row each.
      peer: also time MONAI's ``sliding_window_inference`` with a torch ``BasicUNet``.
      out: JSONL file (None: do not write).

    Returns:
      One row per blend (and the peer): ``value`` volumes/s, with windows/s and voxels/s.
    """
    run_all.ensure_importable()
    import jax
    import jax.numpy as jnp

    from medjax.evaluate import sliding_window
    from medjax.models import spec as model_spec
    from medjax.testing import configs as configs_lib

    config = configs_lib.load_config("unet3d")
    shape = CT_SHAPE if ct else tuple(shape)
    tile = tuple(tile or config.data.patch_size)
    model = model_spec.build(config)
    dtype = jnp.dtype(precision)
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, *tile, 1)), train=False))(
        jax.random.key(0)
    )
    variables = jax.tree.map(lambda v: v.astype(dtype), variables)

    @jax.jit
    def predict(windows: jax.Array) -> jax.Array:
        logits = model.apply(variables, windows.astype(dtype), train=False)
        return logits.astype(jnp.float32)

    t = time.perf_counter()
    jax.block_until_ready(predict(jnp.zeros((batch, *tile, 1))))
    compile_s = time.perf_counter() - t
    image = np.random.default_rng(0).standard_normal((*shape, 1), dtype=np.float32)
    step = 1.0 - overlap
    num_windows = int(np.prod([len(s) for s in sliding_window.window_starts(shape, tile, step)]))

    def medjax_side(blend: str):
        return lambda: sliding_window.sliding_window_predict(
            predict,
            image,
            tile_size=tile,
            num_classes=model_spec.num_classes(config),
            step_fraction=step,
            batch_size=batch,
            blend=blend,
        )

    sides = {f"medjax blend={b}": medjax_side(b) for b in blends}
    params = {}
    if peer:
        k = model_spec.num_classes(config)
        sides["monai"], params["monai"] = _monai_peer(image, tile, batch, overlap, k)
    for fn in sides.values():
        fn()  # warm-up: the blend programs compile per padded shape, torch sets up its kernels
    best = {name: (float("inf"), 0.0) for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            load = os.getloadavg()[0]
            seconds = run_all.best_time(fn, 1)
            best[name] = min(best[name], (seconds, load))

    rows = []
    for name, (seconds, load) in best.items():
        extra = f"{num_windows / seconds:.1f} windows/s, {seconds:.2f} s/volume, load {load:.1f}"
        if name in params:
            extra += f", {params[name]} params"
        else:
            extra += f", compile {compile_s:.1f}s"
        rows.append(
            {
                "benchmark": "inference",
                "setting": f"{name} {shape} tile {tile} b{batch} {precision}",
                "value": 1.0 / seconds,
                "unit": "volumes/s",
                "extra": extra,
                "side": name,
                "shape": list(shape),
                "tile": list(tile),
                "batch": batch,
                "overlap": overlap,
                "precision": precision,
                "windows": num_windows,
                "seconds_per_volume": seconds,
                "mvoxels_per_s": float(np.prod(shape)) / seconds / 1e6,
                "compile_s": compile_s,
                "load": load,
            }
        )
    run_all.write_rows(rows, out)
    return rows


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def main() -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ct", action="store_true", help=f"volume {CT_SHAPE} (D, H, W)")
    parser.add_argument("--shape", type=_ints, default=(32, 96, 96), help="D,H,W")
    parser.add_argument("--tile", type=_ints, default=None, help="D,H,W (default: config patch)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--precision", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--blend", default="auto", help="comma-separated: auto, device, host (timed in turn)"
    )
    parser.add_argument("--peer", action="store_true", help="also MONAI sliding_window_inference")
    parser.add_argument("--out", default=run_all.RESULTS, help="JSONL file ('' for none)")
    args = parser.parse_args()
    rows = run(
        ct=args.ct,
        shape=args.shape,
        tile=args.tile,
        batch=args.batch,
        overlap=args.overlap,
        precision=args.precision,
        repeats=args.repeats,
        blends=tuple(args.blend.split(",")),
        peer=args.peer,
        out=args.out,
    )
    run_all.print_table(rows, "Sliding-window inference")


if __name__ == "__main__":
    main()
