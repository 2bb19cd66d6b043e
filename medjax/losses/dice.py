"""Region-overlap losses: soft Dice, generalized Dice, Tversky and focal Tversky.

Every factory here returns ``loss_fn(logits, labels, *, mask=None) -> float32[B]`` as fixed in
docs/CONVENTIONS.md: ``logits [B, *spatial, K]`` (``K == 1`` sigmoid, ``K > 1`` softmax),
``labels int[B, *spatial]``, ``mask`` ``[B]`` or ``[B, *spatial]``. The same code serves 2D, 3D
and classification (``logits [B, K]``, ``labels [B]``; there each example is a single "voxel", so
``batch=True`` is the sensible choice). All sums run in float32 whatever the logits' dtype.

Notation per class ``c`` with probabilities ``p`` and one-hot targets ``t`` summed over the
(masked) voxels: ``TP = sum p t``, ``FP = sum p (1 - t)``, ``FN = sum (1 - p) t``.

``batch=True`` pools the sums over the batch as well (nnU-Net's "batch dice"): the loss is one
number, returned broadcast to ``[B]`` so that the caller's mean over examples (or its mean over
``valid`` examples) is exactly the batch loss. Masked-out examples add nothing to the pool.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from medjax import errors, registry
from medjax.losses import _classes

LossFn = Callable[..., jax.Array]


def _check_nonnegative(**values: float) -> None:
    for name, value in values.items():
        if value < 0:
            raise errors.ConfigError(f"loss option {name}={value!r} must be >= 0.")


def _region_sums(
    logits: jax.Array,
    labels: jax.Array,
    mask: jax.typing.ArrayLike | None,
    *,
    include_background: bool,
    batch: bool,
) -> dict[str, jax.Array]:
    """Masked soft counts per class.

    Returns:
      Dict of ``tp, fp, fn, p_sum, t_sum, p2_sum`` (``p2_sum = sum p^2`` for squared Dice),
      each ``float32[B, K']`` or, with ``batch=True``, ``float32[K']``.
    """
    probs, targets = _classes.probs_and_targets(
        logits, labels, include_background=include_background
    )
    weights = _classes.voxel_weights(mask, labels)[..., None]
    axes = _classes.spatial_axes(labels)
    if batch:
        axes = (0,) + axes
    wp, wt = weights * probs, weights * targets
    tp = jnp.sum(wp * targets, axis=axes)
    p_sum = jnp.sum(wp, axis=axes)
    t_sum = jnp.sum(wt, axis=axes)
    # FP and FN are derived from the three sums instead of summed separately: the identities
    # sum p(1-t) = sum p - TP and sum (1-p)t = sum t - TP hold exactly for soft counts.
    return {
        "tp": tp,
        "fp": p_sum - tp,
        "fn": t_sum - tp,
        "p_sum": p_sum,
        "t_sum": t_sum,
        "p2_sum": jnp.sum(wp * probs, axis=axes),
    }


def _per_example(loss: jax.Array, labels: jax.Array, batch: bool) -> jax.Array:
    """``float32[B]``: the per-example loss, or the pooled loss broadcast over the batch."""
    if batch:
        return jnp.broadcast_to(loss, labels.shape[:1])
    return loss


@registry.register("losses.dice", "losses.DiceLoss")
def get_dice(
    *,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    batch: bool = False,
    include_background: bool = False,
    squared: bool = False,
) -> LossFn:
    """Soft Dice loss, ``1 - mean_c (2 TP_c + smooth_nr) / (D_c + smooth_dr)``.

    ``D_c = sum p + sum t`` (= ``2TP + FP + FN``), or ``sum p^2 + sum t^2`` with ``squared``
    (Milletari et al.'s V-Net form). The mean is over the ``K'`` classes that count: the one
    sigmoid channel for ``K == 1``; for softmax all ``K`` classes or, by default, the ``K - 1``
    foreground classes. A class absent from both prediction and target scores
    ``smooth_nr / (sum p + smooth_dr)``, i.e. close to 0 unless ``p`` is nearly exactly 0, as in
    MONAI and nnU-Net; ``batch=True`` makes such classes rare.

    Args:
      smooth_nr: added to the numerator.
      smooth_dr: added to the denominator; keeps the loss finite when a class is empty.
      batch: pool the sums over the batch (see the module docstring).
      include_background: keep softmax class 0 in the mean.
      squared: square the probabilities in the denominator.

    Returns:
      ``loss_fn(logits [B, *spatial, K], labels int[B, *spatial], *, mask=None) -> float32[B]``.

    Raises:
      ConfigError: a smoothing term is negative.
    """
    _check_nonnegative(smooth_nr=smooth_nr, smooth_dr=smooth_dr)

    def loss_fn(
        logits: jax.Array, labels: jax.Array, *, mask: jax.typing.ArrayLike | None = None
    ) -> jax.Array:
        sums = _region_sums(
            logits, labels, mask, include_background=include_background, batch=batch
        )
        if squared:
            # Targets are 0/1, so sum t^2 = sum t.
            denominator = sums["p2_sum"] + sums["t_sum"]
        else:
            denominator = sums["p_sum"] + sums["t_sum"]
        dice = (2.0 * sums["tp"] + smooth_nr) / (denominator + smooth_dr)
        return _per_example(1.0 - jnp.mean(dice, axis=-1), labels, batch)

    return loss_fn


@registry.register("losses.generalized_dice", "losses.GeneralizedDiceLoss")
def get_generalized_dice(
    *,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    batch: bool = False,
    include_background: bool = False,
) -> LossFn:
    """Generalized Dice loss (Sudre et al. 2017) with inverse squared volume class weights.

    ``w_c = 1 / (sum t_c)^2``;
    ``loss = 1 - (2 sum_c w_c TP_c + smooth_nr) / (sum_c w_c (sum p_c + sum t_c) + smooth_dr)``.
    A class with an empty target would get an infinite weight; as MONAI does, it gets the
    largest finite weight of the same example (or pool) instead, and if every class is empty
    all weights are 0 and the loss is ``1 - smooth_nr / smooth_dr`` (0 with equal smoothing),
    a constant with zero gradient: on an example with an empty reference only a companion
    term (CE) or ``batch=True`` penalises false positives.

    Args:
      smooth_nr: added to the numerator.
      smooth_dr: added to the denominator.
      batch: pool the sums (and the weights' volumes) over the batch.
      include_background: keep softmax class 0.

    Returns:
      ``loss_fn(logits [B, *spatial, K], labels int[B, *spatial], *, mask=None) -> float32[B]``.

    Raises:
      ConfigError: a smoothing term is negative.
    """
    _check_nonnegative(smooth_nr=smooth_nr, smooth_dr=smooth_dr)

    def loss_fn(
        logits: jax.Array, labels: jax.Array, *, mask: jax.typing.ArrayLike | None = None
    ) -> jax.Array:
        sums = _region_sums(
            logits, labels, mask, include_background=include_background, batch=batch
        )
        volume = sums["t_sum"]
        present = volume > 0
        # The inner where keeps 1/0 out of the graph so no inf or NaN reaches a gradient.
        weight = jnp.where(present, 1.0 / jnp.square(jnp.where(present, volume, 1.0)), 0.0)
        max_weight = jnp.max(weight, axis=-1, keepdims=True)
        weight = jax.lax.stop_gradient(jnp.where(present, weight, max_weight))
        numerator = 2.0 * jnp.sum(weight * sums["tp"], axis=-1) + smooth_nr
        denominator = jnp.sum(weight * (sums["p_sum"] + sums["t_sum"]), axis=-1) + smooth_dr
        return _per_example(1.0 - numerator / denominator, labels, batch)

    return loss_fn


def _tversky_index(
    logits: jax.Array,
    labels: jax.Array,
    mask: jax.typing.ArrayLike | None,
    *,
    alpha: float,
    beta: float,
    smooth_nr: float,
    smooth_dr: float,
    batch: bool,
    include_background: bool,
) -> jax.Array:
    """``(TP + smooth_nr) / (TP + alpha FP + beta FN + smooth_dr)``.

    Returns:
      ``float32[B, K']``, or ``float32[K']`` with ``batch=True``.
    """
    sums = _region_sums(logits, labels, mask, include_background=include_background, batch=batch)
    denominator = sums["tp"] + alpha * sums["fp"] + beta * sums["fn"] + smooth_dr
    return (sums["tp"] + smooth_nr) / denominator


@registry.register("losses.tversky", "losses.TverskyLoss")
def get_tversky(
    *,
    alpha: float = 0.3,
    beta: float = 0.7,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    batch: bool = False,
    include_background: bool = False,
) -> LossFn:
    """Tversky loss (Salehi et al. 2017), ``1 - mean_c TI_c``.

    ``TI_c = (TP_c + smooth_nr) / (TP_c + alpha FP_c + beta FN_c + smooth_dr)``. ``alpha`` weighs
    false positives and ``beta`` false negatives (MONAI's naming); ``alpha = beta = 0.5`` is the
    soft Dice loss. The defaults 0.3 / 0.7 are the paper's, favouring recall.

    Args:
      alpha: weight of false positives.
      beta: weight of false negatives.
      smooth_nr: added to the numerator.
      smooth_dr: added to the denominator.
      batch: pool the sums over the batch.
      include_background: keep softmax class 0.

    Returns:
      ``loss_fn(logits [B, *spatial, K], labels int[B, *spatial], *, mask=None) -> float32[B]``.

    Raises:
      ConfigError: a weight or smoothing term is negative.
    """
    _check_nonnegative(alpha=alpha, beta=beta, smooth_nr=smooth_nr, smooth_dr=smooth_dr)

    def loss_fn(
        logits: jax.Array, labels: jax.Array, *, mask: jax.typing.ArrayLike | None = None
    ) -> jax.Array:
        index = _tversky_index(
            logits,
            labels,
            mask,
            alpha=alpha,
            beta=beta,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
            include_background=include_background,
        )
        return _per_example(1.0 - jnp.mean(index, axis=-1), labels, batch)

    return loss_fn


@registry.register("losses.focal_tversky", "losses.FocalTverskyLoss")
def get_focal_tversky(
    *,
    alpha: float = 0.3,
    beta: float = 0.7,
    gamma: float = 0.75,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    batch: bool = False,
    include_background: bool = False,
) -> LossFn:
    """Focal Tversky loss (Abraham & Khan 2019), ``mean_c (1 - TI_c) ** gamma``.

    The paper writes the exponent as ``1 / gamma`` with ``gamma = 4/3``; here ``gamma`` is the
    exponent itself, so the default 0.75 is the paper's setting. ``gamma < 1`` raises the loss
    of classes that are already well segmented less than that of hard ones. ``TI_c`` is as in
    ``get_tversky``.

    Args:
      alpha: weight of false positives.
      beta: weight of false negatives.
      gamma: exponent applied to ``1 - TI_c``; must be > 0.
      smooth_nr: added to the numerator.
      smooth_dr: added to the denominator.
      batch: pool the sums over the batch.
      include_background: keep softmax class 0.

    Returns:
      ``loss_fn(logits [B, *spatial, K], labels int[B, *spatial], *, mask=None) -> float32[B]``.

    Raises:
      ConfigError: a weight or smoothing term is negative, or ``gamma <= 0``.
    """
    _check_nonnegative(alpha=alpha, beta=beta, smooth_nr=smooth_nr, smooth_dr=smooth_dr)
    if gamma <= 0:
        raise errors.ConfigError(f"loss option gamma={gamma!r} must be > 0.")

    def loss_fn(
        logits: jax.Array, labels: jax.Array, *, mask: jax.typing.ArrayLike | None = None
    ) -> jax.Array:
        index = _tversky_index(
            logits,
            labels,
            mask,
            alpha=alpha,
            beta=beta,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
            include_background=include_background,
        )
        # x ** gamma with gamma < 1 has an infinite slope at 0, which a perfect prediction
        # (TI == 1 in float32) reaches; the floor keeps the gradient finite there.
        distance = jnp.maximum(1.0 - index, 1e-7)
        return _per_example(jnp.mean(distance**gamma, axis=-1), labels, batch)

    return loss_fn
