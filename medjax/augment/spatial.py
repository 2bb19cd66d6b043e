"""Spatial augmentations: move image and label map together.

Each op is a registered factory ``get_<op>(p=..., **ranges) -> fn(key, sample) -> sample`` for ONE
example, written once for 2D ``(H, W)`` and 3D ``(D, H, W)`` (see ``_core.py`` for the sample
contract). A ``label`` of shape ``[*spatial]`` moves with the image; a per-example class label
(shape ``[]``) passes through.

``flip`` and ``rot90`` permute voxels exactly. ``affine``, ``elastic`` and ``spatial`` (nnU-Net's
SpatialTransform: rotation + scaling + elastic deformation + translation) build ONE coordinate map
and resample once with ``jax.scipy.ndimage.map_coordinates``: linear for the image, nearest for the
label (so no new label values appear), outside the input image ``border_mode`` (constant ``cval``
by default) and label 0.

Geometry, in array axis order, about the array centre ``c = (shape - 1) / 2``: the forward map
scales (``scale > 1`` makes structures larger), then rotates, then shifts by ``t`` voxels. The
output voxel ``o`` reads the input at ``S^-1 R^T (o + d(o) - c - t) + c``, where ``d`` is the
elastic displacement. Rotations act in the planes ``(H, W)`` (about the D axis; the only one in
2D and with ``in_plane``), then ``(D, W)`` and ``(D, H)``; the rotation in plane ``(i, j)`` by
angle ``a`` has ``R[i, i] = R[j, j] = cos a``, ``R[i, j] = -sin a``, ``R[j, i] = sin a``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from medjax import errors, registry
from medjax.augment import _core, warp

Range = float | Sequence[float]

_BORDER_MODES = ("constant", "nearest", "mirror", "reflect", "wrap")


def _spatial_axes_arg(axes: Sequence[int] | None, ndim: int, op: str) -> tuple[int, ...]:
    """Normalises configured spatial axes (negative counts from the last spatial axis)."""
    if axes is None:
        return tuple(range(ndim))
    out = tuple(int(a) + ndim if int(a) < 0 else int(a) for a in axes)
    if any(not 0 <= a < ndim for a in out) or len(set(out)) != len(out):
        raise errors.ConfigError(
            f"augment.{op}: axes={tuple(axes)!r} must be distinct spatial axes of a {ndim}D "
            f"image (0..{ndim - 1})."
        )
    return out


def _move_together(sample: _core.Sample, fn: Callable[[jax.Array], jax.Array]) -> _core.Sample:
    """Applies the exact voxel permutation ``fn(array) -> array`` to the image and label map."""
    out = {**sample, "image": fn(sample["image"])}
    if _core.has_label_map(sample):
        out["label"] = fn(sample["label"])
    return out


@registry.register("augment.flip")
def get_flip(p: float = 0.5, axes: Sequence[int] | None = None) -> _core.AugmentFn:
    """Mirrors along each of ``axes``, independently, each with probability ``p``.

    Args:
      p: probability of flipping, drawn separately per axis.
      axes: spatial axes (0 = first spatial axis, D in 3D, H in 2D); ``None`` means all.

    Returns:
      ``fn(key, sample) -> sample``; shapes and dtypes unchanged.
    """
    p = _core.check_probability(p, "flip")

    def fn(key: jax.Array, sample: _core.Sample) -> _core.Sample:
        spatial_axes = _spatial_axes_arg(axes, _core.spatial_ndim(sample), "flip")
        draws = jax.random.uniform(key, (len(spatial_axes),)) < p
        for flip_it, axis in zip(draws, spatial_axes, strict=True):
            # Select per axis: a traced choice, and a flip is only a cheap reversed copy.
            sample = _move_together(
                sample, lambda x, f=flip_it, a=axis: jnp.where(f, jnp.flip(x, a), x)
            )
        return sample

    return fn


@registry.register("augment.rot90")
def get_rot90(p: float = 0.5, axes: Sequence[int] | None = None) -> _core.AugmentFn:
    """Rotates by ``k * 90`` degrees, ``k`` uniform in {1, 2, 3}, in one plane.

    Args:
      p: probability of rotating.
      axes: the two spatial axes of the plane; ``None`` means the last two, ``(H, W)``. The
        plane must be square (a quarter turn of a non-square plane changes the shape).

    Returns:
      ``fn(key, sample) -> sample``; shapes and dtypes unchanged.

    Raises:
      ConfigError: ``axes`` is not a pair of spatial axes, or the plane is not square.
    """
    p = _core.check_probability(p, "rot90")

    def transform(key: jax.Array, sample: _core.Sample) -> _core.Sample:
        ndim = _core.spatial_ndim(sample)
        plane = _spatial_axes_arg((ndim - 2, ndim - 1) if axes is None else axes, ndim, "rot90")
        shape = sample["image"].shape
        if len(plane) != 2 or shape[plane[0]] != shape[plane[1]]:
            raise errors.ConfigError(
                f"augment.rot90: axes={plane} must name a square plane; image shape {shape}."
            )
        k = jax.random.randint(key, (), 1, 4)

        def rotate(x: jax.Array) -> jax.Array:
            branches = [lambda y, i=i: jnp.rot90(y, i, axes=plane) for i in (1, 2, 3)]
            return lax.switch(k - 1, branches, x)

        return _move_together(sample, rotate)

    return _core.with_probability(p, transform)


@registry.register("augment.spatial")
def get_spatial(
    p: float = 1.0,
    rotation: Range = 30.0,
    p_rotation: float = 0.2,
    in_plane: bool = False,
    scale: Range = (0.7, 1.4),
    p_scale: float = 0.2,
    per_axis_scale: bool = False,
    translation: Range = 0.0,
    p_translation: float = 1.0,
    elastic_alpha: Range = 0.0,
    elastic_sigma: Range = (4.0, 6.0),
    p_elastic: float = 0.0,
    border_mode: str = "constant",
    cval: float = 0.0,
) -> _core.AugmentFn:
    """Rotation + scaling + elastic deformation + translation in one resampling (nnU-Net style).

    Each part is drawn per example with its own probability; a part not drawn is the identity,
    and an example with no part drawn is reproduced exactly. Defaults are nnU-Net v2's 3D ones.

    Args:
      p: probability of applying the op at all.
      rotation: angle range in degrees; a number ``a`` means ``(-a, a)``. In 3D one angle per
        plane is drawn from it, unless ``in_plane``.
      p_rotation: probability of rotating.
      in_plane: in 3D rotate only in the ``(H, W)`` plane (about the D axis).
      scale: factor range (``> 1`` enlarges); a number is a fixed factor.
      p_scale: probability of scaling.
      per_axis_scale: draw one factor per axis (anisotropic) instead of one for all.
      translation: shift range as a fraction of each axis' size; ``0.1`` means ``(-0.1, 0.1)``;
        drawn per axis.
      p_translation: probability of shifting.
      elastic_alpha: range of the largest elastic displacement, in voxels.
      elastic_sigma: range of the Gaussian smoothing of the displacement noise, in voxels.
        The kernel radius is ``4 * max sigma``: large sigmas are costly in 3D.
      p_elastic: probability of the elastic deformation.
      border_mode: image outside the input: ``constant`` (``cval``), ``nearest``, ``mirror``,
        ``reflect`` or ``wrap``. The label is always 0 outside.
      cval: the constant of ``border_mode="constant"``.

    Returns:
      ``fn(key, sample) -> sample``; shapes and dtypes unchanged.

    Raises:
      ConfigError: a bad probability, range or border mode.
    """
    op = "spatial"
    p = _core.check_probability(p, op)
    probs = {
        name: _core.check_probability(v, op)
        for name, v in [
            ("rotation", p_rotation),
            ("scale", p_scale),
            ("translation", p_translation),
            ("elastic", p_elastic),
        ]
    }
    rot_bounds = _core.as_range(rotation, "rotation", op, symmetric=True)
    scale_bounds = _core.as_range(scale, "scale", op)
    shift_bounds = _core.as_range(translation, "translation", op, symmetric=True)
    alpha_bounds = _core.as_range(elastic_alpha, "elastic_alpha", op)
    sigma_bounds = _core.as_range(elastic_sigma, "elastic_sigma", op)
    if scale_bounds[0] <= 0:
        raise errors.ConfigError(f"augment.{op}: scale={scale!r} must be positive.")
    if border_mode not in _BORDER_MODES:
        raise errors.ConfigError(
            f"augment.{op}: border_mode={border_mode!r}; allowed: {', '.join(_BORDER_MODES)}."
        )
    # A part that can never apply (p = 0 or an identity range) is left out of the graph
    # altogether: smaller graphs compile faster, and "elastic" and "affine" are built from here.
    active = {
        "rotation": probs["rotation"] > 0 and rot_bounds != (0.0, 0.0),
        "scale": probs["scale"] > 0 and scale_bounds != (1.0, 1.0),
        "translation": probs["translation"] > 0 and shift_bounds != (0.0, 0.0),
        "elastic": probs["elastic"] > 0 and alpha_bounds[1] > 0,
    }
    radius = max(int(4.0 * sigma_bounds[1] + 0.5), 1)

    def maybe(key: jax.Array, part: str, value: jax.Array, identity: float) -> jax.Array:
        if probs[part] >= 1.0:
            return value
        return jnp.where(jax.random.uniform(key, ()) < probs[part], value, identity)

    def transform(key: jax.Array, sample: _core.Sample) -> _core.Sample:
        shape = sample["image"].shape[:-1]
        n = len(shape)
        keys = iter(jax.random.split(key, 10))
        inverse_linear = jnp.eye(n, dtype=jnp.float32)
        if active["rotation"]:
            n_angles = 1 if (n == 2 or in_plane) else 3
            angles = _core.uniform(next(keys), rot_bounds, (n_angles,)) * (math.pi / 180.0)
            angles = maybe(next(keys), "rotation", angles, 0.0)
            inverse_linear = warp.rotation_matrix(angles, n).T
        if active["scale"]:
            factors = _core.uniform(next(keys), scale_bounds, (n,) if per_axis_scale else ())
            factors = maybe(next(keys), "scale", jnp.broadcast_to(factors, (n,)), 1.0)
            # L = S^-1 R^T: row i of R^T divided by the scale of output axis i.
            inverse_linear = inverse_linear / factors[:, None]
        shift = jnp.zeros((n,), jnp.float32)
        if active["translation"]:
            shift = _core.uniform(next(keys), shift_bounds, (n,)) * jnp.asarray(shape, jnp.float32)
            shift = maybe(next(keys), "translation", shift, 0.0)
        displacement = None
        if active["elastic"]:
            alpha = maybe(next(keys), "elastic", _core.uniform(next(keys), alpha_bounds), 0.0)
            sigma = _core.uniform(next(keys), sigma_bounds)
            displacement = alpha * warp.smooth_noise(next(keys), shape, sigma, radius)
        coords = warp.coordinate_map(shape, inverse_linear, shift, displacement)
        return warp.resample(sample, coords, border_mode, cval)

    return _core.with_probability(p, transform)


@registry.register("augment.affine")
def get_affine(
    p: float = 0.2,
    rotation: Range = 0.0,
    in_plane: bool = False,
    scale: Range = 1.0,
    per_axis_scale: bool = False,
    translation: Range = 0.0,
    border_mode: str = "constant",
    cval: float = 0.0,
) -> _core.AugmentFn:
    """Random rotation, scaling and translation, resampled once; see ``get_spatial``.

    Every part is applied whenever the op is (probability ``p``); a part is off when its range
    is the identity (rotation 0, scale 1, translation 0), and all-identity reproduces the input
    exactly. LUNA16 cutouts: ``affine(p=1.0, rotation=180, in_plane=True, scale=(0.8, 1.2),
    per_axis_scale=True, translation=0.1)``.

    Args:
      p: probability of applying the op.
      rotation: angle range in degrees; ``a`` means ``(-a, a)``; one angle per plane in 3D.
      in_plane: in 3D rotate only in the ``(H, W)`` plane.
      scale: factor range (``> 1`` enlarges); a number is fixed.
      per_axis_scale: one factor per axis.
      translation: shift range as a fraction of each axis' size; ``f`` means ``(-f, f)``.
      border_mode: image outside the input (see ``get_spatial``); the label is 0 there.
      cval: the constant of ``border_mode="constant"``.

    Returns:
      ``fn(key, sample) -> sample``; shapes and dtypes unchanged.
    """
    return get_spatial(
        p=p,
        rotation=rotation,
        p_rotation=1.0,
        in_plane=in_plane,
        scale=scale,
        p_scale=1.0,
        per_axis_scale=per_axis_scale,
        translation=translation,
        p_translation=1.0,
        p_elastic=0.0,
        border_mode=border_mode,
        cval=cval,
    )


@registry.register("augment.elastic")
def get_elastic(
    p: float = 0.2,
    alpha: Range = (0.0, 4.0),
    sigma: Range = (4.0, 6.0),
    border_mode: str = "constant",
    cval: float = 0.0,
) -> _core.AugmentFn:
    """Smooth random deformation: Gaussian-smoothed noise displaces the sampling grid.

    Args:
      p: probability of applying the op.
      alpha: range of the largest displacement in voxels.
      sigma: range of the smoothing sigma in voxels (larger is smoother; the kernel radius is
        ``4 * max sigma``).
      border_mode: image outside the input (see ``get_spatial``); the label is 0 there.
      cval: the constant of ``border_mode="constant"``.

    Returns:
      ``fn(key, sample) -> sample``; shapes and dtypes unchanged.
    """
    return get_spatial(
        p=p,
        p_rotation=0.0,
        p_scale=0.0,
        p_translation=0.0,
        elastic_alpha=alpha,
        elastic_sigma=sigma,
        p_elastic=1.0,
        border_mode=border_mode,
        cval=cval,
    )
