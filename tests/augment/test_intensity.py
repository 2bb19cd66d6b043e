"""Tests of medjax.augment.intensity against numpy float64 / scipy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from medjax import errors
from medjax.augment import _core, intensity

KEY = jax.random.key(0)


def _jit_vmap(fn):
    return jax.jit(jax.vmap(fn))


# (factory, kwargs that always change a generic image).
OPS = {
    "brightness": (intensity.get_brightness, {"range": (0.5, 0.8)}),
    "brightness_additive": (intensity.get_brightness_additive, {"range": (0.2, 0.5)}),
    "contrast": (intensity.get_contrast, {"range": (0.5, 0.8)}),
    "gamma": (intensity.get_gamma, {"range": (1.5, 2.0)}),
    "gaussian_noise": (intensity.get_gaussian_noise, {"sigma": (0.1, 0.2)}),
    "gaussian_blur": (intensity.get_gaussian_blur, {"sigma": (0.8, 1.2)}),
    "low_resolution": (intensity.get_low_resolution, {"zoom": (0.4, 0.6)}),
    "brightness_contrast": (intensity.get_brightness_contrast, {"brightness_limit": (0.2, 0.3)}),
}


def _image(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def _sample(spatial=(12, 10), channels=2, seed=0):
    return {
        "image": jnp.asarray(_image((*spatial, channels), seed)),
        "label": jnp.asarray(np.random.default_rng(seed).integers(0, 3, spatial), jnp.int32),
        "case_id": jnp.int32(7),
    }


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_properties(name):
    factory, kwargs = OPS[name]
    sample = _sample()
    fn = jax.jit(factory(p=1.0, **kwargs))
    out = fn(KEY, sample)
    # Same key -> same output; a different key -> a different output; p=1 changes the image.
    np.testing.assert_array_equal(out["image"], fn(KEY, sample)["image"])
    assert not np.allclose(out["image"], sample["image"])
    assert not np.allclose(out["image"], fn(jax.random.key(1), sample)["image"])
    # Labels and other keys pass through untouched.
    np.testing.assert_array_equal(out["label"], sample["label"])
    assert out["case_id"] == 7
    # p = 0 is the identity.
    out0 = jax.jit(factory(p=0.0, **kwargs))(KEY, sample)
    np.testing.assert_array_equal(out0["image"], sample["image"])


@pytest.mark.parametrize("spatial", [(8, 6), (4, 6, 5)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_shape_dtype_sweep(spatial, dtype):
    # One jitted chain of every op (p=1) per case keeps this to four compiles; each op casts back
    # to the input dtype, so a wrong shape or dtype anywhere in the chain shows at the end.
    ops = [factory(p=1.0, **kwargs) for factory, kwargs in OPS.values()]

    def chain(key, sample):
        for k, op in zip(jax.random.split(key, len(ops)), ops, strict=True):
            sample = op(k, sample)
            assert sample["image"].shape == image.shape and sample["image"].dtype == dtype
        return sample

    image = jnp.asarray(_image((*spatial, 2)), dtype)
    label = jnp.zeros(spatial, jnp.int32)
    out = jax.jit(chain)(KEY, {"image": image, "label": label})
    assert out["image"].shape == image.shape and out["image"].dtype == dtype
    assert out["label"].dtype == jnp.int32
    assert np.isfinite(np.asarray(out["image"], np.float32)).all()


def test_probability_is_per_example():
    fn = _jit_vmap(intensity.get_brightness(p=0.3, range=(2.0, 2.0)))
    n = 400
    images = jnp.ones((n, 2, 2, 1))
    out = fn(jax.random.split(KEY, n), {"image": images})["image"]
    applied = np.asarray(out[:, 0, 0, 0]) == 2.0
    assert set(np.unique(out)) == {1.0, 2.0}
    assert 0.2 < applied.mean() < 0.4  # Binomial(400, 0.3): sd ~ 0.023.


def test_brightness_factor_within_range():
    fn = _jit_vmap(intensity.get_brightness(p=1.0, range=(0.8, 1.2)))
    images = jnp.ones((200, 3, 3, 1))
    factors = np.asarray(fn(jax.random.split(KEY, 200), {"image": images})["image"][:, 0, 0, 0])
    assert factors.min() >= 0.8 and factors.max() <= 1.2
    assert factors.max() - factors.min() > 0.3  # It does spread over the range.
    # The factor is one number per image (checked on a non-constant image).
    sample = _sample()
    out = jax.jit(intensity.get_brightness(p=1.0, range=(0.8, 1.2)))(KEY, sample)["image"]
    ratio = np.asarray(out) / np.asarray(sample["image"])
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)


def test_brightness_per_channel_factors_differ():
    images = jnp.ones((4, 4, 3))
    out = jax.jit(intensity.get_brightness(p=1.0, range=(0.5, 1.5), per_channel=True))(
        KEY, {"image": images}
    )["image"]
    per_channel = np.asarray(out[0, 0])
    np.testing.assert_allclose(np.asarray(out), np.broadcast_to(per_channel, (4, 4, 3)))
    assert len(set(per_channel.tolist())) == 3


def test_brightness_additive_offset_within_range():
    fn = _jit_vmap(intensity.get_brightness_additive(p=1.0, range=(-0.3, 0.1)))
    out = fn(jax.random.split(KEY, 200), {"image": jnp.zeros((200, 2, 2, 1))})["image"]
    assert float(out.min()) >= -0.3 and float(out.max()) <= 0.1


@pytest.mark.parametrize("preserve_range", [True, False])
def test_contrast_matches_numpy(preserve_range):
    x = _image((6, 5, 4, 2), seed=3).astype(np.float64)
    out = jax.jit(intensity.get_contrast(p=1.0, range=(1.5, 1.5), preserve_range=preserve_range))(
        KEY, {"image": jnp.asarray(x, jnp.float32)}
    )["image"]
    mean = x.mean(axis=(0, 1, 2))
    ref = (x - mean) * 1.5 + mean
    if preserve_range:
        ref = np.clip(ref, x.min(axis=(0, 1, 2)), x.max(axis=(0, 1, 2)))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def _gamma_reference(x, gamma, invert, retain_stats):
    out = np.empty_like(x)
    for c in range(x.shape[-1]):
        v = -x[..., c] if invert else x[..., c].copy()
        mean, std = v.mean(), v.std()
        low, span = v.min(), v.max() - v.min()
        v = ((v - low) / span) ** gamma * span + low
        if retain_stats:
            v = (v - v.mean()) / v.std() * std + mean
        out[..., c] = -v if invert else v
    return out


@pytest.mark.parametrize("invert", [False, True])
@pytest.mark.parametrize("retain_stats", [False, True])
def test_gamma_matches_numpy(invert, retain_stats):
    x = _image((7, 6, 2), seed=4).astype(np.float64)
    op = intensity.get_gamma(p=1.0, range=(2.0, 2.0), invert=invert, retain_stats=retain_stats)
    out = op(KEY, {"image": jnp.asarray(x, jnp.float32)})["image"]
    np.testing.assert_allclose(out, _gamma_reference(x, 2.0, invert, retain_stats), atol=2e-5)


def test_gamma_constant_image_stays_finite():
    out = jax.jit(intensity.get_gamma(p=1.0))(KEY, {"image": jnp.full((4, 4, 1), 3.0)})["image"]
    np.testing.assert_allclose(out, 3.0)


def test_uniform_around_one_balances_sides():
    draws = np.asarray(_core.uniform_around_one(KEY, (0.7, 1.5), (4000,)))
    assert draws.min() >= 0.7 and draws.max() <= 1.5
    assert 0.45 < (draws < 1.0).mean() < 0.55  # A plain uniform draw would give 0.375.


def test_gaussian_noise_sigma_in_image_units():
    image = jnp.full((64, 64, 1), -1000.0)
    out = jax.jit(intensity.get_gaussian_noise(p=1.0, sigma=25))(KEY, {"image": image})["image"]
    noise = np.asarray(out, np.float64) + 1000.0
    assert abs(noise.mean()) < 2.0  # sd of the mean: 25 / 64 ~ 0.4.
    assert 23.5 < noise.std() < 26.5
    fn = _jit_vmap(intensity.get_gaussian_noise(p=1.0, sigma=(0.0, 0.1)))
    outs = fn(jax.random.split(KEY, 50), {"image": jnp.zeros((50, 32, 32, 1))})["image"]
    stds = np.asarray(outs).reshape(50, -1).std(axis=1)
    assert stds.max() < 0.11 and stds.min() < 0.05


@pytest.mark.parametrize("shape", [(16, 13, 2), (9, 10, 11, 1)])
def test_gaussian_blur_matches_scipy(shape):
    x = _image(shape, seed=5).astype(np.float64)
    sigma = 1.3
    out = jax.jit(intensity.get_gaussian_blur(p=1.0, sigma=sigma))(KEY, {"image": jnp.asarray(x)})[
        "image"
    ]
    ref = scipy.ndimage.gaussian_filter(
        x, sigma=(sigma,) * (x.ndim - 1) + (0,), mode="reflect", truncate=4.0
    )
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_gaussian_blur_per_axis_sigmas_within_range():
    # The impulse response of a separable Gaussian has variance sigma_i^2 along axis i.
    delta = np.zeros((21, 21, 1), np.float32)
    delta[10, 10] = 1.0
    op = jax.jit(jax.vmap(intensity.get_gaussian_blur(p=1.0, sigma=(1.0, 2.0), per_axis=True)))
    out = np.asarray(
        op(jax.random.split(KEY, 8), {"image": jnp.tile(delta, (8, 1, 1, 1))})["image"]
    )
    offsets = np.arange(21) - 10.0
    sigmas = np.stack(
        [
            np.sqrt((out[..., 0].sum(axis=2) * offsets**2).sum(axis=1)),
            np.sqrt((out[..., 0].sum(axis=1) * offsets**2).sum(axis=1)),
        ],
        axis=1,
    )
    assert np.all((sigmas > 0.99) & (sigmas < 2.01))
    assert np.all(np.abs(sigmas[:, 0] - sigmas[:, 1]) > 1e-3)  # Drawn per axis.
    np.testing.assert_allclose(out.sum(axis=(1, 2, 3)), 1.0, rtol=1e-5)  # Mass is kept.


def test_gaussian_blur_sigma_zero_is_identity():
    sample = _sample()
    out = jax.jit(intensity.get_gaussian_blur(p=1.0, sigma=(0.0, 0.0)))(KEY, sample)["image"]
    np.testing.assert_allclose(out, sample["image"], atol=1e-6)


def _low_resolution_reference(x, zoom):
    """Builds the low-resolution array for real (nearest), then np.interp back (half-pixel)."""
    for axis in range(x.ndim - 1):
        n = x.shape[axis]
        m = int(np.clip(np.round(n * zoom), 1, n))
        src = np.clip(np.floor((np.arange(m) + 0.5) * n / m), 0, n - 1).astype(int)
        low = np.take(x, src, axis=axis)
        coords = (np.arange(n) + 0.5) * m / n - 0.5
        x = np.apply_along_axis(lambda v, c=coords, m=m: np.interp(c, np.arange(m), v), axis, low)
    return x


@pytest.mark.parametrize("zoom", [0.5, 0.7, 1.0])
@pytest.mark.parametrize("shape", [(16, 12, 1), (10, 8, 9, 2)])
def test_low_resolution_matches_numpy(zoom, shape):
    x = _image(shape, seed=6).astype(np.float64)
    out = jax.jit(intensity.get_low_resolution(p=1.0, zoom=zoom))(KEY, {"image": jnp.asarray(x)})[
        "image"
    ]
    np.testing.assert_allclose(out, _low_resolution_reference(x, zoom), atol=1e-5)
    if zoom == 1.0:
        np.testing.assert_allclose(out, x, atol=1e-6)


def test_low_resolution_rejects_bad_zoom():
    with pytest.raises(errors.ConfigError, match="zoom"):
        intensity.get_low_resolution(zoom=(0.5, 1.5))


@pytest.mark.parametrize("by_max", [True, False])
def test_brightness_contrast_matches_albumentations_formula(by_max):
    x = np.abs(_image((8, 8, 1), seed=7)).astype(np.float64)
    op = intensity.get_brightness_contrast(
        p=1.0, brightness_limit=(0.1, 0.1), contrast_limit=(0.2, 0.2), brightness_by_max=by_max
    )
    out = op(KEY, {"image": jnp.asarray(x, jnp.float32)})["image"]
    ref = x * 1.2 + 0.1 * (1.0 if by_max else x.mean())
    np.testing.assert_allclose(out, ref, rtol=1e-5)
    clipped = jax.jit(
        intensity.get_brightness_contrast(
            p=1.0, brightness_limit=(0.1, 0.1), contrast_limit=(0.2, 0.2), clip=(0.0, 1.0)
        )
    )(KEY, {"image": jnp.asarray(x, jnp.float32)})["image"]
    np.testing.assert_allclose(clipped, np.clip(x * 1.2 + 0.1, 0, 1), rtol=1e-5)


def test_brightness_contrast_symmetric_limits():
    fn = _jit_vmap(intensity.get_brightness_contrast(p=1.0, brightness_limit=0.2, contrast_limit=0))
    out = np.asarray(fn(jax.random.split(KEY, 300), {"image": jnp.zeros((300, 1, 1, 1))})["image"])
    assert out.min() >= -0.2 and out.max() <= 0.2 and out.min() < -0.1 and out.max() > 0.1


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"p": 1.5}, "p=1.5"), ({"range": (1.2, 0.8)}, "low > high")]
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(errors.ConfigError, match=match):
        intensity.get_brightness(**kwargs)
