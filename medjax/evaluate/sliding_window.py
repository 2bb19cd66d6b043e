"""Sliding-window inference over whole volumes, nnU-Net style.

What belongs here: the window grid (``window_starts``), the Gaussian importance map and
``sliding_window_predict``, which tiles a host volume into fixed-size window batches, runs a
jitted predictor on each batch and blends the predictions back on the host.

Design (from nnU-Net v2 [NN] and MONAI's ``sliding_window_inference`` [MO]):

* Window starts follow nnU-Net's ``compute_steps_for_sliding_window``: the step is at most
  ``tile * step_fraction`` and the windows are spread evenly so the last one ends at the border.
* Each window's prediction is weighted by a Gaussian (sigma = tile / 8) so that voxels near a
  window's centre, where the network saw the most context, count more than voxels at its edges.
* Every device call sees the same shape ``[batch_size, *tile, C]`` (the last batch is padded
  with zero windows), so the predictor compiles once for all volumes of all sizes.
* Only windows go to the device; the accumulators live on the host in float32, so a volume may
  be larger than device memory.
* We blend **logits**, as nnU-Net v2 does: the identity "model" then reproduces its input, a
  ``K == 1`` sigmoid head works unchanged, and the caller picks softmax/sigmoid/argmax afterwards.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from scipy import ndimage

from medjax import distributed, errors


def window_starts(
    image_size: Sequence[int], tile_size: Sequence[int], step_fraction: float
) -> list[list[int]]:
    """Window start indices per axis, as nnU-Net's ``compute_steps_for_sliding_window``.

    Along an axis of size ``n`` with tile ``t`` the number of windows is
    ``num = ceil((n - t) / (t * step_fraction)) + 1`` and the starts are
    ``round(i * (n - t) / (num - 1))`` (numpy's round-half-to-even, as nnU-Net). An axis shorter
    than its tile is first padded up to the tile (see ``sliding_window_predict``), so it gets the
    single start ``0``.

    Args:
      image_size: spatial size per axis, e.g. ``(D, H, W)``.
      tile_size: window size per axis, same length.
      step_fraction: largest step as a fraction of the tile, in ``(0, 1]``; ``1`` means no
        overlap, ``0.5`` half-tile overlap.

    Returns:
      One sorted list of start indices per axis.

    Raises:
      ValueError: sizes disagree in length or are not positive, or the fraction is out of range.
    """
    if len(image_size) != len(tile_size):
        raise ValueError(f"image_size {tuple(image_size)} and tile_size {tuple(tile_size)} differ.")
    if not 0 < step_fraction <= 1:
        raise ValueError(f"step_fraction must be in (0, 1], got {step_fraction}.")
    if min(tile_size) < 1 or min(image_size) < 1:
        raise ValueError(f"Sizes must be positive: image {image_size}, tile {tile_size}.")
    starts = []
    for n, t in zip(image_size, tile_size, strict=True):
        n = max(int(n), int(t))  # the volume is padded to the tile first
        num = math.ceil((n - t) / (t * step_fraction)) + 1
        if num == 1:
            starts.append([0])
            continue
        step = (n - t) / (num - 1)
        starts.append([int(np.round(step * i)) for i in range(num)])
    return starts


@functools.lru_cache(maxsize=8)
def _gaussian_cached(
    tile_size: tuple[int, ...], sigma_scale: float, value_scaling_factor: float
) -> np.ndarray:
    impulse = np.zeros(tile_size, dtype=np.float64)
    impulse[tuple(t // 2 for t in tile_size)] = 1.0
    g = ndimage.gaussian_filter(
        impulse, [t * sigma_scale for t in tile_size], order=0, mode="constant", cval=0.0
    )
    g = (g / g.max() * value_scaling_factor).astype(np.float32)
    # A zero weight at a volume border (where only one window reaches) would divide 0 by 0.
    g[g == 0] = g[g != 0].min()
    g.flags.writeable = False  # the cached array is shared by every caller
    return g


def gaussian_importance_map(
    tile_size: Sequence[int], sigma_scale: float = 1.0 / 8, value_scaling_factor: float = 10.0
) -> np.ndarray:
    """nnU-Net's Gaussian importance map for blending overlapping windows.

    A unit impulse at the tile centre (index ``t // 2``) is blurred with
    ``scipy.ndimage.gaussian_filter`` (sigma ``t * sigma_scale`` per axis, constant-0 border),
    scaled so its maximum is ``value_scaling_factor``; zeros are set to the smallest nonzero value.
    Results are cached per argument tuple; the returned array is read-only.

    Args:
      tile_size: window size per spatial axis.
      sigma_scale: sigma as a fraction of the tile size.
      value_scaling_factor: value at the centre.

    Returns:
      ``float32[*tile_size]``, strictly positive.
    """
    return _gaussian_cached(
        tuple(int(t) for t in tile_size), float(sigma_scale), float(value_scaling_factor)
    )


def _flip_combinations(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """All subsets of ``mirror_axes`` (the empty one first): nnU-Net's mirroring TTA set."""
    axes = tuple(mirror_axes)
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def sliding_window_predict(
    predict_fn: Callable[[jax.Array], jax.Array],
    image: np.ndarray,
    *,
    tile_size: Sequence[int],
    num_classes: int,
    step_fraction: float = 0.5,
    batch_size: int = 8,
    mirror_axes: Sequence[int] = (),
    gaussian: bool = True,
    mesh: Mesh | None = None,
    out_dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Predicts a whole volume by Gaussian-blended sliding windows.

    The volume is padded (constant 0, centred as nnU-Net's ``pad_nd_image``) to at least the tile
    along each axis, cut into windows at ``window_starts``, and the windows are sent to the device
    in batches of exactly ``batch_size`` (the last padded with zero windows), so ``predict_fn``
    traces once. Predictions are accumulated on the host as ``sum(w * logits) / sum(w)`` with
    ``w`` the Gaussian map (or ones), and the padding is cropped off again.

    Mirroring test-time augmentation: for every subset of ``mirror_axes`` the windows are flipped
    along those axes, predicted, flipped back, and the logits averaged over all ``2**len`` subsets.

    The next batch is dispatched before the previous one is read back, so host blending overlaps
    device compute. Host->device copies are explicit ``device_put``, which keeps this usable under
    ``jax.transfer_guard("disallow")``.

    Args:
      predict_fn: jitted ``float32[b, *tile, C] -> float[b, *tile, K]`` logits, e.g. a closure
        over params. With a ``mesh`` it receives a batch sharded ``P("data")``.
      image: host ``[*spatial, C]`` volume, spatial ``(H, W)`` or ``(D, H, W)``, any real dtype
        (cast to float32).
      tile_size: window size per spatial axis.
      num_classes: ``K``, the last axis of the logits.
      step_fraction: largest window step as a fraction of the tile, in ``(0, 1]``.
      batch_size: windows per device call; a multiple of the mesh's ``data`` axis size.
      mirror_axes: spatial axes (0-based, in ``*spatial``) to mirror for test-time augmentation.
      gaussian: Gaussian weights if True, uniform weights otherwise.
      mesh: if given, window batches are placed with ``NamedSharding(mesh, P("data"))``.
      out_dtype: dtype of the returned logits.

    Returns:
      ``out_dtype[*spatial, K]`` blended logits on the host.

    Raises:
      ValueError: shapes, axes or the batch size do not fit, or ``predict_fn`` returns an
        unexpected shape.
    """
    image = np.asarray(image)
    tile = tuple(int(t) for t in tile_size)
    nd = len(tile)
    if image.ndim != nd + 1:
        raise ValueError(
            f"image must be [*spatial, C] with {nd} spatial axes for tile {tile}, "
            f"got shape {image.shape}."
        )
    if any(not 0 <= a < nd for a in mirror_axes):
        raise ValueError(f"mirror_axes {tuple(mirror_axes)} must be spatial axes in [0, {nd}).")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    sharding = None
    if mesh is not None:
        if "data" not in mesh.shape:
            raise errors.ConfigError(f"sliding window mesh needs a 'data' axis, has {mesh.shape}.")
        n_data = mesh.shape["data"]
        if batch_size % n_data:
            raise errors.ConfigError(
                f"sliding window batch_size {batch_size} must be a multiple of the mesh 'data' "
                f"axis size {n_data}."
            )
        sharding = NamedSharding(mesh, P("data"))

    spatial = image.shape[:nd]
    # Pad to at least the tile, split as nnU-Net's pad_nd_image: the extra voxel goes after.
    pad_totals = [max(t - n, 0) for n, t in zip(spatial, tile, strict=True)]
    pads = [(p // 2, p - p // 2) for p in pad_totals]
    padded = image.astype(np.float32, copy=False)
    if any(lo or hi for lo, hi in pads):
        padded = np.pad(padded, [*pads, (0, 0)], mode="constant", constant_values=0)
    padded_shape = padded.shape[:nd]

    weight_tile = gaussian_importance_map(tile) if gaussian else np.ones(tile, dtype=np.float32)
    logits_sum = np.zeros((*padded_shape, num_classes), dtype=np.float32)
    weight_sum = np.zeros(padded_shape, dtype=np.float32)
    corners = list(itertools.product(*window_starts(padded_shape, tile, step_fraction)))
    flips = _flip_combinations(mirror_axes)

    def dispatch(batch_corners: list[tuple[int, ...]]) -> list[jax.Array]:
        windows = np.zeros((batch_size, *tile, image.shape[-1]), dtype=np.float32)
        for i, c in enumerate(batch_corners):
            windows[i] = padded[tuple(slice(s, s + t) for s, t in zip(c, tile, strict=True))]
        outs = []
        for axes in flips:
            batch_axes = tuple(a + 1 for a in axes)
            x = np.flip(windows, batch_axes) if axes else windows
            x = np.ascontiguousarray(x)
            placed = (
                jax.device_put(x) if sharding is None else distributed.global_from_host(x, sharding)
            )
            outs.append(predict_fn(placed))
        return outs

    def blend(batch_corners: list[tuple[int, ...]], outs: list[jax.Array]) -> None:
        total = None
        for axes, out in zip(flips, outs, strict=True):
            out = np.asarray(distributed.to_host(out), dtype=np.float32)
            if out.shape != (batch_size, *tile, num_classes):
                raise ValueError(
                    f"predict_fn returned shape {out.shape}, expected "
                    f"{(batch_size, *tile, num_classes)}."
                )
            out = np.flip(out, tuple(a + 1 for a in axes)) if axes else out
            total = out if total is None else total + out
        total = total / len(flips)  # device_get may hand back a read-only buffer
        for i, c in enumerate(batch_corners):
            region = tuple(slice(s, s + t) for s, t in zip(c, tile, strict=True))
            logits_sum[region] += total[i] * weight_tile[..., None]
            weight_sum[region] += weight_tile

    pending = None
    for first in range(0, len(corners), batch_size):
        batch_corners = corners[first : first + batch_size]
        outs = dispatch(batch_corners)
        if pending is not None:
            blend(*pending)
        pending = (batch_corners, outs)
    blend(*pending)

    crop = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, spatial, strict=True))
    # In place on the cropped views: no second full-volume buffer beyond the output cast.
    result = logits_sum[crop]
    result /= weight_sum[crop][..., None]
    return result.astype(out_dtype, copy=False)
