"""DeepLabV3+: any (odd or even) size in 2D/3D, output strides, dilation rule, convs, training.

No size requirement: strided layers give ``ceil(size / 2)`` and the logits are resized back to
the input's size, so odd sizes such as 33x31 or 17x15x13 are tested.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from medjax import errors, registry
from medjax.models import deeplab

TINY = {"resnet_depth": 10, "features": 4, "aspp_features": 8}


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


# Each rank with an even and an odd size, each output stride twice.
@pytest.mark.parametrize(
    "shape, output_stride",
    [((2, 32, 32, 1), 16), ((2, 33, 31, 2), 8), ((2, 16, 16, 16, 1), 8), ((2, 17, 15, 13, 1), 16)],
)
def test_shapes_2d_and_3d_any_size(shape, output_stride):
    model = registry.lookup(
        "models",
        "deeplab",
        **{**TINY, "resnet_depth": 18},
        out_channels=3,
        output_stride=output_stride,
    )
    x = jnp.zeros(shape)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    out, _ = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x
    )
    assert out.shape == (*shape[:-1], 3) and out.dtype == jnp.float32
    # The encoder's two outputs sit at strides 4 and output_stride (ceil at every halving).
    encoder = deeplab.DilatedResNet(deeplab.STAGES[18], (4, 8, 16, 32), output_stride, "batch")
    low, high = jax.eval_shape(
        lambda v, x: encoder.apply(v, x, train=False),
        {
            "params": variables["params"]["encoder"],
            "batch_stats": variables["batch_stats"]["encoder"],
        },
        x,
    )

    def ceil_halvings(size: int, times: int) -> int:
        for _ in range(times):
            size = math.ceil(size / 2)
        return size

    spatial = shape[1:-1]
    assert low.shape == (2, *(ceil_halvings(s, 2) for s in spatial), 4)
    halvings = int(math.log2(output_stride))
    assert high.shape == (2, *(ceil_halvings(s, halvings) for s in spatial), 32)


def _convs(jaxpr) -> list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(kernel spatial shape, strides, dilation) of every convolution, in program order."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            kernel = eqn.invars[1].aval.shape[:-2]  # flax kernels are [*spatial, in, out]
            found.append((kernel, eqn.params["window_strides"], eqn.params["rhs_dilation"]))
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                found += _convs(inner)
    return found


@pytest.mark.parametrize(
    "output_stride, stage3, stage4",
    [(16, [1, 1, 1, 1], [1, 1, 2, 2]), (8, [1, 1, 2, 2], [2, 2, 4, 4])],
)
def test_dilation_follows_torchvision_rule(output_stride, stage3, stage4):
    # ResNet-18 stages 3 and 4 have 2 basic blocks (two 3x3 convs each). A dilated stage keeps
    # the previous dilation in its first block and doubles it from the second block on.
    encoder = deeplab.DilatedResNet(deeplab.STAGES[18], (4, 8, 16, 32), output_stride, "none")
    x = jnp.zeros((1, 32, 32, 1))
    variables = jax.eval_shape(lambda k: encoder.init(k, x, train=False), jax.random.key(0))
    convs = _convs(jax.make_jaxpr(lambda v: encoder.apply(v, x, train=False))(variables).jaxpr)
    three = [(s, d) for k, s, d in convs if k == (3, 3)]
    assert len(three) == 16  # 4 stages x 2 blocks x 2 convs
    assert [d[0] for _, d in three[8:12]] == stage3
    assert [d[0] for _, d in three[12:]] == stage4
    strides = [s[0] for s, _ in three]
    expected = [1, 1, 1, 1, 2, 1, 1, 1] + ([2] if output_stride == 16 else [1]) + [1] * 7
    assert strides == expected


@pytest.mark.parametrize("kernel, strides, dilation", [(3, 1, 2), (3, 2, 1), (7, 2, 1), (3, 1, 3)])
def test_conv_padding_matches_float64_reference(kernel, strides, dilation):
    x = jax.random.normal(jax.random.key(4), (1, 7, 10, 2))
    layer = deeplab.ConvNormAct(3, kernel, strides, dilation, norm="none", act=False)
    v = jax.jit(layer.init, static_argnums=2)(jax.random.key(5), x, False)
    out = jax.jit(layer.apply, static_argnums=2)(v, x, False)
    w = np.asarray(v["params"]["Conv_0"]["kernel"], np.float64)
    b = np.asarray(v["params"]["Conv_0"]["bias"], np.float64)
    pad = dilation * (kernel - 1) // 2
    xp = np.pad(np.asarray(x, np.float64)[0], ((pad, pad), (pad, pad), (0, 0)))
    rows, cols = math.ceil(7 / strides), math.ceil(10 / strides)
    ref = np.zeros((rows, cols, 3))
    for r in range(rows):
        for c in range(cols):
            for a in range(kernel):
                for e in range(kernel):
                    ref[r, c] += (
                        xp[r * strides + a * dilation, c * strides + e * dilation] @ w[a, e]
                    )
    np.testing.assert_allclose(out[0], ref + b, rtol=1e-5, atol=1e-5)


def test_parameter_count_matches_hand_count():
    # The hand count is in DeepLabV3Plus's docstring.
    for output_stride in (8, 16):
        model = registry.lookup(
            "models",
            "deeplabv3plus",
            **TINY,
            low_level_features=4,
            out_channels=2,
            use_batch_norm=False,
            output_stride=output_stride,
        )
        params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
        assert sum(x.size for x in jax.tree.leaves(params["params"])) == 28766


def test_rejects_bad_settings():
    with pytest.raises(errors.ConfigError, match="output_stride"):
        registry.lookup("models", "deeplab", output_stride=32)
    with pytest.raises(errors.ConfigError, match="resnet_depth"):
        registry.lookup("models", "deeplab", resnet_depth=42)
    with pytest.raises(errors.ConfigError, match="deep_supervision"):
        registry.lookup("models", "DeepLabV3Plus", deep_supervision=True)
    with pytest.raises(errors.ConfigError, match="norm"):
        registry.lookup("models", "deeplab", norm="layer")


def test_image_pooling_branch_survives_instance_norm():
    # Instance norm of the single pooled voxel would be constant; the branch skips the norm.
    model = registry.lookup("models", "deeplab", **TINY, norm="instance")
    x = jnp.zeros((1, 16, 16, 1))
    params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    assert set(params["aspp"]["pool"]["Conv_0"]) == {"kernel", "bias"}
    assert "GroupNorm_0" not in params["aspp"]["pool"]
    assert "GroupNorm_0" in params["aspp"]["project"]


def test_one_adam_step_lowers_dice_ce_2d():
    model = registry.lookup("models", "deeplab", **TINY)
    loss_fn = registry.lookup("losses", "dice_ce")
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


def test_sharded_logits_equal_unsharded_3d():
    model = registry.lookup("models", "deeplab", **TINY, output_stride=8)
    image, _ = _disc_batch((8, 16, 16, 16, 1))
    variables = _init(model, image)

    def forward(variables, x):
        # Training mode: batch norm (image pooling too) must use global-batch statistics.
        return model.apply(variables, x, train=True, mutable=["batch_stats"])[0]

    expected = jax.jit(forward)(variables, image)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    batch_sh, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    sharded = jax.device_put(image, batch_sh)
    assert len(sharded.sharding.device_set) == 8
    with jax.set_mesh(mesh):
        got = jax.jit(forward, in_shardings=(replicated, batch_sh))(variables, sharded)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=3e-5 * np.abs(expected).max())


def test_options_remat_bf16_trace():
    model = registry.lookup("models", "deeplab", **TINY, remat=True, dtype="bfloat16")
    x = jnp.zeros((2, 17, 16, 9, 1), jnp.bfloat16)
    variables = jax.eval_shape(lambda k: model.init(k, x, train=False), jax.random.key(0))

    def loss(params, stats):
        logits, _ = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        assert logits.dtype == jnp.float32 and logits.shape == (2, 17, 16, 9, 1)
        return jnp.mean(logits)

    grads = jax.eval_shape(jax.grad(loss), variables["params"], variables["batch_stats"])
    assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])
