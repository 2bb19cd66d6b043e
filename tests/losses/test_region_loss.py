"""Region losses: a sigmoid per region, against numpy float64 soft Dice + BCE per region."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax import registry
from medjax.losses import regions as region_loss

REGIONS = ((1, 2), (2,))


def _reference(logits, labels):
    """Mean over regions of (soft Dice loss + BCE), per example, float64."""
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))  # [B, *S, R]
    out = np.zeros(logits.shape[0])
    for r, values in enumerate(REGIONS):
        t = np.isin(labels, values).astype(np.float64)
        pr = p[..., r]
        axes = tuple(range(1, labels.ndim))
        dice = (2 * (pr * t).sum(axes) + 1e-5) / (pr.sum(axes) + t.sum(axes) + 1e-5)
        bce = -(t * np.log(pr) + (1 - t) * np.log(1 - pr)).mean(axes)
        out += ((1 - dice) + bce) / len(REGIONS)
    return out


def test_region_dice_ce_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (3, 6, 7, 2)).astype(np.float32)
    labels = rng.integers(0, 3, (3, 6, 7))
    labels[2] = 0  # an example with both regions empty
    loss_fn = region_loss.with_regions(registry.lookup("losses", "dice_ce"), REGIONS)
    got = jax.jit(loss_fn)(jnp.asarray(logits), jnp.asarray(labels))
    want = _reference(logits, labels)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    terms = loss_fn.terms(jnp.asarray(logits), jnp.asarray(labels))
    assert set(terms) == {"dice", "ce"}
    np.testing.assert_allclose(np.asarray(terms["dice"] + terms["ce"]), want, rtol=1e-5)


def test_region_loss_needs_one_channel_per_region():
    loss_fn = region_loss.with_regions(registry.lookup("losses", "dice"), REGIONS)
    with pytest.raises(ValueError, match="2 logit channels"):
        loss_fn(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 4, 4), jnp.int32))
