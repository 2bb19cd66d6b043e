"""Region losses (soft Dice, generalized Dice, Tversky, focal Tversky) vs float64 numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax import errors, registry
from medjax.losses import dice

SHAPES = [(2, 6, 5), (2, 4, 5, 3)]  # [B, H, W] and [B, D, H, W]


def _np_probs_targets(logits, labels, include_background):
    logits = np.asarray(logits, np.float64)
    k = logits.shape[-1]
    if k == 1:
        return 1.0 / (1.0 + np.exp(-logits)), (labels != 0)[..., None].astype(np.float64)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    p, t = e / e.sum(-1, keepdims=True), np.eye(k)[labels]
    if not include_background:
        p, t = p[..., 1:], t[..., 1:]
    return p, t


def _np_sums(logits, labels, mask, include_background, batch):
    p, t = _np_probs_targets(logits, labels, include_background)
    w = np.ones(labels.shape) if mask is None else np.asarray(mask, np.float64)
    if w.ndim == 1:
        w = w.reshape(w.shape + (1,) * (labels.ndim - 1)) * np.ones(labels.shape)
    w = w[..., None]
    axes = tuple(range(0 if batch else 1, labels.ndim))
    tp = (w * p * t).sum(axes)
    fp = (w * p * (1 - t)).sum(axes)
    fn = (w * (1 - p) * t).sum(axes)
    return tp, fp, fn, (w * p * p).sum(axes), (w * t).sum(axes), (w * p).sum(axes)


def _np_dice(logits, labels, mask=None, *, include_background=False, batch=False, squared=False):
    tp, fp, fn, p2, tsum, psum = _np_sums(logits, labels, mask, include_background, batch)
    den = (p2 + tsum) if squared else (psum + tsum)
    loss = 1 - ((2 * tp + 1e-5) / (den + 1e-5)).mean(-1)
    return np.broadcast_to(loss, labels.shape[:1]) if batch else loss


def _np_tversky_index(logits, labels, alpha, beta, mask=None, *, batch=False):
    tp, fp, fn, *_ = _np_sums(logits, labels, mask, False, batch)
    return (tp + 1e-5) / (tp + alpha * fp + beta * fn + 1e-5)


def _np_generalized(logits, labels, *, include_background=False):
    tp, _, _, _, tsum, psum = _np_sums(logits, labels, None, include_background, False)
    out = []
    for b in range(labels.shape[0]):
        with np.errstate(divide="ignore"):
            w = 1.0 / tsum[b] ** 2
        finite = np.isfinite(w)
        w[~finite] = w[finite].max() if finite.any() else 0.0
        out.append(1 - (2 * (w * tp[b]).sum() + 1e-5) / ((w * (psum[b] + tsum[b])).sum() + 1e-5))
    return np.array(out)


def _inputs(shape, k, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, shape + (k,)).astype(np.float32)
    labels = rng.integers(0, max(k, 2), shape).astype(np.int32)
    return logits, labels


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("include_background", [False, True])
@pytest.mark.parametrize("squared", [False, True])
def test_dice_matches_numpy(shape, k, include_background, squared):
    logits, labels = _inputs(shape, k)
    fn = dice.get_dice(include_background=include_background, squared=squared)
    got = fn(jnp.asarray(logits), jnp.asarray(labels))
    assert got.shape == shape[:1] and got.dtype == jnp.float32
    want = _np_dice(logits, labels, include_background=include_background, squared=squared)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_dice_hand_computed_binary():
    # All logits 0 -> p = 0.5 everywhere. 3 of 8 voxels are foreground:
    # TP = 1.5, sum p = 4, sum t = 3 -> dice = (3 + s) / (7 + s).
    labels = jnp.array([[1, 1, 1, 0, 0, 0, 0, 0]])
    loss = dice.get_dice()(jnp.zeros((1, 8, 1)), labels)
    np.testing.assert_allclose(loss, [1 - (3 + 1e-5) / (7 + 1e-5)], rtol=1e-6)


def test_dice_perfect_and_inverted_predictions():
    labels = jnp.array([[0, 1, 2, 1], [2, 2, 0, 1]])
    perfect = 30.0 * jax.nn.one_hot(labels, 3)
    np.testing.assert_allclose(dice.get_dice()(perfect, labels), [0, 0], atol=1e-5)
    # Predicting class (y + 1) % 3 everywhere: no overlap in any foreground class.
    wrong = 30.0 * jax.nn.one_hot((labels + 1) % 3, 3)
    np.testing.assert_allclose(dice.get_dice()(wrong, labels), [1, 1], atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_dice_masks(shape):
    logits, labels = _inputs(shape, 3, seed=1)
    rng = np.random.default_rng(2)
    voxel_mask = rng.random(shape) > 0.3
    fn = dice.get_dice()
    np.testing.assert_allclose(
        fn(logits, labels, mask=voxel_mask), _np_dice(logits, labels, voxel_mask), rtol=1e-5
    )
    # Masking a voxel must equal removing it: compare with a batch of one, flattened.
    example = np.array([True, False])
    got = fn(logits, labels, mask=example)
    np.testing.assert_allclose(got, _np_dice(logits, labels, example), rtol=1e-5)


@pytest.mark.parametrize("k", [1, 3])
def test_batch_dice_pools_and_ignores_masked_examples(k):
    logits, labels = _inputs((3, 4, 4, 4), k, seed=3)
    fn = dice.get_dice(batch=True)
    got = fn(logits, labels)
    assert got.shape == (3,)
    np.testing.assert_allclose(got, _np_dice(logits, labels, batch=True), rtol=1e-5)
    # With the last example masked out the pool is that of the first two alone.
    masked = fn(logits, labels, mask=jnp.array([1.0, 1.0, 0.0]))
    np.testing.assert_allclose(masked[0], _np_dice(logits[:2], labels[:2], batch=True)[0], 1e-5)
    assert not np.allclose(masked[0], got[0])


def test_classification_shapes():
    logits, labels = _inputs((8,), 4, seed=4)
    got = dice.get_dice(batch=True)(logits, labels)
    np.testing.assert_allclose(got, _np_dice(logits, labels, batch=True), rtol=1e-5)


def test_bf16_logits_compute_in_float32():
    logits, labels = _inputs((2, 8, 8), 3, seed=5)
    low = jnp.asarray(logits, jnp.bfloat16)
    got = dice.get_dice()(low, labels)
    assert got.dtype == jnp.float32
    want = _np_dice(np.asarray(low.astype(jnp.float32)), labels)
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 3])
def test_tversky_matches_numpy_and_dice(shape, k):
    logits, labels = _inputs(shape, k, seed=6)
    got = dice.get_tversky(alpha=0.3, beta=0.7)(logits, labels)
    want = 1 - _np_tversky_index(logits, labels, 0.3, 0.7).mean(-1)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # alpha = beta = 0.5 is exactly the soft Dice loss.
    np.testing.assert_allclose(
        dice.get_tversky(alpha=0.5, beta=0.5)(logits, labels),
        dice.get_dice()(logits, labels),
        rtol=1e-5,
    )


@pytest.mark.parametrize("k", [1, 3])
def test_focal_tversky_matches_numpy(k):
    logits, labels = _inputs((2, 4, 4, 4), k, seed=7)
    got = dice.get_focal_tversky(alpha=0.4, beta=0.6, gamma=0.75, batch=True)(logits, labels)
    index = _np_tversky_index(logits, labels, 0.4, 0.6, batch=True)
    np.testing.assert_allclose(got, np.full(2, ((1 - index) ** 0.75).mean()), rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 4])
def test_generalized_dice_matches_numpy(shape, k):
    logits, labels = _inputs(shape, k, seed=8)
    if k == 4:
        labels = np.where(labels == 3, 0, labels)  # class 3 absent: exercises the weight fill
    got = dice.get_generalized_dice()(logits, labels)
    np.testing.assert_allclose(got, _np_generalized(logits, labels), rtol=1e-5)


def test_generalized_dice_all_classes_empty_is_zero():
    loss = dice.get_generalized_dice()(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 4, 4), jnp.int32))
    np.testing.assert_allclose(loss, [0.0], atol=1e-6)
    assert np.isfinite(loss).all()


def test_registry_names_and_option_errors():
    for name in ("dice", "DiceLoss", "generalized_dice", "GeneralizedDiceLoss", "tversky"):
        assert callable(registry.lookup("losses", name))
    assert registry.get("losses.FocalTverskyLoss") is dice.get_focal_tversky
    with pytest.raises(errors.ConfigError):
        dice.get_dice(smooth_dr=-1.0)
    with pytest.raises(errors.ConfigError):
        dice.get_focal_tversky(gamma=0.0)
    with pytest.raises(ValueError):
        dice.get_dice()(jnp.zeros((2, 4, 3)), jnp.zeros((2, 5), jnp.int32))


def test_jit_matches_eager():
    logits, labels = _inputs((2, 8, 8), 3, seed=9)
    fn = dice.get_dice(batch=True)
    np.testing.assert_allclose(jax.jit(fn)(logits, labels), fn(logits, labels), rtol=1e-6)
