"""layers: the im2col and depth2d convolutions equal XLA's and a float64 reference; the impl
selector."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from medjax import errors
from medjax.models import conv_impls, layers, pooling
from medjax.testing import jaxprs


def _numpy_conv(x, k, strides, pads):
    """Independent float64 cross-correlation: ``x [B, *S, I]``, ``k [*K, I, O]``, explicit pads."""
    x, k = np.asarray(x, np.float64), np.asarray(k, np.float64)
    nd = x.ndim - 2
    x = np.pad(x, [(0, 0), *pads, (0, 0)])
    out_shape = [(x.shape[1 + a] - k.shape[a]) // strides[a] + 1 for a in range(nd)]
    out = np.zeros((x.shape[0], *out_shape, k.shape[-1]))
    for offset in itertools.product(*(range(s) for s in k.shape[:nd])):
        view = x[
            (
                slice(None),
                *(
                    slice(o, o + (m - 1) * s + 1, s)
                    for o, m, s in zip(offset, out_shape, strides, strict=True)
                ),
            )
        ]
        out += view @ k[offset]
    return out


EPS32 = float(np.finfo(np.float32).eps)


def _float64(fn, *args):
    """``fn(*args)`` computed in float64 (jax x64 on for this call only), as numpy arrays."""
    with jax.enable_x64(True):
        args64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), args)
        out = jax.jit(fn)(*args64)
        assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(out))
        return jax.tree.map(np.asarray, out)


def _assert_close_to_float64(got, ref, c=64):
    """float32 results vs a float64 reference, ``atol = c * eps32 * max|ref|`` over the tree.

    Different algorithms (and one algorithm on different CPUs) sum in different orders; the
    rounding error scales with the magnitude of what flows through, not with a fixed atol (a
    fixed 1e-5 failed on an Intel Xeon, issue 15). A wrong formulation errs by O(max|ref|).
    """
    ref_leaves = jax.tree.leaves(ref)
    atol = c * EPS32 * max(float(np.abs(r).max()) for r in ref_leaves)
    for g, r in zip(jax.tree.leaves(got), ref_leaves, strict=True):
        np.testing.assert_allclose(np.asarray(g, np.float64), r, rtol=0, atol=atol)


def _same_pads(spatial, ksize, strides):
    # TensorFlow/XLA 'SAME': output ceil(n / s), the odd extra voxel of padding goes after.
    pads = []
    for n, k, s in zip(spatial, ksize, strides, strict=True):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


CASES = [
    # (input shape, kernel size, strides, padding)
    ((2, 7, 6, 3), (3, 3), (1, 1), "SAME"),
    ((2, 7, 6, 3), (3, 3), (2, 2), "SAME"),
    ((1, 8, 9, 2), (2, 4), (1, 2), "SAME"),  # even kernels: uneven SAME padding
    ((2, 5, 6, 7, 2), (3, 3, 3), (1, 1, 1), "SAME"),
    ((1, 6, 5, 7, 3), (3, 1, 3), (2, 1, 2), "SAME"),
    ((1, 6, 5, 4, 2), (3, 3, 3), (1, 1, 1), "VALID"),
    ((1, 6, 5, 4, 2), (3, 3, 3), (1, 1, 1), ((1, 0), (2, 1), (0, 0))),
    ((1, 7, 5, 4, 2), (2, 3, 3), (2, 1, 1), ((0, 1), (1, 1), (1, 1))),  # even depth kernel, stride
]


@pytest.mark.parametrize("impl", ["im2col", "depth2d"])
@pytest.mark.parametrize("shape,ksize,strides,padding", CASES)
def test_formulation_equals_float64_reference_and_xla(impl, shape, ksize, strides, padding):
    # depth2d hands 2D convolutions to lax (its fallback): those cases check the fallback.
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    k = rng.standard_normal((*ksize, shape[-1], 4)).astype(np.float32)
    nd = len(ksize)
    numbers = ("NHWC", "HWIO", "NHWC") if nd == 2 else ("NDHWC", "DHWIO", "NDHWC")
    conv = conv_impls.conv_general_dilated_fn(impl)
    ours = conv(x, k, strides, padding, dimension_numbers=numbers)
    xla = lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=numbers)
    if padding == "SAME":
        pads = _same_pads(shape[1:-1], ksize, strides)
    elif padding == "VALID":
        pads = [(0, 0)] * nd
    else:
        pads = padding
    ref = _numpy_conv(x, k, strides, pads)
    assert ours.shape == ref.shape == xla.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(xla, ref, rtol=1e-5, atol=1e-4)


def test_unsupported_configuration_falls_back_to_lax():
    # Dilation is not im2col's business: the same map must still come out (via lax).
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 9, 9, 2)).astype(np.float32)
    k = rng.standard_normal((3, 3, 2, 3)).astype(np.float32)
    numbers = ("NHWC", "HWIO", "NHWC")
    kw = dict(rhs_dilation=(2, 2), dimension_numbers=numbers)
    ours = conv_impls.im2col_conv_general_dilated(x, k, (1, 1), "SAME", **kw)
    ref = lax.conv_general_dilated(x, k, (1, 1), "SAME", **kw)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
    # Manual check of one output voxel of the dilated map, away from the border.
    manual = sum(
        x[0, 4 + 2 * (i - 1), 4 + 2 * (j - 1)] @ k[i, j] for i in range(3) for j in range(3)
    )
    np.testing.assert_allclose(ours[0, 4, 4], manual, rtol=1e-5)


@pytest.mark.parametrize("nd", [2, 3])
def test_conv_impls_equal_nn_conv_values_and_gradients(nd):
    x = jax.random.normal(jax.random.key(0), (2, *(6,) * nd, 3))
    ref_mod = nn.Conv(5, (3,) * nd, padding="SAME")
    variables = jax.jit(ref_mod.init)(jax.random.key(1), x)

    def loss(mod, params, x, fn=jnp.sin):
        y = mod.apply({"params": params}, x)
        return jnp.sum(fn(y) * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size)

    ref_val, ref_grads = _float64(
        lambda p, x: jax.value_and_grad(loss, argnums=(1, 2))(ref_mod, p, x), variables["params"], x
    )
    # The loss's rounding scale is the sum of its terms' magnitudes, not its (cancelling) value:
    # |sin| <= 1 plus the conv's own sums of |x * k| (sin is 1-Lipschitz), weighted as the loss.
    val_scale = _float64(
        lambda p, x: loss(ref_mod, jax.tree.map(jnp.abs, p), jnp.abs(x), lambda y: 1.0 + y),
        variables["params"],
        x,
    )
    for impl in conv_impls.CONV_IMPLS:
        mod = layers.conv(5, 3, nd, impl=impl)
        mine = jax.jit(mod.init)(jax.random.key(1), x)
        # Same parameter names, shapes and initial values as nn.Conv: checkpoints are shared.
        jax.tree.map(np.testing.assert_array_equal, mine, variables)
        val, grads = jax.jit(jax.value_and_grad(loss, argnums=(1, 2)), static_argnums=0)(
            mod, variables["params"], x
        )
        assert abs(float(val) - ref_val) <= 64 * EPS32 * val_scale
        _assert_close_to_float64(grads, ref_grads)


@pytest.mark.parametrize("nd", [2, 3])
def test_conv_norm_act_impls_share_parameters_and_outputs(nd):
    x = jax.random.normal(jax.random.key(2), (2, *(4,) * nd, 2))
    outs, trees = {}, {}

    def loss(mod, p, x):
        return jnp.sum(mod.apply({"params": p}, x, train=True) ** 2)

    for impl in ("xla", "im2col"):
        mod = layers.ConvBlock(4, norm="instance", impl=impl)
        variables = jax.jit(mod.init, static_argnames="train")(jax.random.key(3), x, train=False)
        trees[impl] = jax.tree.map(np.shape, variables)
        outs[impl] = jax.jit(jax.grad(lambda p, m=mod: loss(m, p, x)))(variables["params"])
    assert trees["xla"] == trees["im2col"]
    kernel = trees["xla"]["params"]["ConvNormAct_0"]["Conv_0"]["kernel"]
    assert kernel == (*(3,) * nd, 2, 4)
    # Both float32 gradients against one float64 reference (the same parameters for both).
    ref_mod = layers.ConvBlock(4, norm="instance", impl="xla")
    ref = _float64(jax.grad(lambda p, x: loss(ref_mod, p, x)), variables["params"], x)
    for impl in ("xla", "im2col"):
        _assert_close_to_float64(outs[impl], ref)


def test_auto_picks_depth2d_for_3d_on_cpu_only():
    assert conv_impls.auto_conv_impl(3, "cpu") == "depth2d"
    assert conv_impls.auto_conv_impl(3, "cpu", spatial=(4, 16, 16)) == "depth2d"
    assert conv_impls.auto_conv_impl(3, "cpu", spatial=(32, 8, 8)) == "im2col"  # tiny plane
    assert conv_impls.auto_conv_impl(2, "cpu") == "xla"
    assert conv_impls.auto_conv_impl(3, "gpu") == "xla"
    assert conv_impls.auto_conv_impl(3, "tpu", spatial=(4, 4, 4)) == "xla"
    assert jax.default_backend() == "cpu"  # conftest pins the CPU backend
    # Decided at trace time from the static shape: depth2d traces a 2D convolution (rank-4
    # input), im2col none, and 2D inputs keep XLA's convolution.
    for shape, ranks in (((1, 4, 12, 12, 2), [4]), ((1, 4, 4, 4, 2), []), ((1, 4, 4, 2), [4])):
        x = jnp.zeros(shape)
        mod = layers.conv(3, 3, len(shape) - 2, impl="auto")
        variables = jax.eval_shape(mod.init, jax.random.key(0), x)
        assert jaxprs.conv_input_ranks(jax.make_jaxpr(mod.apply)(variables, x).jaxpr) == ranks


def test_bfloat16_follows_nn_conv_dtype_rules():
    x = jax.random.normal(jax.random.key(4), (1, 4, 4, 4, 3))
    for impl in ("xla", "im2col"):
        mod = layers.ConvNormAct(4, norm="none", dtype=jnp.bfloat16, impl=impl)
        variables = jax.jit(mod.init, static_argnames="train")(jax.random.key(5), x, train=False)
        y = jax.jit(mod.apply, static_argnames="train")(variables, x, train=False)
        assert y.dtype == jnp.bfloat16
        mod32 = layers.ConvNormAct(4, norm="none", impl=impl)
        y32 = jax.jit(mod32.apply, static_argnames="train")(variables, x, train=False)
        np.testing.assert_allclose(y.astype(jnp.float32), y32, rtol=0.05, atol=0.05)


def test_unknown_impl_is_a_config_error():
    with pytest.raises(errors.ConfigError, match="im2col"):
        conv_impls.conv_general_dilated_fn("winograd")
    with pytest.raises(errors.ConfigError, match="winograd"):
        layers.ConvNormAct(4, impl="winograd").init(
            jax.random.key(0), jnp.zeros((1, 4, 4, 1)), train=False
        )


def test_conv_impl_field_sets_every_convolution_of_a_model():
    # A UNet (ConvBlocks) and the LunaModel (nn.Conv with a conv_general_dilated): with
    # conv_impl="xla" every convolution is XLA's 3D one (rank-5 inputs); with "auto" on the CPU
    # the same models trace 2D convolutions (depth2d) or none (im2col). Same parameters.
    import medjax.models  # noqa: F401 - registers the models
    from medjax import registry

    x = jnp.zeros((1, 8, 16, 16, 1))
    for name, kwargs in (("unet", {"depth": 2, "features": 4}), ("luna", {"num_blocks": 2})):
        module = registry.lookup("models", name, **kwargs)
        forced = registry.lookup("models", name, conv_impl="xla", **kwargs)
        v_auto = module.init(jax.random.key(0), x, train=False)
        v_xla = forced.init(jax.random.key(0), x, train=False)
        assert jax.tree.structure(v_auto) == jax.tree.structure(v_xla)
        for a, b in zip(jax.tree.leaves(v_auto), jax.tree.leaves(v_xla), strict=True):
            np.testing.assert_array_equal(a, b)
        ranks_xla = jaxprs.conv_input_ranks(jax.make_jaxpr(forced.apply)(v_auto, x).jaxpr)
        ranks_auto = jaxprs.conv_input_ranks(jax.make_jaxpr(module.apply)(v_auto, x).jaxpr)
        assert ranks_xla and set(ranks_xla) == {5}, (name, ranks_xla)
        assert 5 not in ranks_auto, (name, ranks_auto)
        np.testing.assert_allclose(
            forced.apply(v_auto, x + 1.0), module.apply(v_auto, x + 1.0), rtol=1e-4, atol=1e-4
        )


def test_unknown_conv_impl_names_the_config_key():
    import medjax.models  # noqa: F401 - registers the models
    from medjax import registry

    for name in ("unet", "luna", "unetpp", "attention_unet"):
        with pytest.raises(errors.ConfigError, match=r"model\.conv_impl='winograd'.*depth2d"):
            registry.lookup("models", name, conv_impl="winograd")


@pytest.mark.parametrize("shape", [(2, 6, 8, 3), (2, 7, 9, 2), (1, 5, 6, 7, 2), (2, 4, 4, 4, 1)])
def test_max_pool2_equals_numpy_and_nn_max_pool(shape):
    x = jax.random.normal(jax.random.key(3), shape)
    nd = len(shape) - 2
    xs = np.asarray(x, np.float64)
    # Independent reference: max over the 2**nd offsets of the floor-cropped grid.
    half = [d // 2 for d in shape[1:-1]]
    want = np.full((shape[0], *half, shape[-1]), -np.inf)
    for offset in itertools.product(range(2), repeat=nd):
        view = xs[(slice(None), *(slice(o, 2 * h, 2) for o, h in zip(offset, half, strict=True)))]
        want = np.maximum(want, view)
    np.testing.assert_array_equal(pooling.max_pool2(x), want.astype(np.float32))
    np.testing.assert_array_equal(pooling.max_pool2(x), nn.max_pool(x, (2,) * nd, (2,) * nd))
    # No ties in random data: the same gradient as XLA's windowed max.
    g = jax.grad(lambda v: jnp.sum(jnp.sin(pooling.max_pool2(v))))(x)
    g_ref = jax.grad(lambda v: jnp.sum(jnp.sin(nn.max_pool(v, (2,) * nd, (2,) * nd))))(x)
    np.testing.assert_allclose(g, g_ref, rtol=1e-6, atol=1e-7)


def test_max_pool2_splits_the_gradient_of_a_tie():
    x = jnp.array([[1.0, 3.0], [3.0, 2.0]]).reshape(1, 2, 2, 1)
    g = jax.grad(lambda v: pooling.max_pool2(v).sum())(x)
    np.testing.assert_array_equal(g.reshape(2, 2), [[0.0, 0.5], [0.5, 0.0]])
