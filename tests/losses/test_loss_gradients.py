"""Every loss keeps finite values and gradients at the edges (issue 6).

Edges: empty reference, all-foreground reference, logits at +-30 (right and wrong), logits at
+-100 (probabilities exactly 0 and 1 in float32), and an all-masked batch.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax import registry

LOSSES = [
    ("dice", {}),
    ("dice", {"batch": True, "squared": True, "include_background": True}),
    ("generalized_dice", {}),
    ("generalized_dice", {"batch": True}),
    ("tversky", {}),
    ("focal_tversky", {"gamma": 0.75}),
    ("focal_tversky", {"gamma": 2.0, "batch": True}),
    ("ce", {"label_smoothing": 0.1}),
    ("ce", {"pos_weight": 3.0}),
    ("focal", {"gamma": 2.0}),
    ("focal", {"gamma": 0.5}),
    ("dice_ce", {}),
]


def _labels(kind, shape, k):
    fg = 1 if k == 1 else k - 1
    if kind == "empty":
        return jnp.zeros(shape, jnp.int32)
    if kind == "full":
        return jnp.full(shape, fg, jnp.int32)
    return jnp.asarray(np.random.default_rng(0).integers(0, max(k, 2), shape), jnp.int32)


def _logits(kind, labels, k):
    scale = 30.0 if kind.endswith("30") else 100.0
    target = labels if k > 1 else labels
    if k == 1:
        sign = jnp.where(target != 0, 1.0, -1.0)
        if kind.startswith("wrong"):
            sign = -sign
        return (scale * sign)[..., None]
    cls = target if kind.startswith("right") else (target + 1) % k
    return scale * (2.0 * jax.nn.one_hot(cls, k) - 1.0)


def _edge_batch(k, spatial):
    """All edge cases stacked along the batch axis, so one compile covers them.

    Per-example losses keep the examples independent; ``batch=True`` losses pool them, which
    still has to stay finite. The last three examples have moderate random logits.
    """
    logits, labels, names = [], [], []
    for label_kind in ("empty", "full", "random"):
        lab = _labels(label_kind, (1,) + spatial, k)
        for logit_kind in ("right30", "wrong30", "right100", "wrong100"):
            logits.append(_logits(logit_kind, lab, k))
            labels.append(lab)
            names.append(f"{label_kind}/{logit_kind}")
    rng = np.random.default_rng(1)
    for label_kind in ("empty", "full", "random"):
        labels.append(_labels(label_kind, (1,) + spatial, k))
        logits.append(jnp.asarray(rng.normal(size=(1,) + spatial + (k,)), jnp.float32))
        names.append(f"{label_kind}/moderate")
    return jnp.concatenate(logits), jnp.concatenate(labels), names


@pytest.mark.parametrize("name,opts", LOSSES)
@pytest.mark.parametrize("k", [1, 3])
def test_values_and_gradients_finite(name, opts, k):
    loss_fn = registry.lookup("losses", name, **opts)
    grad_fn = jax.jit(jax.value_and_grad(lambda x, y, m: jnp.sum(loss_fn(x, y, mask=m)), argnums=0))
    spatial = (3, 3, 3) if k == 1 else (4, 4)  # 3D and 2D
    logits, labels, names = _edge_batch(k, spatial)
    for mask in (jnp.ones(len(names), bool), jnp.zeros(len(names), bool)):
        value, grad = grad_fn(logits, labels, mask)
        assert np.isfinite(value), (name, opts, k)
        assert grad.dtype == jnp.float32
        finite = np.isfinite(np.asarray(grad)).reshape(len(names), -1).all(-1)
        assert finite.all(), [n for n, ok in zip(names, finite, strict=True) if not ok]
    # Gradients at moderate logits are not all zero: the loss is really differentiable there.
    value, grad = grad_fn(logits, labels, jnp.ones(len(names), bool))
    for i in range(len(names) - 3, len(names)):
        if name == "generalized_dice" and names[i].startswith("empty") and not opts:
            # Documented: with every class empty all weights are 0 and the loss is constant.
            np.testing.assert_array_equal(grad[i], 0.0)
        else:
            assert np.abs(grad[i]).sum() > 0, (name, opts, names[i])


def test_confident_correct_predictions_cost_nearly_nothing():
    labels = _labels("random", (2, 4, 4), 3)
    logits = _logits("right30", labels, 3)
    for name in ("dice", "tversky", "ce", "focal", "generalized_dice"):
        value = registry.lookup("losses", name)(logits, labels)
        np.testing.assert_allclose(value, 0.0, atol=1e-4, err_msg=name)
