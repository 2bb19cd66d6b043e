"""The measured plan on the built-in 3D data, applied to a config, and a per-axis UNet step."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from medjax.models import unet
from medjax.plan import apply as plan_lib
from medjax.plan import measure as measure_lib
from medjax.plan import topology as topo_lib
from medjax.testing import configs
from medjax.train import state as state_lib
from medjax.train import step as step_lib


def _tiny_config(**plan):
    config = configs.load_config("unet3d", "tiny")
    config.plan.auto = True
    config.plan.base_features = 4
    config.augment = ()  # the step's memory without them; their compile dominates in tests
    config.model.conv_impl = "xla"  # compiles in half the time of the CPU's depth2d default
    for k, v in plan.items():
        config.plan[k] = v
    return config


def test_measured_memory_grows_with_batch_and_covers_the_state():
    config = _tiny_config()
    measure = measure_lib.make_measure(config, channels=1)
    t = topo_lib.pool_and_conv_props((2.0, 1.0, 1.0), (8, 16, 16))
    m2, m4 = measure(t, 2), measure(t, 4)
    assert m4 > m2 > 0
    # Arguments alone hold the parameters and Adam's two moments (float32) and the batch.
    kwargs = measure_lib.model_kwargs(config, t)
    model = unet.get_unet(**kwargs)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 16, 16, 1)))["params"]
    n_params = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
    batch_bytes = 2 * 8 * 16 * 16 * (4 + 4)
    assert m2 >= 3 * 4 * n_params + batch_bytes


def test_plan_for_built_in_data_fits_budget_and_applies(tmp_path):
    config = _tiny_config()
    plan = plan_lib.plan_for_config(config)
    # Preprocessed to 16 x 32 x 32 at about (2, 1, 1) mm: D is thick, so the first pooling
    # and kernels leave it alone (nnU-Net's rule), then every axis pools down to 4.
    assert plan["patch_size"] == [16, 32, 32]
    assert plan["pool_strides"][0] == [1, 2, 2] and plan["kernel_sizes"][0] == [1, 3, 3]
    assert plan["batch_size"] >= 2 and plan["memory_bytes"] <= plan["budget_bytes"]
    assert plan["features"] == [4 * 2**i for i in range(plan["depth"])]
    # A budget below what the median patch needs shrinks the patch, and it then fits.
    small = _tiny_config(memory_gb=0.6 * plan["memory_bytes"] / plan["batch_size"] * 2 / 2**30)
    shrunk = plan_lib.plan_for_config(small)
    assert math.prod(shrunk["patch_size"]) < math.prod(plan["patch_size"])
    assert shrunk["memory_bytes"] <= shrunk["budget_bytes"]
    # Applied: planned numbers in the config, a command-line value wins, the plan is recorded.
    config.train.batch_size = 8
    plan_lib.write_plan(plan, str(tmp_path))  # apply() reads a recorded plan back
    applied = plan_lib.apply(config, str(tmp_path), overrides={"train.batch_size"})
    assert applied.train.batch_size == 8
    assert tuple(applied.data.patch_size) == (16, 32, 32)
    assert applied.model.kwargs.pool_strides == plan["pool_strides"]
    assert plan_lib.read_plan(str(tmp_path))["patch_size"] == [16, 32, 32]
    model = unet.get_unet(**applied.model.kwargs.to_dict())
    assert model.pool_strides[0] == (1, 2, 2) and len(model.features) == plan["depth"]
    assert plan_lib.command_line_overrides(
        ["launch.py", "--config=c.py", "--config.data.patch_size=(8,8,8)", "--workdir=x"]
    ) == {"data.patch_size"}


def test_per_axis_unet_trains_a_step_on_an_anisotropic_patch():
    model = unet.get_unet(
        depth=2,
        features=4,
        norm="none",
        pool_strides=[[1, 2, 2]],
        kernel_sizes=[[1, 3, 3], [3, 3, 3]],
    )
    tx = optax.sgd(1e-2)
    init = jax.jit(lambda k: state_lib.create_train_state(model, tx, (1, 2, 8, 8, 1), k))
    state = init(jax.random.key(0))  # jitted: eager init is several times slower on the CPU
    kernel = state.params["enc0"]["ConvNormAct_0"]["Conv_0"]["kernel"]
    assert kernel.shape == (1, 3, 3, 1, 4)
    # The first upsampling restores only H and W: 2 * 2 outputs per input voxel.
    assert state.params["up0"]["Dense_0"]["kernel"].shape == (8, 4 * 4)
    assert state.params["enc1"]["ConvNormAct_0"]["Conv_0"]["kernel"].shape == (3, 3, 3, 4, 8)
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.normal(size=(2, 2, 8, 8, 1)), jnp.float32),
        "label": jnp.asarray(rng.random((2, 2, 8, 8)) > 0.7, jnp.int32),
    }

    def loss(logits, labels):
        return optax.sigmoid_binary_cross_entropy(logits[..., 0], labels).mean(axis=(1, 2, 3))

    step = jax.jit(step_lib.make_train_step(loss, None, optax.constant_schedule(1e-2)))
    new, metrics = step(state, batch, jax.random.key(1))
    logits = jax.jit(model.apply)({"params": state.params}, batch["image"])
    assert logits.shape == (2, 2, 8, 8, 1)
    ref = float(np.mean(np.asarray(loss(logits, batch["label"]), np.float64)))
    assert float(metrics["loss"]) == pytest.approx(ref, rel=1e-5)
    assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 0
    assert int(new.step) == 1


def test_explicit_uniform_strides_equal_the_default_unet_and_max_pool_matches_numpy():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 8, 8, 2)), jnp.float32)
    default = unet.get_unet(depth=3, features=4, norm="none")
    explicit = unet.get_unet(
        depth=3, features=4, norm="none", pool_strides=[[2, 2]] * 2, kernel_sizes=[[3, 3]] * 3
    )
    params = jax.jit(default.init)(jax.random.key(0), x)
    same = jax.jit(explicit.init)(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, same)
    np.testing.assert_array_equal(
        jax.jit(default.apply)(params, x), jax.jit(explicit.apply)(params, x)
    )
    # Per-axis window (1, 2, 3) on odd sizes: floor, against a float64 loop.
    from medjax.models import pooling

    v = np.random.default_rng(2).normal(size=(2, 3, 5, 7, 2))
    ref = np.zeros((2, 3, 2, 2, 2))
    for i in range(3):
        for j in range(2):
            for k in range(2):
                ref[:, i, j, k] = v[:, i, 2 * j : 2 * j + 2, 3 * k : 3 * k + 3].max(axis=(1, 2))
    got = pooling.max_pool(jnp.asarray(v, jnp.float32), (1, 2, 3))
    np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=1e-6)
