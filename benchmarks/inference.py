"""Sliding-window inference throughput of the 3D UNet: volumes/s on a CT-sized volume.

    python benchmarks/inference.py [--shape=32,96,96] [--ct] [--batch=4] [--precision=bfloat16]
        [--blend=host,device] [--peer] [--repeats=2] [--out='']

The model is ``configs/unet3d.py``'s (random weights: speed does not depend on them), the tile
its patch size unless ``--tile`` is given. The whole volume goes through
``medjax.evaluate.sliding_window.sliding_window_predict`` (Gaussian blending, ``--overlap`` 0.5,
fixed window batches), as evaluation does, once per ``--blend`` (comma-separated: ``auto``,
``device``, ``host``; where the windows are blended). ``--ct`` uses a CT-sized
``300 x 512 x 512`` volume (for a GPU: thousands of windows); the CPU default is small.

``--predict`` times ``--mode=predict`` end to end instead (``predict_ct``): a CT-sized int16
NIfTI read, CT-window normalised, predicted by sliding windows, written back, in a child
process whose peak resident memory is reported against the float32 volume's size.

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
import csv
import json
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


def _make_run(workdir: str, tile: Sequence[int], variant: str) -> None:
    """A workdir as training leaves one (config.json, plan.json, a checkpoint) with random
    weights of ``configs/unet3d.py:<variant>``'s model: prediction speed does not depend on
    them."""
    import jax
    import optax

    from medjax.predict import plan as plan_lib
    from medjax.testing import configs as configs_lib
    from medjax.train import checkpoint as ckpt_lib
    from medjax.train import loop
    from medjax.train import state as state_lib

    config = configs_lib.load_config("unet3d", variant)
    config.data.patch_size = tuple(tile)
    config.eval.batch_size = 2
    model = loop.build_model(config)
    state = state_lib.create_train_state(model, optax.sgd(0.0), (1, *tile, 1), jax.random.key(0))
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "ckpt"), config.ckpt)
    ckpt.save(0, state, None)
    ckpt.close()
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=1))
    # A CT plan on the native grid: the window and statistics a CT fingerprint resolves to.
    spec = {
        "normalization": {"name": "ct", "window": [-1000.0, 1000.0], "mean": 40.0, "std": 300.0}
    }
    plan = plan_lib.make_plan(config, spec, 1)
    with open(os.path.join(workdir, plan_lib.PLAN_FILE), "w") as f:
        json.dump(plan, f)


def _predict_child(workdir: str, warm: str, image: str, output: str) -> dict[str, float]:
    """In a fresh process: load the run, predict a one-tile volume (compiles the model and
    sizes its working memory), then the CT; RSS after loading, peak after the warm-up case and
    the final peak (bytes)."""
    import resource

    import ml_collections
    import psutil

    from medjax.predict import runner

    def options(path: str, out: str) -> ml_collections.ConfigDict:
        pcfg = runner.default_options()
        pcfg.update({"input": path, "output": out, "overwrite": True})
        os.makedirs(out, exist_ok=True)
        return pcfg

    members = runner.load_members(workdir, options(warm, output + "-warm"))
    loaded = psutil.Process().memory_info().rss
    runner.run_segmentation(members, options(warm, output + "-warm"), output + "-warm")
    warm_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    t = time.perf_counter()
    result = runner.run_segmentation(members, options(image, output), output)
    seconds = time.perf_counter() - t
    assert result["ok"] >= 1, result["rows"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "rss_loaded": loaded, "rss_warm": warm_peak, "rss_peak": peak}


def predict_ct(
    *,
    shape: Sequence[int] = CT_SHAPE,
    tile: Sequence[int] = (32, 128, 128),
    variant: str = "tiny",
    cases: int = 1,
    out=run_all.RESULTS,
) -> list[dict[str, Any]]:
    """``--mode=predict`` of int16 CT-sized NIfTIs: cases/s and peak RSS (see docstring).

    The first case in the child includes compilation; with ``cases > 1`` the same file is
    predicted again and the last case's seconds are reported. The peak covers all of them.
    The model is ``configs/unet3d.py:<variant>``'s (``tiny`` on a CPU: features 4, depth 2).
    """
    import subprocess
    import tempfile

    run_all.ensure_importable()
    import nibabel as nib

    with tempfile.TemporaryDirectory() as tmp:
        workdir = os.path.join(tmp, "run")
        _make_run(workdir, tile, variant)
        rng = np.random.default_rng(0)
        volume = rng.integers(-1000, 1500, size=tuple(shape)[::-1], dtype=np.int16)
        folder = os.path.join(tmp, "scans")
        os.makedirs(folder)
        for name in [f"ct_{i}.nii" for i in range(cases)]:
            nib.save(
                nib.Nifti1Image(volume, np.diag([0.7, 0.7, 1.0, 1.0])), os.path.join(folder, name)
            )
        del volume
        warm = os.path.join(tmp, "warm.nii")
        tile_volume = rng.integers(-1000, 1500, size=tuple(tile)[::-1], dtype=np.int16)
        nib.save(nib.Nifti1Image(tile_volume, np.diag([0.7, 0.7, 1.0, 1.0])), warm)
        args = json.dumps([workdir, warm, folder, os.path.join(tmp, "out")])
        r = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--predict-child", args],
            capture_output=True,
            text=True,
            check=False,
        )
        if r.returncode:
            raise RuntimeError(r.stderr[-3000:])
        child = json.loads(r.stdout.strip().splitlines()[-1])
        with open(os.path.join(tmp, "out", "predictions.csv")) as f:
            seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    f32 = float(np.prod(shape)) * 4
    load = os.getloadavg()[0]
    row = {
        "benchmark": "predict",
        "setting": (
            f"--mode=predict int16 NIfTI {tuple(shape)} tile {tuple(tile)} b2 overlap 0.5 "
            f"unet3d:{variant}"
        ),
        "value": 1.0 / seconds[-1],
        "unit": "cases/s",
        "extra": (
            f"{seconds[-1]:.1f} s/case (first {seconds[0]:.1f} s), load {load:.1f}; peak RSS "
            f"{child['rss_peak'] / 2**30:.2f} GiB = {child['rss_peak'] / f32:.2f}x the float32 "
            f"volume: {(child['rss_peak'] - child['rss_warm']) / f32:.2f}x above the "
            f"{child['rss_warm'] / 2**30:.2f} GiB peak of a one-tile case (the loaded run "
            f"{child['rss_loaded'] / 2**30:.2f} GiB, the compiled model's working memory)"
        ),
        "seconds_per_case": seconds[-1],
        "rss_peak_bytes": child["rss_peak"],
        "rss_loaded_bytes": child["rss_loaded"],
        "rss_warm_bytes": child["rss_warm"],
        "float32_volume_bytes": f32,
        "load": load,
    }
    run_all.write_rows([row], out)
    return [row]


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
    parser.add_argument("--predict", action="store_true", help="--mode=predict of a CT (RSS)")
    parser.add_argument("--predict-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.predict_child:
        run_all.ensure_importable()
        print(json.dumps(_predict_child(*json.loads(args.predict_child))))
        return
    if args.predict:
        shape = CT_SHAPE if args.ct or args.shape == (32, 96, 96) else args.shape
        rows = predict_ct(shape=shape, tile=args.tile or (32, 128, 128), out=args.out or None)
        run_all.print_table(rows, "Predict")
        return
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
