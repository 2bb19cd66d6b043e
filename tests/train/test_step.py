"""The jitted train step: sharding, 1 vs 8 devices, no retracing, accumulation, bf16."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from medjax import registry
from medjax.augment import compose
from medjax.train import state as state_lib
from medjax.train import step as step_lib


def _setup(n_devices, *, accum=1, precision="float32", norm="instance", augment=True, tx=None):
    mesh = jax.make_mesh(
        (n_devices,),
        ("data",),
        axis_types=(jax.sharding.AxisType.Auto,),
        devices=jax.devices()[:n_devices],
    )
    model = registry.lookup("models", "unet", depth=2, features=4, norm=norm)
    tx = tx or optax.adam(1e-2)
    schedule = optax.constant_schedule(1e-2)
    state = state_lib.create_train_state(model, tx, (1, 16, 16, 1), jax.random.key(0))
    repl, batch_sh = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    state = jax.device_put(state, repl)
    aug = compose.compose(["brightness(p=1.0)"]) if augment else None
    loss = registry.lookup("losses", "dice_ce")
    fn = step_lib.make_train_step(loss, aug, schedule, precision=precision, grad_accum_steps=accum)
    jitted = jax.jit(
        fn, in_shardings=(repl, batch_sh, repl), out_shardings=(repl, repl), donate_argnums=0
    )
    return state, jitted, batch_sh, repl


def _batch(seed=0, b=8):
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((b, 16, 16, 1)).astype(np.float32)
    label = (image[..., 0] > 0.8).astype(np.int32)
    return {"image": image, "label": label}


def test_eight_devices_match_one_device_and_shardings_hold():
    losses = {}
    for n in (1, 8):
        state, step, batch_sh, repl = _setup(n)
        key = jax.device_put(jax.random.key(1), repl)
        out = []
        for i in range(3):
            batch = jax.device_put(_batch(i), batch_sh)
            state, metrics = step(state, batch, key)
            out.append(float(metrics["loss"]))
        losses[n] = out
        leaf = jax.tree.leaves(state.params)[0]
        assert leaf.sharding.is_equivalent_to(repl, leaf.ndim)
        assert metrics["loss"].sharding.is_equivalent_to(repl, 0)
    np.testing.assert_allclose(losses[1], losses[8], rtol=2e-5)
    assert losses[8][-1] < losses[8][0]


def test_step_compiles_once():
    state, step, batch_sh, repl = _setup(8)
    key = jax.device_put(jax.random.key(1), repl)
    for i in range(4):
        state, _ = step(state, jax.device_put(_batch(i), batch_sh), key)
    assert step._cache_size() == 1


def test_strided_accumulation_has_no_all_gather_and_gives_the_big_batch_gradients():
    # Plain SGD with rate 1: the update is minus the mean gradient, so params before - after are
    # the gradients. Instance norm and a per-example loss: the micro-batch split is exact.
    sgd = optax.sgd(1.0)
    big, step_big, batch_sh, repl = _setup(8, accum=1, augment=False, tx=sgd)
    acc, step_acc, _, _ = _setup(8, accum=4, augment=False, tx=sgd)
    key = jax.device_put(jax.random.key(1), repl)
    host = _batch(0, b=32)
    batch = jax.device_put(host, batch_sh)
    hlo = step_acc.lower(acc, batch, key).compile().as_text()
    # Each micro-batch (rows i::4) is sharded over all 8 devices: nothing is re-gathered.
    assert len(re.findall(r"all-gather(?:-start)?\(", hlo)) == 0

    # Reference: the plain gradient of the mean loss over all 32 examples, one device, no step.
    model = registry.lookup("models", "unet", depth=2, features=4, norm="instance")
    loss = registry.lookup("losses", "dice_ce")
    params = jax.device_get(big.params)

    def mean_loss(p):
        return jnp.mean(loss(model.apply({"params": p}, host["image"], train=True), host["label"]))

    ref_loss, ref_grads = jax.value_and_grad(mean_loss)(params)
    before = jax.device_get(big.params)
    big, m_big = step_big(big, batch, key)
    acc, m_acc = step_acc(acc, batch, key)
    # float32 sums over 32 examples in different orders: tolerance from the gradient's scale.
    scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(ref_grads))
    for p0, g, pb, pa in zip(
        *(jax.tree.leaves(t) for t in (before, ref_grads, big.params, acc.params)), strict=True
    ):
        # Plus the float32 rounding of p0 - g (the params may be much larger than the gradient).
        atol = 1e-5 * scale + 2 * np.finfo(np.float32).eps * float(np.max(np.abs(p0)))
        g = np.asarray(g, np.float64)
        np.testing.assert_allclose(np.asarray(p0) - np.asarray(pb), g, rtol=0, atol=atol)
        np.testing.assert_allclose(np.asarray(p0) - np.asarray(pa), g, rtol=0, atol=atol)
    for m in (m_big, m_acc):
        assert float(m["loss"]) == pytest.approx(float(ref_loss), rel=1e-5)


def test_bf16_step_keeps_fp32_master_weights_and_tracks_fp32():
    f32, step32, batch_sh, repl = _setup(8, precision="float32")
    b16, step16, _, _ = _setup(8, precision="bfloat16")
    key = jax.device_put(jax.random.key(1), repl)
    batch = jax.device_put(_batch(0), batch_sh)
    f32, m32 = step32(f32, batch, key)
    b16, m16 = step16(b16, batch, key)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(b16.params))
    assert float(m16["loss"]) == pytest.approx(float(m32["loss"]), rel=0.05)


def test_step_metrics_are_finite_scalars():
    state, step, batch_sh, repl = _setup(8, norm="batch")
    key = jax.device_put(jax.random.key(1), repl)
    state, metrics = step(state, jax.device_put(_batch(0), batch_sh), key)
    assert set(metrics) == {"loss", "grad_norm", "param_norm", "update_norm", "lr"}
    assert all(m.shape == () and np.isfinite(float(m)) for m in metrics.values())
    assert float(metrics["lr"]) == pytest.approx(1e-2)
    assert state.batch_stats  # batch norm statistics are carried in the state
