"""Train-step throughput: step only (device-resident batch) and end to end (Grain + step).

    python benchmarks/train_step.py --config=configs/unet.py [--steps=30] \
        [--config.train.batch_size=64]

Prints a table and appends one JSON line per measurement to ``benchmarks/results.jsonl``.
Compilation is excluded (timed separately); the median of per-step times is reported, each step
timed with ``block_until_ready``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from medjax import registry  # noqa: E402
from medjax.augment import compose  # noqa: E402
from medjax.data import pipeline  # noqa: E402
from medjax.models import spec as model_spec  # noqa: E402
from medjax.train import loop, optim  # noqa: E402
from medjax.train import mesh as mesh_lib  # noqa: E402
from medjax.train import state as state_lib  # noqa: E402
from medjax.train import step as step_lib  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.DEFINE_integer("steps", 20, "Timed steps.")
flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
flags.DEFINE_bool("end_to_end", True, "Also time the Grain loader + step.")
flags.DEFINE_string(
    "out", os.path.join(os.path.dirname(__file__), "results.jsonl"), "JSONL file ('' for none)."
)
FLAGS = flags.FLAGS


def _time_steps(step, state, batches, key, n):
    times = []
    for i in range(n):
        batch = batches(i)
        t = time.perf_counter()
        state, metrics = step(state, batch, key)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    return state, times


def main(argv):
    del argv
    config = FLAGS.config
    mesh = mesh_lib.make_mesh(config.mesh)
    batch_sh, repl = mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh)
    bs = config.train.batch_size
    channels = model_spec.in_channels(config)
    spatial = config.data.luna.cutout_size_vox if config.task == "luna" else config.data.patch_size
    shape = (bs, *spatial, channels)
    model = loop.build_model(config)
    loss_fn = loop.build_loss(config)
    tx, schedule = optim.make_optimizer(config, 1000)
    aug = compose.compose(list(config.augment)) if config.augment else None
    init = lambda k: state_lib.create_train_state(model, tx, (1, *shape[1:]), k)  # noqa: E731
    abstract = jax.eval_shape(init, jax.random.key(0))
    state_sh = mesh_lib.state_sharding(abstract, mesh)
    state = jax.jit(init, out_shardings=state_sh)(jax.random.key(0))
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    step = jax.jit(
        step_lib.make_train_step(
            loss_fn,
            aug,
            schedule,
            precision=config.train.precision,
            grad_accum_steps=config.train.grad_accum_steps,
        ),
        in_shardings=(state_sh, batch_sh, repl),
        out_shardings=(state_sh, repl),
        donate_argnums=0,
    )
    rng = np.random.default_rng(0)
    label_shape = shape[:-1] if config.task == "segmentation" else shape[:1]
    batch = jax.device_put(
        {
            "image": rng.standard_normal(shape).astype(np.float32),
            "label": (rng.random(label_shape) > 0.9).astype(np.int32),
        },
        batch_sh,
    )
    key = jax.device_put(jax.random.key(1), repl)
    t = time.perf_counter()
    compiled = step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t
    flops = None
    try:
        flops = compiled.cost_analysis()["flops"]
    except Exception:  # noqa: BLE001 - not every backend reports it
        pass
    state, _ = _time_steps(step, state, lambda i: batch, key, FLAGS.warmup)
    state, times = _time_steps(step, state, lambda i: batch, key, FLAGS.steps)
    rows = [{"what": "train step (device batch)", "samples_per_s": bs / float(np.median(times))}]
    if FLAGS.end_to_end:
        task = registry.get(f"tasks.{config.task}")(config)
        it = pipeline.TrainIterator(task.train_dataset(global_batch_size=bs, seed=0), batch_sh)
        # Warm up until every Grain worker has delivered (their start-up is not throughput).
        warm = FLAGS.warmup + 2 * max(config.data.num_workers, 1)
        state, _ = _time_steps(step, state, lambda i: next(it), key, warm)
        t = time.perf_counter()
        for _ in range(FLAGS.steps):
            state, metrics = step(state, next(it), key)
        jax.block_until_ready(metrics)
        rows.append(
            {
                "what": "end to end (Grain + aug + step)",
                "samples_per_s": bs * FLAGS.steps / (time.perf_counter() - t),
            }
        )
        it.close()
    device = jax.devices()[0]
    common = {
        "config": config.model.name,
        "patch": list(spatial),
        "batch": bs,
        "precision": config.train.precision,
        "params": int(n_params),
        "compile_s": compile_s,
        "device": f"{device.platform}:{getattr(device, 'device_kind', '')} x{jax.device_count()}",
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "gflop_per_sample": (flops / bs / 1e9) if flops else None,
    }
    print(
        f"\n{config.model.name} {tuple(spatial)} batch {bs} "
        f"{config.train.precision} "
        f"on {common['device']}  params {n_params:,}  compile {compile_s:.1f}s"
    )
    print(f"{'measurement':<34}{'samples/s':>12}{'TFLOP/s':>10}")
    lines = []
    for row in rows:
        tflops = row["samples_per_s"] * flops / bs / 1e12 if flops else float("nan")
        print(f"{row['what']:<34}{row['samples_per_s']:>12.2f}{tflops:>10.3f}")
        lines.append(json.dumps({**common, **row, "tflop_per_s": tflops}) + "\n")
    if FLAGS.out:  # '' prints only
        with open(FLAGS.out, "a") as f:
            f.writelines(lines)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
