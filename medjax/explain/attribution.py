"""Attribution maps of a scalar score of one input (pure JAX; jit/vmap friendly).

Every function takes ``score_fn(x) -> float32[]`` for one example ``x: float32[*spatial, C]``
(channels-last, no batch axis) and returns a map of ``x``'s shape (Grad-CAM: ``[*spatial]``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ScoreFn = Callable[[jax.Array], jax.Array]


def input_gradient(score_fn: ScoreFn, x: jax.Array) -> jax.Array:
    """``d score / d x``, the plain saliency map, ``float32[*x.shape]``."""
    return jax.grad(score_fn)(x)


def gradient_x_input(score_fn: ScoreFn, x: jax.Array) -> jax.Array:
    """``x * d score / d x``: for a linear score ``sum(w * x)`` this is exactly ``w * x``."""
    return x * jax.grad(score_fn)(x)


def integrated_gradients(
    score_fn: ScoreFn,
    x: jax.Array,
    baseline: jax.Array | None = None,
    *,
    steps: int = 32,
    batch_size: int = 8,
) -> jax.Array:
    """Integrated gradients (Sundararajan et al. 2017), trapezoidal rule over ``steps``.

    ``(x - b) * integral_0^1 grad f(b + a (x - b)) da``. Completeness: the map sums to
    ``f(x) - f(b)`` up to the quadrature error, which shrinks as ``1 / steps**2`` for a smooth
    ``f``. ``batch_size`` path points are differentiated at once (``lax.map`` over ``vmap``):
    memory is ``batch_size`` backward passes.

    Args:
      score_fn: one example -> scalar.
      x: ``float32[*spatial, C]``.
      baseline: the reference input (default zeros, e.g. air/background after normalisation).
      steps: quadrature intervals (``steps + 1`` gradient evaluations).
      batch_size: path points per vmapped gradient call.
    """
    b = jnp.zeros_like(x) if baseline is None else jnp.asarray(baseline, x.dtype)
    alphas = jnp.linspace(0.0, 1.0, steps + 1, dtype=x.dtype)
    weights = jnp.full((steps + 1,), 1.0 / steps, x.dtype).at[jnp.array([0, -1])].mul(0.5)
    grad = jax.grad(score_fn)

    def point(aw):
        a, w = aw
        return w * grad(b + a * (x - b))

    grads = jax.lax.map(point, (alphas, weights), batch_size=batch_size)
    return (x - b) * grads.sum(axis=0)


def region_score(logits: jax.Array, cls: int | jax.Array) -> jax.Array:
    """Segmentation score: the sum of class ``cls``'s logit over the voxels predicted ``cls``.

    ``logits: float32[*spatial, K]`` (K = 1: sigmoid foreground). The mask is the model's own
    prediction with its gradient stopped, so the map explains that region's evidence. When no
    voxel is predicted ``cls`` the score is the class's logit summed over the whole image (the
    evidence for and against the class everywhere), not 0: an empty region would give all-zero
    maps that explain nothing.
    """
    if logits.shape[-1] == 1:  # jnp.where: ``cls`` may be traced
        positive = cls == 1
        mask = jnp.where(positive, logits[..., 0] > 0, logits[..., 0] <= 0)
        logit = jnp.where(positive, logits[..., 0], -logits[..., 0])
    else:
        mask = jnp.argmax(logits, axis=-1) == cls
        logit = jnp.take(logits, cls, axis=-1)
    mask = jnp.where(jnp.any(mask), mask, True)  # empty region: the whole image
    return jnp.sum(jnp.where(jax.lax.stop_gradient(mask), logit, 0.0))


def class_score(logits: jax.Array, cls: int | jax.Array) -> jax.Array:
    """Classification score of one example's ``logits: float32[K]`` (K = 1: the logit, sign by
    class)."""
    if logits.shape[-1] == 1:  # jnp.where: ``cls`` may be traced (the predicted class)
        return jnp.where(cls == 1, logits[0], -logits[0])
    return logits[cls]


def last_conv_path(apply_fn: Callable[..., Any], x: jax.Array) -> tuple[str, ...]:
    """The module path of the last ``nn.Conv`` a model calls on ``x`` (Grad-CAM's layer).

    ``apply_fn(x)`` runs the model (e.g. ``lambda x: model.apply(variables, x)``).

    Raises:
      ValueError: no convolution, or attention after the last one (a ViT's patch embedding).
    """
    paths: list[tuple[str, ...]] = []
    attention_after = False

    def record(next_fun, args, kwargs, context):
        nonlocal attention_after
        if context.method_name == "__call__":
            if isinstance(context.module, nn.Conv):
                paths.append(context.module.path)
                attention_after = False
            elif isinstance(context.module, nn.MultiHeadDotProductAttention):
                attention_after = True
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        # A fresh lambda: eval_shape caches traces by function, and a cached trace would not
        # run the interceptor.
        jax.eval_shape(lambda v: apply_fn(v), x)
    if not paths:
        raise ValueError("Grad-CAM needs a convolutional model: no nn.Conv was called.")
    if attention_after:  # a ViT: its one conv is the patch embedding, not a feature map
        raise ValueError("Grad-CAM needs a CNN: attention follows the last convolution.")
    return paths[-1]


def grad_cam(
    apply_fn: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    head: Callable[[jax.Array], jax.Array],
    layer: Sequence[str],
) -> jax.Array:
    """Grad-CAM (Selvaraju et al. 2017) at the output of the conv module at path ``layer``.

    The Flax models do not return their feature maps, so the layer's output ``A`` is reached
    with ``nn.intercept_methods``: a zero ``delta`` is added to it, and ``d score / d delta`` is
    ``d score / d A``. Channel weights are the spatial means of that gradient; the map is
    ``relu(sum_k w_k A_k)`` resized (linearly) to ``x``'s spatial shape and scaled to [0, 1].

    Args:
      apply_fn: ``x[None] -> logits`` of the model (a batch of one).
      x: ``float32[*spatial, C]``.
      head: model output (batch of one) -> scalar score, e.g. ``lambda o: o[0, cls]``.
      layer: from ``last_conv_path``.

    Returns:
      ``float32[*spatial]`` in [0, 1].
    """
    layer = tuple(layer)
    xb = x[None]
    captured = {}

    def shape_of(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.module.path == layer and context.method_name == "__call__":
            captured["shape"] = out.shape
        return out

    with nn.intercept_methods(shape_of):
        jax.eval_shape(lambda v: apply_fn(v), xb)  # fresh lambda: see last_conv_path

    def score(delta):
        feats = {}

        def add(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.module.path == layer and context.method_name == "__call__":
                out = out + delta
                feats["a"] = out
            return out

        with nn.intercept_methods(add):
            s = head(apply_fn(xb))
        return s, feats["a"]

    delta = jnp.zeros(captured["shape"], jnp.float32)
    grads, feats = jax.grad(score, has_aux=True)(delta)
    spatial_axes = tuple(range(1, grads.ndim - 1))
    w = grads.mean(axis=spatial_axes, keepdims=True)
    cam = jax.nn.relu((w * feats).sum(axis=-1))[0]
    cam = jax.image.resize(cam, x.shape[:-1], method="linear")
    return cam / jnp.maximum(cam.max(), 1e-12)
