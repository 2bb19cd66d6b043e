"""Combined losses, Dice + CE and deep supervision."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from medjax import errors, registry
from medjax.losses import ce, compound, dice


def _inputs(shape, k, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, shape + (k,)).astype(np.float32)
    labels = rng.integers(0, max(k, 2), shape).astype(np.int32)
    return jnp.asarray(logits), jnp.asarray(labels)


def test_combined_is_weighted_sum_and_exposes_terms():
    logits, labels = _inputs((2, 6, 6), 3)
    spec = [
        {"name": "DiceLoss", "weight": 0.5, "params": {"batch": True}},
        {"name": "losses.ce", "weight": 2.0},
        {"name": "focal(gamma=1.0)", "weight": 0.0},
    ]
    fn = registry.lookup("losses", "CombinedLoss", losses=spec)
    d = dice.get_dice(batch=True)(logits, labels)
    c = ce.get_ce()(logits, labels)
    np.testing.assert_allclose(fn(logits, labels), 0.5 * d + 2.0 * c, rtol=1e-6)
    terms = fn.terms(logits, labels)
    assert set(terms) == {"DiceLoss", "losses.ce", "focal(gamma=1.0)"}
    np.testing.assert_allclose(terms["DiceLoss"], d, rtol=1e-6)
    np.testing.assert_allclose(
        terms["focal(gamma=1.0)"], ce.get_focal(gamma=1.0)(logits, labels), rtol=1e-6
    )


def test_combined_accepts_configdicts_and_keyed_form():
    logits, labels = _inputs((2, 4, 4, 4), 1, seed=1)
    want = 0.3 * dice.get_dice(smooth_nr=0.0)(logits, labels) + ce.get_ce()(logits, labels)
    listed = ml_collections.ConfigDict(
        {"losses": [{"name": "dice", "weight": 0.3, "params": {"smooth_nr": 0.0}}, {"name": "bce"}]}
    )
    keyed = ml_collections.FrozenConfigDict(
        {
            "losses": {
                "dice": {"weight": 0.3, "params": {"smooth_nr": 0.0}},
                "xent": {"name": "CrossEntropyLoss", "weight": 1.0},
            }
        }
    )
    for cfg in (listed, keyed):
        fn = compound.get_combined(losses=cfg.losses)
        np.testing.assert_allclose(fn(logits, labels), want, rtol=1e-6)
    assert set(compound.get_combined(losses=keyed.losses).terms(logits, labels)) == {
        "dice",
        "xent",
    }


def test_combined_duplicate_names_get_distinct_terms():
    fn = compound.get_combined(losses=[{"name": "dice"}, {"name": "dice", "params": {"batch": 1}}])
    logits, labels = _inputs((2, 4, 4), 2, seed=2)
    assert set(fn.terms(logits, labels)) == {"dice", "dice_1"}


def test_combined_errors():
    with pytest.raises(errors.ConfigError, match="DiceLoss"):  # lists the registered names
        compound.get_combined(losses=[{"name": "NoSuchLoss"}])
    with pytest.raises(errors.ConfigError):
        compound.get_combined(losses=[{"name": "dice", "wieght": 1.0}])
    with pytest.raises(errors.ConfigError):
        compound.get_combined(losses=[])
    with pytest.raises(errors.ConfigError):
        compound.get_combined(losses="dice")


def test_dice_ce_default_and_weights():
    logits, labels = _inputs((2, 5, 5), 3, seed=3)
    fn = registry.lookup("losses", "dice_ce", dice_weight=0.7, dice={"batch": True})
    want = 0.7 * dice.get_dice(batch=True)(logits, labels) + ce.get_ce()(logits, labels)
    np.testing.assert_allclose(fn(logits, labels), want, rtol=1e-6)
    assert set(fn.terms(logits, labels)) == {"dice", "ce"}


def test_default_deep_supervision_weights():
    # 1, 1/2, 1/4, 0 normalised by 1.75 (hand computed).
    np.testing.assert_allclose(
        compound.default_deep_supervision_weights(4), [4 / 7, 2 / 7, 1 / 7, 0.0]
    )
    assert compound.default_deep_supervision_weights(1) == (1.0,)
    np.testing.assert_allclose(compound.default_deep_supervision_weights(2), [1.0, 0.0])


def test_downsample_nearest():
    x = jnp.arange(2 * 8 * 6).reshape(2, 8, 6)
    np.testing.assert_array_equal(
        compound.downsample_nearest(x, (4, 3)), np.asarray(x)[:, ::2, ::2]
    )
    # Non-divisible: index floor(i * S / s) along each axis, checked by hand for 8 -> 3.
    got = compound.downsample_nearest(x, (3, 6))
    np.testing.assert_array_equal(got, np.asarray(x)[:, [0, 2, 5], :])
    y = jnp.zeros((1, 8, 8, 4), jnp.int32)
    assert compound.downsample_nearest(y, (4, 2, 1)).shape == (1, 4, 2, 1)


def test_deep_supervision_equals_manual_sum_3d():
    k = 3
    _, labels = _inputs((2, 8, 8, 8), k, seed=4)
    rng = np.random.default_rng(5)
    levels = [jnp.asarray(rng.normal(size=(2, s, s, s, k)), jnp.float32) for s in (8, 4, 2)]
    voxel_mask = jnp.asarray(rng.random((2, 8, 8, 8)) > 0.2)
    base = compound.get_dice_ce()
    fn = compound.deep_supervision(base)
    got = fn(levels, labels, mask=voxel_mask)
    lab = np.asarray(labels)
    msk = np.asarray(voxel_mask)
    want = (2 / 3) * base(levels[0], lab, mask=msk) + (1 / 3) * base(
        levels[1], lab[:, ::2, ::2, ::2], mask=msk[:, ::2, ::2, ::2]
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)
    terms = fn.terms(levels, labels, mask=voxel_mask)
    np.testing.assert_allclose(terms["dice"] + terms["ce"], got, rtol=1e-6)
    # Explicit weights are used as given; a per-example mask passes through unchanged.
    explicit = compound.deep_supervision(base, weights=(1.0, 0.0, 1.0))
    example_mask = jnp.array([True, False])
    want2 = base(levels[0], lab, mask=example_mask) + base(
        levels[2], lab[:, ::4, ::4, ::4], mask=example_mask
    )
    np.testing.assert_allclose(explicit(levels, labels, mask=example_mask), want2, rtol=1e-6)
    with pytest.raises(errors.ConfigError):
        compound.deep_supervision(base, weights=(1.0, 0.5))(levels, labels)


def test_deep_supervision_registered_and_jittable_with_grad():
    _, labels = _inputs((2, 8, 8), 2, seed=6)
    fn = registry.lookup(
        "losses", "deep_supervision", loss={"name": "DiceCELoss", "params": {"ce_weight": 0.5}}
    )
    rng = np.random.default_rng(7)
    levels = [jnp.asarray(rng.normal(size=(2, s, s, 2)), jnp.float32) for s in (8, 4, 2)]
    value, grads = jax.jit(jax.value_and_grad(lambda lv: jnp.mean(fn(lv, labels))))(levels)
    assert np.isfinite(value)
    assert all(np.isfinite(g).all() for g in grads)
    assert np.abs(grads[1]).sum() > 0 and np.abs(grads[2]).sum() == 0  # lowest level weight 0
