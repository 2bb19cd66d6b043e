"""UNet++: shapes 2D/3D, nested wiring (count, depth-2 equals UNet), deep supervision, training.

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
from medjax.losses import compound


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


def _init(model, x):
    return jax.jit(lambda k: model.init(k, x[:1], train=False))(jax.random.key(0))


@pytest.mark.parametrize(
    "shape", [(2, 32, 32, 1), (2, 24, 20, 1), (2, 16, 16, 16, 2), (2, 8, 12, 16, 1)]
)
def test_shapes_2d_and_3d(shape):
    model = registry.lookup("models", "unetpp", depth=3, features=4, out_channels=3)
    x = jnp.zeros(shape)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    out, _ = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x
    )
    assert out.shape == (*shape[:-1], 3) and out.dtype == jnp.float32
    # Nodes X^{i,j} with i + j <= 2, plus the upsamplings that feed the nested ones.
    nodes = {"x0_0", "x1_0", "x2_0", "x0_1", "x1_1", "x0_2"}
    assert nodes | {"up0_1", "up1_1", "up0_2", "head"} == set(variables["params"])


def test_rejects_sizes_not_divisible_and_bad_names():
    model = registry.lookup("models", "unetpp", depth=3, features=4)
    with pytest.raises(errors.ConfigError, match="divisible by 4"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 30, 32, 1)))
    with pytest.raises(errors.ConfigError, match="divisible by 4"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 15, 16, 16, 1)))
    with pytest.raises(errors.ConfigError, match="last_activation"):
        registry.lookup("models", "UNetPlusPlus", last_activation="tanh")
    with pytest.raises(errors.ConfigError, match="3 levels but depth=4"):
        registry.lookup("models", "unetpp", depth=4, features=(4, 8, 16))


@pytest.mark.parametrize("deep_supervision, expected", [(False, 8161), (True, 8166)])
def test_parameter_count_matches_hand_count(deep_supervision, expected):
    # The hand count is in UNetPlusPlus's docstring.
    model = registry.lookup(
        "models",
        "unetpp",
        depth=3,
        features=4,
        use_batch_norm=False,
        deep_supervision=deep_supervision,
    )
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    assert sum(x.size for x in jax.tree.leaves(params)) == expected


def test_depth_two_is_the_plain_unet():
    # With one level of nesting UNet++ has exactly UNet's layers: X00=enc0, X10=enc1,
    # up0_1=up0, X01=dec0. Copying the weights over must give the same logits.
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    kwargs = {"depth": 2, "features": 4, "use_batch_norm": False}
    plus = registry.lookup("models", "unetpp", **kwargs)
    plain = registry.lookup("models", "unet", **kwargs)
    v = _init(plus, x)
    rename = {"x0_0": "enc0", "x1_0": "enc1", "up0_1": "up0", "x0_1": "dec0", "head": "head"}
    # tree.map copies the nested dicts, so editing one below leaves ``v`` intact.
    v_plain = {"params": {rename[k]: jax.tree.map(jnp.asarray, p) for k, p in v["params"].items()}}
    # UNet++ concatenates [skip, up] (the paper's order), UNet [up, skip]: swap input halves.
    conv = v_plain["params"]["dec0"]["ConvNormAct_0"]["Conv_0"]
    conv["kernel"] = jnp.concatenate([conv["kernel"][:, :, 4:], conv["kernel"][:, :, :4]], axis=2)
    np.testing.assert_allclose(
        jax.jit(plus.apply)(v, x), jax.jit(plain.apply)(v_plain, x), rtol=1e-5, atol=1e-6
    )


def test_deep_supervision_outputs_full_resolution_final_first():
    model = registry.lookup(
        "models", "unetpp", depth=3, features=4, norm="instance", deep_supervision=True
    )
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 4, 1))
    # The trainer initialises with train=False; the deep-supervision heads must exist anyway.
    variables = _init(model, x)
    assert {"head", "ds1"} <= set(variables["params"])
    outs, final = jax.jit(
        lambda v, x: (model.apply(v, x, train=True), model.apply(v, x, train=False))
    )(variables, x)
    assert [o.shape for o in outs] == [(2, 8, 8, 4, 1)] * 2
    # Instance norm has no train/eval difference, so the first output is the eval output.
    np.testing.assert_allclose(outs[0], final, rtol=1e-5, atol=1e-6)
    assert not np.allclose(outs[0], outs[1])


def test_one_adam_step_lowers_deep_supervised_dice_ce_2d():
    model = registry.lookup("models", "unetpp", depth=3, features=4, deep_supervision=True)
    # Zhou et al. weight the full-resolution outputs equally. (The trainer's default weights,
    # made for outputs of decreasing resolution, would give the last one weight 0.)
    loss_fn = compound.deep_supervision(registry.lookup("losses", "dice_ce"), (0.5, 0.5))
    image, label = _disc_batch((8, 32, 32, 1))
    variables = _init(model, image)
    params, stats = variables["params"], variables["batch_stats"]
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
    # Both supervised heads received a gradient.
    assert np.abs(grads["ds1"]["kernel"]).sum() > 0


def test_sharded_logits_equal_unsharded_3d():
    model = registry.lookup("models", "unetpp", depth=2, features=4)
    image, _ = _disc_batch((8, 16, 16, 16, 1))
    variables = _init(model, image)

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
        "models", "unetpp", depth=3, features=4, residual=True, remat=True, dtype="bfloat16"
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
    assert "proj" in variables["params"]["x0_0"]  # residual blocks project 1 -> 4 channels
