"""Attribution maps against closed forms (linear models) and completeness (integrated gradients)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax.explain import attribution


@pytest.fixture(scope="module")
def xw():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5, 2)).astype(np.float32)
    w = rng.normal(size=(6, 5, 2)).astype(np.float32)
    return x, w


def test_linear_model_maps_equal_weights_times_input(xw):
    x, w = xw

    def f(v):
        return jnp.sum(w * v) + 3.0

    ref = w.astype(np.float64) * x.astype(np.float64)
    np.testing.assert_allclose(attribution.input_gradient(f, x), w, rtol=0, atol=0)
    np.testing.assert_allclose(attribution.gradient_x_input(f, x), ref, rtol=1e-6, atol=1e-6)
    ig = jax.jit(lambda v: attribution.integrated_gradients(f, v, steps=4, batch_size=2))(x)
    np.testing.assert_allclose(ig, ref, rtol=1e-5, atol=1e-5)  # exact for any step count


def _small_cnn():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.tanh(nn.Conv(4, (3, 3))(x))
            x = nn.Conv(3, (3, 3))(x)
            return nn.Dense(2)(jnp.tanh(x).mean(axis=(1, 2)))

    net = Net()
    x = np.random.default_rng(1).normal(size=(8, 8, 1)).astype(np.float32)
    variables = net.init(jax.random.key(0), x[None])
    return net, variables, x


def test_integrated_gradients_completeness_improves_with_steps():
    net, variables, x = _small_cnn()

    def f(v):
        return net.apply(variables, v[None])[0, 1]

    baseline = np.full_like(x, 0.5)
    gap = float(f(x)) - float(f(baseline))
    errs = []
    for steps in (2, 8, 48):
        ig = jax.jit(
            lambda v, s=steps: attribution.integrated_gradients(
                f, v, baseline, steps=s, batch_size=16
            )
        )(x)
        errs.append(abs(float(np.sum(np.asarray(ig, np.float64))) - gap))
    scale = max(abs(gap), 1e-3)
    assert errs[2] < 1e-3 * scale + 1e-5  # completeness at 48 steps
    assert errs[2] <= errs[1] <= errs[0]  # the quadrature error shrinks with steps


def test_grad_cam_of_a_conv_mean_dense_model_is_relu_of_the_feature_map():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            a = nn.Conv(1, (1, 1), use_bias=False, name="conv")(x)
            return nn.Dense(1, name="head")(a.mean(axis=(1, 2)))

    net = Net()
    x = np.random.default_rng(2).normal(size=(5, 7, 1)).astype(np.float32)
    variables = net.init(jax.random.key(3), x[None])
    c = float(variables["params"]["conv"]["kernel"].reshape(()))
    d = float(variables["params"]["head"]["kernel"].reshape(()))

    def apply(v):
        return net.apply(variables, v)

    layer = attribution.last_conv_path(apply, x[None])
    assert layer == ("conv",)
    cam = jax.jit(lambda v: attribution.grad_cam(apply, v, lambda o: o[0, 0], layer))(x)
    # dS/dA = d / N everywhere, so cam = relu(d / N * c * x) / max, in float64.
    ref = np.maximum(d * c * x[..., 0].astype(np.float64), 0.0)
    np.testing.assert_allclose(cam, ref / ref.max(), rtol=1e-5, atol=1e-6)


def test_region_score_sums_the_class_logit_over_the_predicted_region():
    logits = np.array([[[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]]], np.float32)  # [1, 2, K=3]
    # argmax: class 1 at (0,0), class 0 at (0,1) -> class 1 score = 2.0; class 0 score = 3.0
    assert float(attribution.region_score(logits, 1)) == pytest.approx(2.0)
    assert float(attribution.region_score(logits, 0)) == pytest.approx(3.0)
    binary = np.array([[[1.5], [-2.0], [0.5]]], np.float32)
    assert float(attribution.region_score(binary, 1)) == pytest.approx(2.0)
    g = jax.grad(lambda v: attribution.region_score(v, 1))(binary)
    np.testing.assert_array_equal(g[..., 0], [[1.0, 0.0, 1.0]])  # mask fixed, not differentiated
    # No voxel predicted: the class's logit over the whole image (hand-computed), so an
    # untrained or negative case still gets a map.
    empty = np.array([[[-1.5], [-2.0], [-0.5]]], np.float32)
    assert float(attribution.region_score(empty, 1)) == pytest.approx(-4.0)
    g = jax.grad(lambda v: attribution.region_score(v, 1))(empty)
    np.testing.assert_array_equal(g[..., 0], [[1.0, 1.0, 1.0]])
    assert float(attribution.region_score(logits, 2)) == pytest.approx(-0.5)  # K=3, none is 2


def test_last_conv_path_refuses_a_vit_patch_embedding():
    class TinyViT(nn.Module):
        @nn.compact
        def __call__(self, x):
            t = nn.Conv(8, (2, 2), strides=(2, 2))(x)  # patch embedding
            t = t.reshape(t.shape[0], -1, 8)
            t = nn.MultiHeadDotProductAttention(num_heads=2)(t, t)
            return nn.Dense(2)(t.mean(axis=1))

    net = TinyViT()
    x = np.zeros((1, 4, 4, 1), np.float32)
    variables = net.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="attention follows"):
        attribution.last_conv_path(lambda v: net.apply(variables, v), x)
