"""Attention UNet: shapes 2D/3D, the gate against a float64 reference, counts, training, sharding.

Required sizes: every spatial size divisible by ``2**(depth-1)`` (even non-powers of two such as
24 or 20 work at depth 3); other sizes are rejected with a ConfigError.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from medjax import errors, registry
from medjax.models import attention_unet


@pytest.fixture(autouse=True, scope="module")
def _fast_compiles():
    """Compiling without most XLA passes cuts this file's CPU time several-fold (STYLE sec. 10)."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def _disc_batch(shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """A fixed batch: noisy images whose label is a centred ball of radius 1/4 of the size."""
    spatial = shape[1:-1]
    grid = np.stack(np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in spatial], indexing="ij"))
    ball = (np.sqrt((grid**2).sum(0)) < min(spatial) / 4).astype(np.int32)
    labels = np.broadcast_to(ball, (shape[0], *spatial))
    noise = np.random.default_rng(0).normal(0, 0.5, shape)
    return jnp.asarray(labels[..., None] + noise, jnp.float32), jnp.asarray(labels)


@pytest.mark.parametrize(
    "shape", [(2, 32, 32, 1), (2, 24, 20, 1), (2, 16, 16, 16, 2), (2, 8, 12, 16, 1)]
)
def test_shapes_2d_and_3d(shape):
    model = registry.lookup("models", "attention_unet", depth=3, features=4, out_channels=3)
    x = jnp.zeros(shape)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    out, _ = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x
    )
    assert out.shape == (*shape[:-1], 3) and out.dtype == jnp.float32
    assert set(variables["params"]) >= {"gate0", "gate1"}


def test_rejects_sizes_not_divisible_and_bad_names():
    model = registry.lookup("models", "attention_unet", depth=3, features=4)
    with pytest.raises(errors.ConfigError, match="divisible by 4"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 30, 32, 1)))
    with pytest.raises(errors.ConfigError, match="divisible by 4"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 17, 1)))
    with pytest.raises(errors.ConfigError, match="last_activation"):
        registry.lookup("models", "attention_unet", last_activation="tanh")
    with pytest.raises(errors.ConfigError, match="norm"):
        registry.lookup("models", "AttentionUNet", norm="layer")


def test_parameter_count_matches_hand_count():
    # The hand count is in AttentionUNet's docstring: UNet's 1657 + gate 32 + 18 + 3 = 1710.
    model = registry.lookup("models", "attention_unet", depth=2, features=4, use_batch_norm=False)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    assert sum(x.size for x in jax.tree.leaves(params)) == 1710


def _upsample2_linear(a: np.ndarray, axis: int) -> np.ndarray:
    """Half-pixel linear 2x upsampling along ``axis`` with edge clamping (float64 reference).

    Output ``2k`` lies a quarter voxel before input ``k``, output ``2k+1`` a quarter after.
    """
    a = np.moveaxis(a, axis, 0)
    prev = np.concatenate([a[:1], a[:-1]])
    nxt = np.concatenate([a[1:], a[-1:]])
    out = np.empty((2 * a.shape[0], *a.shape[1:]))
    out[0::2] = 0.75 * a + 0.25 * prev
    out[1::2] = 0.75 * a + 0.25 * nxt
    return np.moveaxis(out, 0, axis)


@pytest.mark.parametrize("nd", [2, 3])
def test_attention_gate_matches_float64_reference(nd):
    kx, kg, kp = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(kx, (2, *(4,) * nd, 3))
    g = jax.random.normal(kg, (2, *(2,) * nd, 5))
    gate = attention_unet.AttentionGate(inter_features=2)
    v = jax.jit(gate.init)(kp, x, g)
    # Non-zero biases so that every term of the formula is exercised.
    v = jax.tree.map(lambda p: p + 0.1, v)
    out, state = jax.jit(lambda v, x, g: gate.apply(v, x, g, mutable=["intermediates"]))(v, x, g)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), v["params"])
    xn, gn = np.asarray(x, np.float64), np.asarray(g, np.float64)
    # W_x: each gating voxel sees its 2^nd block of the skip.
    theta = np.zeros((2, *(2,) * nd, 2))
    for idx in np.ndindex(*(2,) * nd):
        block = xn[(slice(None), *(slice(2 * i, 2 * i + 2) for i in idx))]
        theta[(slice(None), *idx)] = np.tensordot(
            block, p["W_x"]["kernel"], axes=(list(range(1, nd + 2)), list(range(nd + 1)))
        )
    phi = gn @ p["W_g"]["kernel"] + p["W_g"]["bias"]
    q = np.maximum(theta + phi, 0) @ p["psi"]["kernel"] + p["psi"]["bias"]
    alpha = 1 / (1 + np.exp(-q))
    for axis in range(1, nd + 1):
        alpha = _upsample2_linear(alpha, axis)
    np.testing.assert_allclose(state["intermediates"]["alpha"][0], alpha, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, xn * alpha, rtol=1e-5, atol=1e-6)
    assert 0 < alpha.min() and alpha.max() < 1


def test_deep_supervision_levels_and_heads_created_at_eval_init():
    model = registry.lookup(
        "models", "attention_unet", depth=3, features=4, norm="instance", deep_supervision=True
    )
    x = jnp.zeros((2, 16, 16, 8, 1))
    # The trainer initialises with train=False; the deep-supervision heads must exist anyway.
    variables = jax.eval_shape(lambda k: model.init(k, x, train=False), jax.random.key(0))
    outs = jax.eval_shape(lambda v: model.apply(v, x, train=True), variables)
    assert [o.shape for o in outs] == [(2, 16, 16, 8, 1), (2, 8, 8, 4, 1)]
    assert jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape == x.shape


def _train_state(model, x):
    variables = jax.jit(lambda k: model.init(k, x[:1], train=False))(jax.random.key(0))
    return variables["params"], variables.get("batch_stats", {})


def test_one_adam_step_lowers_dice_ce_2d():
    model = registry.lookup("models", "attention_unet", depth=3, features=4)
    loss_fn = registry.lookup("losses", "dice_ce")
    image, label = _disc_batch((8, 32, 32, 1))
    params, stats = _train_state(model, image)
    tx = optax.adam(1e-3)

    def loss(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": stats}, image, train=True, mutable=["batch_stats"]
        )
        return jnp.mean(loss_fn(logits, label))

    loss_and_grad = jax.jit(jax.value_and_grad(loss))  # one compilation for both evaluations
    before, grads = loss_and_grad(params)
    # Jitted: eagerly, Adam's per-leaf ops would each be compiled on their own.
    updates, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
    after, _ = loss_and_grad(jax.jit(optax.apply_updates)(params, updates))
    assert np.isfinite(before) and after < before


def test_sharded_logits_equal_unsharded_3d():
    model = registry.lookup("models", "attention_unet", depth=2, features=4)
    image, _ = _disc_batch((8, 16, 16, 16, 1))
    params, stats = _train_state(model, image)
    variables = {"params": params, "batch_stats": stats}

    def forward(variables, x):
        # Training mode: batch norm must use the statistics of the global batch.
        return model.apply(variables, x, train=True, mutable=["batch_stats"])[0]

    expected = jax.jit(forward)(variables, image)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    batch_sh, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    sharded = jax.device_put(image, batch_sh)
    assert len(sharded.sharding.device_set) == 8
    with jax.set_mesh(mesh):
        got = jax.jit(forward, in_shardings=(replicated, batch_sh))(variables, sharded)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=3e-5 * np.abs(expected).max())


def test_options_residual_remat_bf16_trace():
    model = registry.lookup(
        "models", "attention_unet", depth=3, features=4, residual=True, remat=True, dtype="bfloat16"
    )
    x = jnp.zeros((2, 16, 16, 8, 1), jnp.bfloat16)
    variables = jax.eval_shape(lambda k: model.init(k, x, train=False), jax.random.key(0))

    def loss(params, stats):
        logits, _ = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        assert logits.dtype == jnp.float32  # logits are float32 whatever the compute dtype
        return jnp.mean(logits)

    grads = jax.eval_shape(jax.grad(loss), variables["params"], variables["batch_stats"])
    assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])
    assert "proj" in variables["params"]["enc0"]  # residual blocks project 1 -> 4 channels
