"""Pure train and eval steps, built by closure from concrete model, loss and augmentation.

Nothing here jits: the loop jits these with shardings and donates the state (STYLE.md sec. 4).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from medjax.augment import compose as augment_lib
from medjax.evaluate import sliding_window
from medjax.metrics import confusion
from medjax.metrics import regions as regions_lib
from medjax.train import optim
from medjax.train import state as state_lib

Batch = dict[str, jax.Array]
LossFn = Callable[..., jax.Array]

PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _cast(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def _forward(state, params, batch_stats, image, *, train, compute_dtype, dropout_key=None):
    """Runs the model; in bf16 both the inputs and a bf16 copy of the fp32 params go in."""
    variables = {"params": _cast(params, compute_dtype)}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    rngs = {"dropout": dropout_key} if dropout_key is not None else {}
    image = image.astype(compute_dtype)
    if train and batch_stats:
        out, updates = state.apply_fn(
            variables, image, train=True, mutable=["batch_stats"], rngs=rngs
        )
        return out, updates["batch_stats"]
    return state.apply_fn(variables, image, train=train, rngs=rngs), batch_stats


def _strided_micro_batches(x: jax.Array, k: int) -> jax.Array:
    """``[B, ...] -> [k, B // k, ...]`` where micro-batch i holds rows i, i + k, i + 2k, ...

    Strided, not contiguous: the batch axis is sharded over the data axis in contiguous blocks,
    so rows ``i::k`` are spread over every device and each micro-batch stays sharded over all of
    them. Contiguous chunks would each live on a subset of the devices, and XLA would re-gather
    them (all-gathers and k times the per-device work).
    """
    return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)


def make_train_step(
    loss_fn: LossFn,
    augment_fn: Callable[[jax.Array, dict], dict] | None,
    schedule: optax.Schedule,
    *,
    precision: str = "float32",
    grad_accum_steps: int = 1,
) -> Callable[[state_lib.TrainState, Batch, jax.Array], tuple[state_lib.TrainState, dict]]:
    """Builds ``train_step(state, batch, base_key) -> (state, metrics)``.

    The step's randomness is ``fold_in(base_key, state.step)``, split for augmentation and
    dropout, so a resumed run draws the same numbers. With ``grad_accum_steps = k`` the batch
    is split into k micro-batches whose mean gradient makes one update (the same update as one
    batch k times larger, for losses that are means over examples). Micro-batch i holds rows
    ``i, i + k, ...`` so that it stays sharded over every device (``_strided_micro_batches``).

    Args:
      loss_fn: ``loss(logits, labels) -> float32[B]`` (per example).
      augment_fn: per-example ``fn(key, sample) -> sample`` (vmapped here), or None.
      schedule: the learning-rate schedule; ``lr`` logs ``schedule(step)`` times the
        reduce-on-plateau scale found in the optimiser state (``optim.lr_scale``).
      precision: ``float32`` or ``bfloat16`` (bf16 compute; fp32 master weights and optimiser).
      grad_accum_steps: micro-batches per update.

    Returns:
      The pure step. ``metrics`` holds float32 scalars: ``loss``, ``grad_norm``, ``param_norm``,
      ``update_norm``, ``lr`` and, for a loss with ``terms`` (a compound loss), each term's
      unweighted mean as ``loss/<term>`` (logged as ``train/loss/<term>``).
    """
    compute_dtype = PRECISIONS[precision]
    terms_fn = getattr(loss_fn, "terms", None)

    def loss_and_grads(state, params, batch_stats, batch, key):
        aug_key, dropout_key = jax.random.split(key)
        if augment_fn is not None:
            batch = augment_lib.apply_batch(augment_fn, aug_key, batch)

        def objective(p):
            logits, new_stats = _forward(
                state,
                p,
                batch_stats,
                batch["image"],
                train=True,
                compute_dtype=compute_dtype,
                dropout_key=dropout_key,
            )
            loss = jnp.mean(loss_fn(logits, batch["label"]))
            # Logged only: the terms are the loss's own sub-expressions (XLA computes them once),
            # and no gradient flows through them.
            terms = {} if terms_fn is None else terms_fn(logits, batch["label"])
            terms = {f"loss/{k}": jax.lax.stop_gradient(jnp.mean(v)) for k, v in terms.items()}
            return loss, (new_stats, terms)

        (loss, (new_stats, terms)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return loss, terms, grads, new_stats

    def train_step(state: state_lib.TrainState, batch: Batch, base_key: jax.Array):
        key = jax.random.fold_in(base_key, state.step)
        if grad_accum_steps == 1:
            loss, terms, grads, new_stats = loss_and_grads(
                state, state.params, state.batch_stats, batch, key
            )
        else:
            micro = jax.tree.map(lambda x: _strided_micro_batches(x, grad_accum_steps), batch)

            def body(carry, xs):
                sums, stats = carry
                micro_batch, i = xs
                loss, terms, grads, stats = loss_and_grads(
                    state, state.params, stats, micro_batch, jax.random.fold_in(key, i)
                )
                return (jax.tree.map(jnp.add, sums, (loss, terms, grads)), stats), None

            # The terms' structure is static: trace one micro-batch abstractly to get it.
            first = jax.tree.map(lambda x: x[0], micro)
            shapes = jax.eval_shape(
                lambda: loss_and_grads(state, state.params, state.batch_stats, first, key)
            )
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[:3])
            (sums, new_stats), _ = jax.lax.scan(
                body, (zeros, state.batch_stats), (micro, jnp.arange(grad_accum_steps))
            )
            loss, terms, grads = jax.tree.map(lambda x: x / grad_accum_steps, sums)
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, batch_stats=new_stats
        )
        metrics = {
            "loss": loss.astype(jnp.float32),
            "grad_norm": optax.tree.norm(grads).astype(jnp.float32),
            "param_norm": optax.tree.norm(params).astype(jnp.float32),
            "update_norm": optax.tree.norm(updates).astype(jnp.float32),
            # The rate in force: the schedule's times the reduce-on-plateau scale (1 without).
            "lr": jnp.asarray(schedule(state.step) * optim.lr_scale(state.opt_state), jnp.float32),
            **{k: v.astype(jnp.float32) for k, v in terms.items()},
        }
        return new_state, metrics

    return train_step


def make_eval_step(
    loss_fn: LossFn,
    *,
    precision: str = "float32",
    mirror_axes: tuple[int, ...] = (),
    regions: tuple[tuple[int, ...], ...] = (),
) -> Callable[[state_lib.TrainState, Batch], dict[str, jax.Array]]:
    """Builds ``eval_step(state, batch) -> outputs`` for whole-image evaluation.

    Returns per-example ``loss [B]``, confusion counts ``tp/fp/fn/tn [B, K']`` (padding rows
    zeroed by ``batch["valid"]``) and the predicted label map ``pred int32[B, *spatial]``.
    ``mirror_axes`` (``eval.mirror_axes``): mirroring TTA, logits averaged over the flips as on
    the sliding-window path (``sliding_window.mirror_logits``). ``regions`` (``data.regions``):
    one sigmoid per label region, counted per region, ``pred`` painted as ``metrics.regions``.
    """

    def eval_step(state: state_lib.TrainState, batch: Batch) -> dict[str, jax.Array]:
        logits = sliding_window.mirror_logits(
            lambda x: predict_logits(state, x, precision=precision), batch["image"], mirror_axes
        )
        valid = batch["valid"]
        out = confusion.per_example_counts(logits, batch["label"], valid=valid, regions=regions)
        out["loss"] = jnp.where(valid, loss_fn(logits, batch["label"]), 0.0)
        out["pred"] = regions_lib.labels_from_logits(logits, regions)
        return out

    return eval_step


def make_classification_eval_step(
    loss_fn: LossFn, *, precision: str = "float32"
) -> Callable[[state_lib.TrainState, Batch], dict[str, jax.Array]]:
    """Builds ``eval_step(state, batch) -> {"logits": [B, K], "loss": [B]}`` (classification).

    The loss of padding rows (``batch["valid"]`` False) is 0; metrics are computed on the host
    from the logits.
    """

    def eval_step(state: state_lib.TrainState, batch: Batch) -> dict[str, jax.Array]:
        logits = predict_logits(state, batch["image"], precision=precision)
        loss = jnp.where(batch["valid"], loss_fn(logits, batch["label"]), 0.0)
        return {"logits": logits, "loss": loss}

    return eval_step


def predict_logits(state: state_lib.TrainState, image: jax.Array, *, precision: str) -> jax.Array:
    """Inference logits ``float32[B, *spatial, K]`` (deep supervision: the full-resolution head)."""
    out, _ = _forward(
        state,
        state.params,
        state.batch_stats,
        image,
        train=False,
        compute_dtype=PRECISIONS[precision],
    )
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out.astype(jnp.float32)


def predict_labels(logits: jax.Array) -> jax.Array:
    """Logits ``[B, *spatial, K]`` -> label map ``int32[B, *spatial]`` (sigmoid > 0.5 for K=1;
    ``metrics.regions.labels_from_logits``, which also paints label regions)."""
    return regions_lib.labels_from_logits(logits)
