"""What a segmentation's output channels mean: plain classes or (overlapping) label regions.

Three cases, fixed by ``model.num_classes`` (``K``) and ``data.regions``:

* ``K == 1``: one sigmoid channel; every non-zero label is foreground (``K' = 1``).
* ``K > 1`` without regions: softmax over classes ``0..K-1``; class ``c`` is ``label == c`` and
  the ``K' = K - 1`` foreground classes are scored (nnU-Net leaves background out).
* ``data.regions``, e.g. BraTS' ``((1, 2, 3), (2, 3), (3,))`` (whole tumour, tumour core,
  enhancing): one sigmoid channel per region, ``K == len(regions)``; region ``i`` is
  ``isin(label, regions[i])``, so regions may overlap (nnU-Net's region-based training).

Turning region outputs back into one label map is nnU-Net's rule: start from background and
paint the regions in order, each where its sigmoid is > 0.5 (logit > 0), with the label value
``region_labels(regions)[i]``; later (usually smaller, nested) regions overwrite earlier ones.

The functions take numpy or jax arrays (``jnp`` inside jit) and return the same kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from medjax import errors

Regions = tuple[tuple[int, ...], ...]


def _xp(x: Any) -> Any:
    return jnp if isinstance(x, jax.Array) else np


def parse(value: Any) -> Regions:
    """``data.regions`` as a tuple of tuples of label values (an int alone is a 1-tuple).

    Raises:
      ConfigError: a region is empty or holds a value that is not a positive integer.
    """
    out = []
    for region in value or ():
        values = (region,) if isinstance(region, int | np.integer) else tuple(region)
        if not values or any(
            not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 1 for v in values
        ):
            raise errors.ConfigError(
                f"data.regions={value!r}: each region is a non-empty tuple of label values >= 1 "
                "(background 0 is never part of a region), e.g. ((1, 2, 3), (2, 3), (3,))."
            )
        out.append(tuple(int(v) for v in values))
    return tuple(out)


def check(regions: Regions, num_classes: int) -> None:
    """Raises a ConfigError unless ``model.num_classes`` has one channel per region."""
    if regions and num_classes != len(regions):
        raise errors.ConfigError(
            f"data.regions has {len(regions)} regions, so model.num_classes must be "
            f"{len(regions)} (one sigmoid channel per region); got {num_classes}."
        )


def region_labels(regions: Regions) -> tuple[int, ...]:
    """The label value painted for each region when regions become a label map.

    Region ``i`` paints the smallest of its values that no later region holds (for BraTS'
    ``((1, 2, 3), (2, 3), (3,))``: 1, 2, 3), or its largest value if later regions hold them all.
    For nested regions this gives back the label map the regions were made from.
    """
    out = []
    for i, region in enumerate(regions):
        later = set().union(*regions[i + 1 :]) if i + 1 < len(regions) else set()
        own = sorted(set(region) - later)
        out.append(own[0] if own else max(region))
    return tuple(out)


def num_scored(num_classes: int, regions: Regions = ()) -> int:
    """``K'``: the number of classes or regions that metrics report."""
    if regions:
        return len(regions)
    return 1 if num_classes <= 2 else num_classes - 1


def class_masks(labels: Any, *, num_classes: int, regions: Regions = ()) -> Any:
    """One boolean mask per scored class or region.

    Args:
      labels: ``int[..., *spatial]`` label map(s).
      num_classes: ``K`` of the model (1 or 2: binary, any non-zero label is foreground).
      regions: ``data.regions`` (``parse``d), or ``()`` for plain classes.

    Returns:
      ``bool[..., *spatial, K']`` (``num_scored``), channel ``i`` the ``i``-th class/region.
    """
    xp = _xp(labels)
    if regions:
        masks = []
        for region in regions:
            mask = labels == region[0]
            for value in region[1:]:
                mask = mask | (labels == value)
            masks.append(mask)
        return xp.stack(masks, axis=-1)
    if num_classes <= 2:
        return (labels != 0)[..., None]
    return labels[..., None] == xp.arange(1, num_classes)


def labels_from_logits(logits: Any, regions: Regions = ()) -> Any:
    """Logits ``float[..., K]`` -> label map ``int32[...]``.

    ``K == 1``: ``logit > 0`` (sigmoid > 0.5); regions: painted in order (module docstring);
    otherwise the argmax over classes.
    """
    xp = _xp(logits)
    if regions:
        out = xp.zeros(logits.shape[:-1], xp.int32)
        for i, value in enumerate(region_labels(regions)):
            out = xp.where(logits[..., i] > 0, xp.int32(value), out)
        return out
    if logits.shape[-1] == 1:
        return (logits[..., 0] > 0).astype(xp.int32)
    return xp.argmax(logits, axis=-1).astype(xp.int32)


def names(num_classes: int, regions: Regions = (), given: Sequence[str] = ()) -> tuple[str, ...]:
    """The names of the scored classes/regions, used in metric keys (``dice/<name>``).

    ``given`` (``data.class_names``) names them in order; default: the label value of each
    class (``"1"``, ``"2"``, ...), or a region's values joined by ``+`` (``"1+2+3"``).

    Raises:
      ConfigError: ``given`` has the wrong length or repeats a name.
    """
    count = num_scored(num_classes, regions)
    if given:
        given = tuple(str(n) for n in given)
        if len(given) != count or len(set(given)) != count:
            what = "regions (data.regions)" if regions else "foreground classes"
            raise errors.ConfigError(
                f"data.class_names={given!r}: expected {count} distinct names, one per {what}."
            )
        return given
    if regions:
        return tuple("+".join(str(v) for v in region) for region in regions)
    return ("1",) if count == 1 else tuple(str(c) for c in range(1, num_classes))
