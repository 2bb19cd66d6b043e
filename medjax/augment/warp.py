"""Warping a sample by a coordinate map: rotation matrices, the sampling grid of an affine map
plus a displacement field, smooth random displacement, and the resampling of image (linear) and
label (nearest) with the same coordinates. The spatial augmentations compose these.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from medjax.augment import _core, intensity


def rotation_matrix(angles: jax.Array, ndim: int) -> jax.Array:
    """Rotation ``float32[ndim, ndim]`` from angles in radians, in array axis order.

    Args:
      angles: ``[1]`` (plane (H, W), i.e. about the D axis in 3D) or, in 3D, ``[3]`` for the
        planes ``(H, W)``, ``(D, W)``, ``(D, H)``; the result is their product in that order.
      ndim: 2 or 3.
    """
    planes = [(ndim - 2, ndim - 1), (0, 2), (0, 1)][: angles.shape[0]]
    rot = jnp.eye(ndim, dtype=jnp.float32)
    for angle, (i, j) in zip(angles, planes, strict=True):
        cos, sin = jnp.cos(angle), jnp.sin(angle)
        plane_rot = (
            jnp.eye(ndim, dtype=jnp.float32)
            .at[i, i]
            .set(cos)
            .at[j, j]
            .set(cos)
            .at[i, j]
            .set(-sin)
            .at[j, i]
            .set(sin)
        )
        # Elementwise products and sums (not a matmul): on GPU an f32 matmul may run in TF32,
        # whose 10-bit mantissa would shift the sampling grid by a sizeable fraction of a voxel.
        rot = jnp.sum(rot[:, :, None] * plane_rot[None, :, :], axis=1)
    return rot


def coordinate_map(
    shape: Sequence[int],
    inverse_linear: jax.Array,
    shift: jax.Array,
    displacement: jax.Array | None = None,
) -> jax.Array:
    """Input coordinates of every output voxel: ``L (o + d(o) - c - t) + c``.

    Args:
      shape: spatial shape ``(H, W)`` or ``(D, H, W)``; input and output share it.
      inverse_linear: ``float32[n, n]``, ``L = S^-1 R^T``, the inverse of the linear part.
      shift: ``float32[n]`` translation ``t`` in voxels.
      displacement: optional ``float32[n, *shape]`` elastic displacement ``d`` in voxels.

    Returns:
      ``float32[n, *shape]``, axis 0 indexing the input axis; exactly ``o`` when ``L = I``,
      ``t = 0`` and ``d = 0``.
    """
    n = len(shape)
    grid = jnp.meshgrid(*[jnp.arange(s, dtype=jnp.float32) for s in shape], indexing="ij")
    centre = [(s - 1) / 2.0 for s in shape]
    rel = [grid[j] - centre[j] - shift[j] for j in range(n)]
    if displacement is not None:
        rel = [rel[j] + displacement[j] for j in range(n)]
    # A sum of elementwise products, not an einsum, for the TF32 reason in rotation_matrix.
    coords = [sum(inverse_linear[i, j] * rel[j] for j in range(n)) + centre[i] for i in range(n)]
    return jnp.stack(coords)


def resample(
    sample: _core.Sample, coords: jax.Array, border_mode: str = "constant", cval: float = 0.0
) -> _core.Sample:
    """Resamples image (linear) and label map (nearest, 0 outside) at ``coords``.

    Args:
      sample: ``{"image": [*spatial, C], "label": int[*spatial] (optional), ...}``.
      coords: ``float32[n, *spatial]`` input coordinates of each output voxel.
      border_mode: image values outside the input: a ``map_coordinates`` mode.
      cval: image value outside the input with ``border_mode="constant"``.

    Returns:
      The sample with image and label map replaced; shapes and dtypes unchanged.
    """
    image = sample["image"]
    coord_list = list(coords)

    def one_channel(channel: jax.Array) -> jax.Array:
        return jax.scipy.ndimage.map_coordinates(
            channel, coord_list, order=1, mode=border_mode, cval=cval
        )

    warped = jax.vmap(one_channel, in_axes=-1, out_axes=-1)(
        image.astype(_core.compute_dtype(image.dtype))
    )
    out = {**sample, "image": warped.astype(image.dtype)}
    if _core.has_label_map(sample):
        # Order 0 only copies existing values; integer inputs come back rounded, same dtype.
        out["label"] = jax.scipy.ndimage.map_coordinates(
            sample["label"], coord_list, order=0, mode="constant", cval=0
        )
    return out


def smooth_noise(
    key: jax.Array, shape: tuple[int, ...], sigma: jax.Array, radius: int
) -> jax.Array:
    """``float32[n, *shape]`` Gaussian-smoothed noise, scaled to a maximum magnitude of 1."""
    n = len(shape)
    # Uniform noise as in batchgenerators (cheaper to generate than normal; after smoothing and
    # normalising the two look alike).
    noise = jax.random.uniform(key, (n, *shape), jnp.float32, -1.0, 1.0)
    for axis in range(1, n + 1):
        noise = intensity.gaussian_filter_axis(noise, axis, sigma, radius)
    # Normalising makes alpha the largest displacement in voxels, whatever the sigma; unscaled
    # smoothed noise shrinks steeply with sigma (batchgenerators' alpha needs values ~1000).
    return noise / jnp.maximum(jnp.max(jnp.abs(noise)), 1e-12)
