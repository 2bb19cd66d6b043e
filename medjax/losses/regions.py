"""Region-based training (nnU-Net's, for BraTS-style overlapping labels): a sigmoid per region.

``with_regions(loss_fn, regions)`` turns any registered loss into a region loss: region ``i``'s
logit channel is scored by ``loss_fn``'s binary (``K == 1``, sigmoid) form against the target
``isin(labels, regions[i])``, and the loss is the mean over regions. For Dice + CE this is
nnU-Net's ``DC_and_BCE_loss``: the soft Dice of each sigmoid channel averaged over the regions
(background is never a region), plus the binary cross-entropy averaged over voxels and
channels. Labels stay integer label maps everywhere else (augmentation, patch sampling);
only the loss and the metrics (``metrics.regions``) see regions.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from medjax.metrics import regions as regions_lib

LossFn = Callable[..., jax.Array]


def region_targets(labels: jax.Array, regions: regions_lib.Regions) -> jax.Array:
    """``int[B, *spatial]`` label map -> ``int32[B, *spatial, R]``, 1 where a voxel is in a
    region (regions may overlap)."""
    masks = regions_lib.class_masks(labels, num_classes=len(regions), regions=regions)
    return masks.astype(jnp.int32)


def with_regions(loss_fn: LossFn, regions: regions_lib.Regions) -> LossFn:
    """``loss_fn`` applied per region channel as a binary sigmoid loss, averaged over regions.

    Args:
      loss_fn: a registered loss, ``loss_fn(logits, labels, *, mask=None) -> float32[B]``.
      regions: ``data.regions`` (``metrics.regions.parse``d), ``R`` of them.

    Returns:
      ``loss(logits [B, *spatial, R], labels int[B, *spatial], *, mask=None) -> float32[B]``,
      with ``terms`` (each unweighted term averaged over regions) when ``loss_fn`` has them.
    """
    regions = tuple(regions)

    def per_region(fn: Callable, logits: jax.Array, labels: jax.Array, mask) -> jax.Array:
        if logits.shape[-1] != len(regions):
            raise ValueError(
                f"{len(regions)} regions (data.regions) need {len(regions)} logit channels "
                f"(model.num_classes); got logits {logits.shape}."
            )
        targets = region_targets(labels, regions)
        # One binary problem per channel: vmap the K == 1 form of the loss over the regions.
        return jax.vmap(lambda lg, t: fn(lg[..., None], t, mask=mask), in_axes=(-1, -1))(
            logits, targets
        )

    def region_loss(
        logits: jax.Array, labels: jax.Array, *, mask: jax.typing.ArrayLike | None = None
    ) -> jax.Array:
        return jnp.mean(per_region(loss_fn, logits, labels, mask), axis=0)

    inner_terms = getattr(loss_fn, "terms", None)
    if inner_terms is not None:

        def terms(
            logits: jax.Array, labels: jax.Array, *, mask: jax.typing.ArrayLike | None = None
        ) -> dict[str, jax.Array]:
            values = per_region(inner_terms, logits, labels, mask)
            return {k: jnp.mean(v, axis=0) for k, v in values.items()}

        region_loss.terms = terms
    return region_loss
