"""Checks every classifier must pass (shapes, one Adam step, sharding) and the shared helpers.

Each model runs tiny (widths of 4-16, inputs of at most 16^3) and jitted. Compile time is the
cost here, so: shapes are checked abstractly (``jax.eval_shape``, no compile); parameters are
initialised once per model (they do not depend on the batch size) with an ``rbg`` key and XLA's
cheap optimisation level, because each random initialiser costs XLA:CPU about a second to
compile; inputs come from numpy. Per-model details are in ``test_<model>.py``.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from medjax import errors, registry
from medjax.models import classifiers

# Test id -> (registry name, tiny kwargs); built through the registry, as the trainer does.
TINY = {
    "luna": ("luna", dict(channels=4, num_classes=3)),
    "resnet_gn": ("resnet", dict(depth=18, width=8, num_classes=3, small_input=True, norm="group")),
    "resnet_bn": ("resnet", dict(depth=18, width=8, num_classes=3)),
    "efficientnet": ("efficientnet", dict(width_scale=0.25, depth_scale=0.1, num_classes=3)),
    "vit": ("vit", dict(patch_size=4, width=16, depth=2, num_heads=2, mlp_dim=32, num_classes=3)),
}
# One 2D and one 3D input per model, each mixing even and odd sizes where the model allows.
SHAPES = {
    "luna": [(16, 17), (17, 16, 19)],
    "resnet_gn": [(16, 17), (15, 16, 9)],
    "resnet_bn": [(33, 32), (17, 16, 15)],
    "efficientnet": [(17, 16), (15, 16, 11)],
    "vit": [(12, 16), (8, 12, 16)],  # multiples of the patch; odd sizes in test_vit.py
}


def _build(name: str) -> nn.Module:
    registry_name, kwargs = TINY[name]
    return registry.lookup("models", registry_name, **kwargs)


# These programs run once or twice on tiny inputs: optimising them costs more than it saves.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@functools.cache
def _variables(name: str) -> dict:
    """The tiny model's variables, initialised once per test session (from a 16^3 input)."""
    init = jax.jit(functools.partial(_build(name).init, train=False), compiler_options=FAST_COMPILE)
    return init(jax.random.key(0, impl="rbg"), jnp.zeros((2, 16, 16, 16, 1)))


def _normal(seed: int, shape: tuple[int, ...]) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _softmax_ce(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy written out (not optax's), in float32."""
    logp = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_shapes_2d_3d(name):
    model = _build(name)
    for spatial in SHAPES[name]:
        x = jax.ShapeDtypeStruct((2, *spatial, 1), jnp.float32)
        init = functools.partial(model.init_with_output, train=False)
        logits, variables = jax.eval_shape(init, jax.random.key(0), x)
        assert logits.shape == (2, 3) and logits.dtype == jnp.float32, spatial
        train_logits, _ = jax.eval_shape(
            functools.partial(model.apply, train=True, mutable=["batch_stats"]), variables, x
        )
        assert train_logits.shape == (2, 3), spatial


@pytest.mark.parametrize("name", sorted(TINY))
def test_one_adam_step_lowers_loss(name):
    model = _build(name)
    x = _normal(1, (4, 16, 16, 16, 1))
    y = jnp.asarray([0, 1, 2, 1], jnp.int32)
    variables = _variables(name)
    params = variables["params"]

    def loss_fn(p):
        v = {**variables, "params": p}
        if "batch_stats" in v:  # training-mode batch norm: batch statistics, updates dropped
            logits, _ = model.apply(v, x, train=True, mutable=["batch_stats"])
        else:
            logits = model.apply(v, x, train=True)
        return _softmax_ce(logits, y)

    value_and_grad = jax.jit(jax.value_and_grad(loss_fn), compiler_options=FAST_COMPILE)
    tx = optax.adam(1e-3)
    loss0, grads = value_and_grad(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    loss1, _ = value_and_grad(optax.apply_updates(params, updates))  # same shapes: no recompile
    assert float(loss1) < float(loss0) - 1e-4, (float(loss0), float(loss1))


@pytest.mark.parametrize("name", sorted(TINY))
def test_sharded_batch_matches_unsharded(name):
    model = _build(name)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    x = _normal(2, (8, 16, 16, 16, 1))
    # Perturb every parameter so that no output is trivially zero (ViT's head starts at zero).
    rng = np.random.default_rng(3)
    variables = jax.tree.map(
        lambda a: a + 0.05 * rng.normal(size=a.shape).astype(np.float32), _variables(name)
    )
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False), compiler_options=FAST_COMPILE)
    ref = np.asarray(forward(variables, x))
    batch_sh = NamedSharding(mesh, P("data"))
    out = forward(jax.device_put(variables, NamedSharding(mesh, P())), jax.device_put(x, batch_sh))
    assert out.shape == (8, 3)
    assert out.sharding.is_equivalent_to(batch_sh, out.ndim)
    assert np.isfinite(ref).all() and np.std(ref) > 0
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


# --- shared helpers --------------------------------------------------------------------------


def test_registry_names():
    assert {"luna", "LunaModel", "resnet", "efficientnet", "vit"} <= set(registry.names("models"))


def test_make_norm_kinds():
    x = _normal(3, (2, 4, 4, 24)) * 3.0 + 1.0
    group = classifiers.make_norm("group", 24, train=True)
    y = group.apply(group.init(jax.random.key(0, impl="rbg"), x), x)
    # gcd(32, 24) = 8 groups of 3 channels, normalised over space and the group (float64 ref).
    xg = np.asarray(x, np.float64).reshape(2, 4, 4, 8, 3)
    ref = (xg - xg.mean((1, 2, 4), keepdims=True)) / np.sqrt(
        xg.var((1, 2, 4), keepdims=True) + 1e-5
    )
    np.testing.assert_allclose(y, ref.reshape(x.shape), rtol=1e-4, atol=1e-4)
    inst = classifiers.make_norm("instance", 24, train=True)
    y = inst.apply(inst.init(jax.random.key(0, impl="rbg"), x), x)
    xi = np.asarray(x, np.float64)
    ref = (xi - xi.mean((1, 2), keepdims=True)) / np.sqrt(xi.var((1, 2), keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(errors.ConfigError, match="norm"):
        classifiers.make_norm("layer", 24, train=True)


def test_spatial_rank_and_helpers():
    assert classifiers.spatial_rank(jnp.zeros((1, 4, 4, 2)), 2, "m") == 2
    assert classifiers.spatial_rank(jnp.zeros((1, 4, 4, 4, 2)), None, "m") == 3
    with pytest.raises(ValueError):
        classifiers.spatial_rank(jnp.zeros((1, 4, 2)), None, "m")
    with pytest.raises(errors.ConfigError, match="in_channels"):
        classifiers.spatial_rank(jnp.zeros((1, 4, 4, 2)), 1, "m")
    assert classifiers.count_params({"a": jnp.zeros((2, 3)), "b": [jnp.zeros(4)]}) == 10
    assert classifiers.pad_same(5, 3) == ((2, 2),) * 3
    x = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    np.testing.assert_allclose(classifiers.global_avg_pool(jnp.asarray(x)), x.mean((1, 2)))
