"""Distribution losses: (weighted) cross-entropy and focal loss, per example.

Each factory returns ``loss_fn(logits, labels, *, mask=None) -> float32[B]`` (see
docs/CONVENTIONS.md): ``logits [B, *spatial, K]``, ``labels int[B, *spatial]``; ``K == 1`` is a
sigmoid binary problem (target ``labels != 0``), ``K > 1`` a softmax over ``K`` classes. The
per-voxel loss is averaged over the voxels of each example that ``mask`` keeps (``[B]`` or
``[B, *spatial]``); an example with nothing kept scores 0. Classification (``logits [B, K]``,
``labels [B]``) is the case with no spatial axes. Everything runs in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from medjax import errors, registry
from medjax.losses import _classes

LossFn = Callable[..., jax.Array]


def _class_weights(weights: Sequence[float] | None, num_classes: int) -> jax.Array | None:
    """Per-class weights as ``float32[K]`` (``[2]`` for sigmoid: background, foreground)."""
    if weights is None:
        return None
    expected = 2 if num_classes == 1 else num_classes
    weights = jnp.asarray(weights, jnp.float32)
    if weights.shape != (expected,):
        raise errors.ConfigError(
            f"loss option weights has {weights.shape} entries; logits with K={num_classes} "
            f"need {expected} (one per class; [background, foreground] when K == 1)."
        )
    return weights


def _binary_ce(logits: jax.Array, targets: jax.Array, pos_weight: float | None) -> jax.Array:
    """``-(pos_weight * y log sigmoid(x) + (1 - y) log sigmoid(-x))``, elementwise.

    Written with ``log_sigmoid`` (as optax does) so logits of +-30 or more stay finite; optax's
    ``sigmoid_binary_cross_entropy`` has no ``pos_weight``, which PyTorch's BCEWithLogits has.
    """
    log_p = jax.nn.log_sigmoid(logits)
    log_not_p = jax.nn.log_sigmoid(-logits)
    positive = targets * log_p
    if pos_weight is not None:
        positive = pos_weight * positive
    return -(positive + (1.0 - targets) * log_not_p)


def _validate_ce_options(label_smoothing: float, pos_weight: float | None) -> None:
    if not 0.0 <= label_smoothing < 1.0:
        raise errors.ConfigError(
            f"loss option label_smoothing={label_smoothing!r} must be in [0, 1)."
        )
    if pos_weight is not None and pos_weight <= 0:
        raise errors.ConfigError(f"loss option pos_weight={pos_weight!r} must be > 0.")


@registry.register("losses.ce", "losses.bce", "losses.CrossEntropyLoss", "losses.BCELoss")
def get_ce(
    *,
    weights: Sequence[float] | None = None,
    pos_weight: float | None = None,
    label_smoothing: float = 0.0,
) -> LossFn:
    """Cross-entropy: sigmoid binary CE for ``K == 1``, softmax CE for ``K > 1``.

    Per voxel, with ``y`` the integer label:

    * ``K == 1``: ``-(pos_weight * t log s + (1 - t) log(1 - s))`` with ``s = sigmoid(x)`` and
      ``t = (y != 0)``, smoothed to ``t (1 - ls) + ls / 2``.
    * ``K > 1``: ``-sum_k q_k log softmax(x)_k`` with ``q = one_hot(y) (1 - ls) + ls / K``
      (``optax.losses.softmax_cross_entropy``).

    With per-class ``weights`` each voxel's loss is scaled by ``weights[y]`` and the
    per-example average becomes ``sum(w m l) / sum(w m)`` (PyTorch's weighted "mean"
    reduction, applied per example); ``m`` is the mask.

    Args:
      weights: optional per-class weights, ``K`` of them (``[background, foreground]`` for
        ``K == 1``).
      pos_weight: optional weight of the positive term for ``K == 1`` (PyTorch's
        ``pos_weight``); ignored for softmax.
      label_smoothing: ``ls`` in ``[0, 1)``.

    Returns:
      ``loss_fn(logits [B, *spatial, K], labels int[B, *spatial], *, mask=None) -> float32[B]``.

    Raises:
      ConfigError: an option is out of range, or (when called) ``weights`` has the wrong length.
    """
    _validate_ce_options(label_smoothing, pos_weight)

    def loss_fn(
        logits: jax.Array, labels: jax.Array, *, mask: jax.typing.ArrayLike | None = None
    ) -> jax.Array:
        _classes.check_shapes(logits, labels)
        logits = logits.astype(jnp.float32)
        num_classes = logits.shape[-1]
        class_weights = _class_weights(weights, num_classes)
        voxel_weights = _classes.voxel_weights(mask, labels)
        if num_classes == 1:
            targets = (labels != 0).astype(jnp.float32)
            targets = targets * (1.0 - label_smoothing) + 0.5 * label_smoothing
            per_voxel = _binary_ce(logits[..., 0], targets, pos_weight)
            weight_index = (labels != 0).astype(jnp.int32)
        else:
            if label_smoothing:
                targets = optax.smooth_labels(
                    jax.nn.one_hot(labels, num_classes, dtype=jnp.float32), label_smoothing
                )
                per_voxel = optax.losses.softmax_cross_entropy(logits, targets)
            else:
                # logsumexp minus the label's logit, picked by a one-hot product: optax's
                # take_along_axis picks it by a gather whose backward is a scatter-add (XLA
                # spent seconds per compilation constant-folding it at 24x160x160 patches).
                one_hot = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
                per_voxel = jax.nn.logsumexp(logits, axis=-1) - jnp.sum(one_hot * logits, -1)
            weight_index = labels
        if class_weights is not None:
            voxel_weights = voxel_weights * class_weights[weight_index]
        return _classes.masked_mean(per_voxel, voxel_weights)

    return loss_fn


@registry.register("losses.weighted_ce", "losses.WeightedCrossEntropy")
def get_weighted_ce(
    *,
    weights: Sequence[float],
    pos_weight: float | None = None,
    label_smoothing: float = 0.0,
) -> LossFn:
    """``get_ce`` with required per-class ``weights`` (see there for the math).

    Args:
      weights: per-class weights, ``K`` of them (``[background, foreground]`` for ``K == 1``).
      pos_weight: optional positive-term weight for ``K == 1``.
      label_smoothing: in ``[0, 1)``.

    Returns:
      ``loss_fn(logits [B, *spatial, K], labels int[B, *spatial], *, mask=None) -> float32[B]``.
    """
    return get_ce(weights=weights, pos_weight=pos_weight, label_smoothing=label_smoothing)


@registry.register("losses.focal", "losses.FocalLoss")
def get_focal(
    *,
    gamma: float = 2.0,
    alpha: float | Sequence[float] | None = None,
) -> LossFn:
    """Focal loss (Lin et al. 2017), ``-a_t (1 - p_t) ** gamma log p_t`` per voxel.

    ``p_t`` is the predicted probability of the true class. ``(1 - p_t) ** gamma`` is computed
    as ``exp(gamma log(1 - p_t))`` with ``log(1 - p_t)`` taken straight from the logits
    (``log_sigmoid(-z_t)`` for sigmoid, a log-sum-exp over the other classes for softmax), so
    it is finite with finite gradients even at logits of +-30 and for ``gamma < 1``; optax's
    ``sigmoid_focal_loss`` is not, which is why it is not used here.

    ``alpha``: for ``K == 1`` a float, ``a_t = alpha`` for foreground and ``1 - alpha`` for
    background (RetinaNet uses 0.25); for ``K > 1`` a sequence of ``K`` per-class weights,
    ``a_t = alpha[y]``. ``None`` means ``a_t = 1``. The per-example value is the masked mean
    over voxels (not divided by the weights).

    Args:
      gamma: focusing exponent, >= 0 (0 gives cross-entropy).
      alpha: class balance (see above).

    Returns:
      ``loss_fn(logits [B, *spatial, K], labels int[B, *spatial], *, mask=None) -> float32[B]``.

    Raises:
      ConfigError: ``gamma < 0``, or (when called) ``alpha`` does not fit ``K``.
    """
    if gamma < 0:
        raise errors.ConfigError(f"loss option gamma={gamma!r} must be >= 0.")

    def loss_fn(
        logits: jax.Array, labels: jax.Array, *, mask: jax.typing.ArrayLike | None = None
    ) -> jax.Array:
        _classes.check_shapes(logits, labels)
        logits = logits.astype(jnp.float32)
        num_classes = logits.shape[-1]
        if num_classes == 1:
            positive = labels != 0
            # z_t is the logit of the true class: p_t = sigmoid(z_t), 1 - p_t = sigmoid(-z_t).
            z_t = jnp.where(positive, logits[..., 0], -logits[..., 0])
            log_p_t = jax.nn.log_sigmoid(z_t)
            log_not_p_t = jax.nn.log_sigmoid(-z_t)
            if alpha is None:
                alpha_t = 1.0
            elif isinstance(alpha, int | float):
                alpha_t = jnp.where(positive, alpha, 1.0 - alpha)
            else:
                raise errors.ConfigError(
                    f"focal loss with K == 1 takes a float alpha; got {alpha!r}."
                )
        else:
            onehot = jax.nn.one_hot(labels, num_classes, dtype=bool)
            log_norm = jax.nn.logsumexp(logits, axis=-1)
            log_p_t = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1) - log_norm
            log_not_p_t = jax.nn.logsumexp(logits, axis=-1, where=~onehot) - log_norm
            if alpha is None:
                alpha_t = 1.0
            else:
                alpha_arr = jnp.asarray(alpha, jnp.float32)
                if alpha_arr.shape != (num_classes,):
                    raise errors.ConfigError(
                        f"focal loss with K={num_classes} takes alpha as {num_classes} "
                        f"per-class weights; got {alpha!r}."
                    )
                alpha_t = alpha_arr[labels]
        per_voxel = -alpha_t * jnp.exp(gamma * log_not_p_t) * log_p_t
        return _classes.masked_mean(per_voxel, _classes.voxel_weights(mask, labels))

    return loss_fn
