"""Cross-entropy and focal losses vs float64 numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax import errors, registry
from medjax.losses import ce

SHAPES = [(2, 6, 5), (2, 3, 4, 5), (6,)]  # 2D, 3D, classification


def _inputs(shape, k, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, shape + (k,)).astype(np.float32)
    labels = rng.integers(0, max(k, 2), shape).astype(np.int32)
    return logits, labels


def _np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _np_per_voxel_ce(logits, labels, *, pos_weight=None, ls=0.0):
    logits = np.asarray(logits, np.float64)
    k = logits.shape[-1]
    if k == 1:
        x = logits[..., 0]
        t = (labels != 0) * (1 - ls) + ls / 2
        pw = 1.0 if pos_weight is None else pos_weight
        # log(1 + exp(-x)) directly: fine in float64 for |x| < 700.
        return pw * t * np.log1p(np.exp(-x)) + (1 - t) * np.log1p(np.exp(x))
    q = np.eye(k)[labels] * (1 - ls) + ls / k
    return -(q * _np_log_softmax(logits)).sum(-1)


def _np_reduce(per_voxel, weights):
    axes = tuple(range(1, per_voxel.ndim))
    num, den = (per_voxel * weights).sum(axes), weights.sum(axes)
    return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("ls", [0.0, 0.1])
def test_ce_matches_numpy(shape, k, ls):
    logits, labels = _inputs(shape, k)
    got = ce.get_ce(label_smoothing=ls)(jnp.asarray(logits), jnp.asarray(labels))
    assert got.shape == shape[:1] and got.dtype == jnp.float32
    want = _np_reduce(_np_per_voxel_ce(logits, labels, ls=ls), np.ones(shape))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_ce_hand_computed():
    # Two classes, logits (0, 0): every voxel costs log 2; binary logit 0 also costs log 2.
    labels = jnp.array([[0, 1, 1]])
    np.testing.assert_allclose(ce.get_ce()(jnp.zeros((1, 3, 2)), labels), [np.log(2)], 1e-6)
    # Binary logit ln 3: p = 3/4. Foreground costs -log(3/4), background -log(1/4).
    x = jnp.full((1, 3, 1), np.log(3.0))
    want = (2 * -np.log(0.75) + -np.log(0.25)) / 3
    np.testing.assert_allclose(ce.get_ce()(x, labels), [want], rtol=1e-6)
    # pos_weight 2 doubles the foreground terms only.
    want_pw = (2 * 2 * -np.log(0.75) + -np.log(0.25)) / 3
    np.testing.assert_allclose(ce.get_ce(pos_weight=2.0)(x, labels), [want_pw], rtol=1e-6)


@pytest.mark.parametrize("shape", SHAPES[:2])
@pytest.mark.parametrize("k", [1, 3])
def test_weighted_ce_and_mask(shape, k):
    logits, labels = _inputs(shape, k, seed=1)
    weights = [0.2, 1.5] if k == 1 else [0.2, 1.0, 3.0]
    mask = np.random.default_rng(2).random(shape) > 0.4
    fn = registry.lookup("losses", "WeightedCrossEntropy", weights=weights)
    got = fn(logits, labels, mask=mask)
    index = (labels != 0).astype(int) if k == 1 else labels
    want = _np_reduce(_np_per_voxel_ce(logits, labels), np.asarray(weights)[index] * mask)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_per_example_mask_gives_zero_for_padding_rows():
    logits, labels = _inputs((3, 4, 4), 3, seed=3)
    got = ce.get_ce()(logits, labels, mask=jnp.array([True, False, True]))
    full = ce.get_ce()(logits, labels)
    np.testing.assert_allclose(got, [full[0], 0.0, full[2]], rtol=1e-6)


def test_ce_extreme_logits_are_finite():
    labels = jnp.array([[0, 1]])
    x = jnp.array([[[30.0], [-30.0]]])  # both confidently wrong
    np.testing.assert_allclose(ce.get_ce()(x, labels), [30.0], rtol=1e-5)


def _np_focal(logits, labels, gamma, alpha):
    logits = np.asarray(logits, np.float64)
    k = logits.shape[-1]
    if k == 1:
        p = 1 / (1 + np.exp(-logits[..., 0]))
        pos = labels != 0
        p_t = np.where(pos, p, 1 - p)
        a_t = 1.0 if alpha is None else np.where(pos, alpha, 1 - alpha)
    else:
        p_t = np.exp(np.take_along_axis(_np_log_softmax(logits), labels[..., None], -1))[..., 0]
        a_t = 1.0 if alpha is None else np.asarray(alpha)[labels]
    return _np_reduce(-a_t * (1 - p_t) ** gamma * np.log(p_t), np.ones(labels.shape))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k,alpha", [(1, None), (1, 0.25), (3, None), (3, [0.2, 0.5, 0.3])])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_matches_numpy(shape, k, alpha, gamma):
    logits, labels = _inputs(shape, k, seed=4)
    got = ce.get_focal(gamma=gamma, alpha=alpha)(logits, labels)
    np.testing.assert_allclose(got, _np_focal(logits, labels, gamma, alpha), rtol=2e-5)


def test_focal_gamma_zero_is_ce():
    logits, labels = _inputs((2, 5, 5), 4, seed=5)
    np.testing.assert_allclose(
        ce.get_focal(gamma=0.0)(logits, labels), ce.get_ce()(logits, labels), rtol=1e-5
    )


def test_registry_and_errors():
    for name in ("ce", "bce", "CrossEntropyLoss", "BCELoss"):
        assert registry.get(f"losses.{name}") is ce.get_ce
    assert registry.get("losses.FocalLoss") is ce.get_focal
    with pytest.raises(errors.ConfigError):
        ce.get_ce(label_smoothing=1.0)
    with pytest.raises(errors.ConfigError):
        ce.get_ce(weights=[1.0, 2.0])(jnp.zeros((1, 4, 3)), jnp.zeros((1, 4), jnp.int32))
    with pytest.raises(errors.ConfigError):
        ce.get_focal(alpha=0.25)(jnp.zeros((1, 4, 3)), jnp.zeros((1, 4), jnp.int32))
    with pytest.raises(errors.ConfigError):
        ce.get_focal(gamma=-1.0)


def test_bf16_and_jit():
    logits, labels = _inputs((2, 8, 8), 3, seed=6)
    low = jnp.asarray(logits, jnp.bfloat16)
    fn = jax.jit(ce.get_focal(gamma=2.0))
    got = fn(low, labels)
    assert got.dtype == jnp.float32
    want = _np_focal(np.asarray(low.astype(jnp.float32)), labels, 2.0, None)
    np.testing.assert_allclose(got, want, rtol=1e-5)
