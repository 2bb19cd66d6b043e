"""The medjax side of ``benchmarks/peers.py``: its worker and MONAI's BasicUNet in Flax.

Imported by the parent too (for ``jax_env``), so JAX, Flax and medjax's models are imported
inside the functions, in the worker process only: the parent must not start a JAX backend.
"""

from __future__ import annotations

import os
import time
from typing import Any

from benchmarks import peers_workloads


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


# --- MONAI's BasicUNet from medjax layers -------------------------------------------------------


def _flax_basic_unet():
    """Builds the Flax module class lazily (benchmarks import this file without JAX work)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from medjax.models import layers, pooling

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
                down = pooling.max_pool2(skips[-1])
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

        w = peers_workloads.WORKLOADS[sizes][workload]
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
            loss,
            None,
            optax.constant_schedule(1e-3),
            precision=peers_workloads.PRECISIONS[precision],
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

        def one() -> None:
            self.state, self.metrics = self.step(self.state, self.batch, self.key)
            jax.block_until_ready(self.metrics)

        times = peers_workloads.time_steps(one, n)
        self.loss = float(self.metrics["loss"])
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
