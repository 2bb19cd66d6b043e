"""Intensity augmentations: change voxel values, never geometry; labels pass through untouched.

Each op is a registered factory ``get_<op>(p=..., **ranges) -> fn(key, sample) -> sample`` for ONE
example (``image [*spatial, C]``, spatial ``(H, W)`` or ``(D, H, W)``); see ``_core.py`` for the
sample contract. Defaults follow nnU-Net v2's training transforms unless stated otherwise.
Statistics (mean, min, max, std) are taken per channel over the spatial axes, as nnU-Net does.
Images are computed in float32 (bf16 images too) and cast back to their dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from medjax import errors, registry
from medjax.augment import _core

Range = float | Sequence[float]


def _intensity_op(
    p: float, op: str, change: Callable[[jax.Array, jax.Array], jax.Array]
) -> _core.AugmentFn:
    """Builds an op from ``change(key, image_f32) -> image_f32`` applied with probability p."""
    p = _core.check_probability(p, op)

    def transform(key: jax.Array, sample: _core.Sample) -> _core.Sample:
        image = sample["image"]
        out = change(key, image.astype(_core.compute_dtype(image.dtype)))
        return {**sample, "image": out.astype(image.dtype)}

    return _core.with_probability(p, transform)


def _spatial_axes(image: jax.Array) -> tuple[int, ...]:
    return tuple(range(image.ndim - 1))


def _factor_shape(image: jax.Array, per_channel: bool) -> tuple[int, ...]:
    # One factor for the whole image, or one per channel (broadcasts over the last axis).
    return (image.shape[-1],) if per_channel else ()


@registry.register("augment.brightness")
def get_brightness(
    p: float = 0.15, range: Range = (0.75, 1.25), per_channel: bool = False
) -> _core.AugmentFn:
    """Multiplies the image by a random factor (nnU-Net's MultiplicativeBrightnessTransform).

    Args:
      p: probability of applying the op to an example.
      range: ``(low, high)`` of the factor, drawn uniformly.
      per_channel: draw one factor per channel instead of one for the image.

    Returns:
      ``fn(key, sample) -> sample`` with ``image [*spatial, C]`` scaled; same shape and dtype.
    """
    bounds = _core.as_range(range, "range", "brightness")

    def change(key: jax.Array, image: jax.Array) -> jax.Array:
        return image * _core.uniform(key, bounds, _factor_shape(image, per_channel))

    return _intensity_op(p, "brightness", change)


@registry.register("augment.brightness_additive")
def get_brightness_additive(
    p: float = 0.15, range: Range = (-0.1, 0.1), per_channel: bool = False
) -> _core.AugmentFn:
    """Adds a random offset to the image (in the image's units, e.g. z-scores or HU).

    nnU-Net v1's additive BrightnessTransform draws the offset from a Gaussian; a uniform range
    is easier to state in a config and to bound.

    Args:
      p: probability of applying the op to an example.
      range: ``(low, high)`` of the offset, drawn uniformly.
      per_channel: draw one offset per channel.

    Returns:
      ``fn(key, sample) -> sample`` with ``image [*spatial, C]`` shifted; same shape and dtype.
    """
    bounds = _core.as_range(range, "range", "brightness_additive")

    def change(key: jax.Array, image: jax.Array) -> jax.Array:
        return image + _core.uniform(key, bounds, _factor_shape(image, per_channel))

    return _intensity_op(p, "brightness_additive", change)


@registry.register("augment.contrast")
def get_contrast(
    p: float = 0.15,
    range: Range = (0.75, 1.25),
    preserve_range: bool = True,
    per_channel: bool = False,
) -> _core.AugmentFn:
    """Scales the image around its mean (nnU-Net's ContrastTransform).

    ``out = (x - mean) * factor + mean`` per channel; with ``preserve_range`` the result is
    clipped to the channel's original ``[min, max]``. The factor is drawn nnU-Net style: half the
    time below one, half above (see ``_core.uniform_around_one``).

    Args:
      p: probability of applying the op to an example.
      range: ``(low, high)`` of the contrast factor.
      preserve_range: clip to the channel's original min and max.
      per_channel: draw one factor per channel.

    Returns:
      ``fn(key, sample) -> sample``; ``image [*spatial, C]`` keeps its shape and dtype.
    """
    bounds = _core.as_range(range, "range", "contrast")

    def change(key: jax.Array, image: jax.Array) -> jax.Array:
        axes = _spatial_axes(image)
        factor = _core.uniform_around_one(key, bounds, _factor_shape(image, per_channel))
        mean = jnp.mean(image, axis=axes, keepdims=True)
        out = (image - mean) * factor + mean
        if preserve_range:
            out = jnp.clip(
                out,
                jnp.min(image, axis=axes, keepdims=True),
                jnp.max(image, axis=axes, keepdims=True),
            )
        return out

    return _intensity_op(p, "contrast", change)


@registry.register("augment.gamma")
def get_gamma(
    p: float = 0.3,
    range: Range = (0.7, 1.5),
    invert: bool = False,
    retain_stats: bool = True,
    per_channel: bool = False,
) -> _core.AugmentFn:
    """Gamma curve on the min-max normalised image, mapped back (nnU-Net's GammaTransform).

    Per channel: ``y = ((x - min) / (max - min)) ** gamma * (max - min) + min``. With ``invert``
    the curve is applied to ``-x`` and negated back, which bends the other end of the
    histogram. With ``retain_stats`` the result is shifted and scaled back to the channel's
    original mean and standard deviation. Gamma is drawn half the time below one, half above.

    Args:
      p: probability of applying the op to an example.
      range: ``(low, high)`` of gamma; both must be positive.
      invert: apply the curve to the negated image (nnU-Net's ``p_invert_image=1``).
      retain_stats: restore each channel's mean and standard deviation afterwards.
      per_channel: draw one gamma per channel.

    Returns:
      ``fn(key, sample) -> sample``; ``image [*spatial, C]`` keeps its shape and dtype.

    Raises:
      ConfigError: a gamma bound is not positive.
    """
    bounds = _core.as_range(range, "range", "gamma")
    if bounds[0] <= 0:
        raise errors.ConfigError(f"augment.gamma: range={range!r} must be positive.")

    def change(key: jax.Array, image: jax.Array) -> jax.Array:
        axes = _spatial_axes(image)
        gamma = _core.uniform_around_one(key, bounds, _factor_shape(image, per_channel))
        x = -image if invert else image
        mean = jnp.mean(x, axis=axes, keepdims=True)
        std = jnp.std(x, axis=axes, keepdims=True)
        low = jnp.min(x, axis=axes, keepdims=True)
        span = jnp.max(x, axis=axes, keepdims=True) - low
        # The span floor keeps a constant channel finite (0 ** gamma = 0 maps it onto itself).
        # The clip matters under jit: XLA may fuse the elementwise part differently from the min
        # reduction (e.g. an FMA), and a base of -1e-8 ** gamma would be NaN.
        base = jnp.clip((x - low) / jnp.maximum(span, 1e-7), 0.0, 1.0)
        y = base**gamma * span + low
        if retain_stats:
            y_mean = jnp.mean(y, axis=axes, keepdims=True)
            y_std = jnp.std(y, axis=axes, keepdims=True)
            y = (y - y_mean) / jnp.maximum(y_std, 1e-8) * std + mean
        return -y if invert else y

    return _intensity_op(p, "gamma", change)


@registry.register("augment.gaussian_noise")
def get_gaussian_noise(
    p: float = 0.1, sigma: Range = (0.0, 0.1), per_channel: bool = False
) -> _core.AugmentFn:
    """Adds zero-mean Gaussian noise (nnU-Net's GaussianNoiseTransform).

    Args:
      p: probability of applying the op to an example.
      sigma: standard deviation in the image's units (e.g. ``25`` for HU, ``(0, 0.1)`` for
        z-scores); a pair is a range drawn uniformly per example, a number is fixed.
      per_channel: draw one sigma per channel.

    Returns:
      ``fn(key, sample) -> sample``; ``image [*spatial, C]`` keeps its shape and dtype.
    """
    bounds = _core.as_range(sigma, "sigma", "gaussian_noise")

    def change(key: jax.Array, image: jax.Array) -> jax.Array:
        k_sigma, k_noise = jax.random.split(key)
        std = _core.uniform(k_sigma, bounds, _factor_shape(image, per_channel))
        return image + std * jax.random.normal(k_noise, image.shape, image.dtype)

    return _intensity_op(p, "gaussian_noise", change)


def gaussian_kernel_1d(sigma: jax.Array, radius: int) -> jax.Array:
    """Normalised Gaussian taps ``float32[2 * radius + 1]`` for a traced ``sigma`` (voxels)."""
    offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    # A tiny floor turns sigma = 0 into the identity kernel [.., 0, 1, 0, ..] instead of NaN.
    w = jnp.exp(-0.5 * (offsets / jnp.maximum(sigma, 1e-3)) ** 2)
    return w / jnp.sum(w)


def gaussian_filter_axis(x: jax.Array, axis: int, sigma: jax.Array, radius: int) -> jax.Array:
    """1D Gaussian filter of ``x`` along ``axis``, border mode 'reflect' as in scipy.ndimage.

    Args:
      x: any array; only ``axis`` is filtered.
      axis: the axis to filter.
      sigma: the standard deviation in voxels; may be traced (the taps are computed in-graph).
      radius: static kernel radius; ``2 * radius + 1`` taps.

    Returns:
      The filtered array, same shape and dtype as ``x``.
    """
    taps = gaussian_kernel_1d(sigma, radius).astype(x.dtype)
    moved = jnp.moveaxis(x, axis, -1)
    lead, n = moved.shape[:-1], moved.shape[-1]
    # numpy's 'symmetric' (d c b a | a b c d) is scipy.ndimage's 'reflect'.
    padded = jnp.pad(moved, [(0, 0)] * len(lead) + [(radius, radius)], mode="symmetric")
    # One 1D convolution over all lines (a single op compiles far faster than a sum of shifted
    # slices); HIGHEST keeps f32 on GPUs, whose default f32 convolution may run in TF32.
    out = lax.conv_general_dilated(
        padded.reshape(-1, n + 2 * radius, 1),
        taps[:, None, None],
        window_strides=(1,),
        padding="VALID",
        dimension_numbers=("NWC", "WIO", "NWC"),
        precision=lax.Precision.HIGHEST,
    )
    return jnp.moveaxis(out.reshape(*lead, n), -1, axis)


@registry.register("augment.gaussian_blur")
def get_gaussian_blur(
    p: float = 0.2, sigma: Range = (0.5, 1.0), per_axis: bool = False, truncate: float = 4.0
) -> _core.AugmentFn:
    """Separable Gaussian blur over the spatial axes (nnU-Net's GaussianBlurTransform).

    Channels are blurred independently. The kernel radius is fixed when the op is built,
    ``int(truncate * max_sigma + 0.5)`` as in scipy, so shapes stay static; a smaller drawn sigma
    just gives near-zero outer taps.

    Args:
      p: probability of applying the op to an example.
      sigma: ``(low, high)`` of the standard deviation in voxels, or one fixed number.
      per_axis: draw a separate sigma for each spatial axis.
      truncate: kernel radius in standard deviations (scipy's ``truncate``).

    Returns:
      ``fn(key, sample) -> sample``; ``image [*spatial, C]`` keeps its shape and dtype.
    """
    bounds = _core.as_range(sigma, "sigma", "gaussian_blur")
    radius = max(int(truncate * bounds[1] + 0.5), 1)

    def change(key: jax.Array, image: jax.Array) -> jax.Array:
        n_spatial = image.ndim - 1
        sigmas = _core.uniform(key, bounds, (n_spatial,) if per_axis else ())
        sigmas = jnp.broadcast_to(sigmas, (n_spatial,))
        for axis in range(n_spatial):
            image = gaussian_filter_axis(image, axis, sigmas[axis], radius)
        return image

    return _intensity_op(p, "gaussian_blur", change)


def _low_resolution_axis(x: jax.Array, axis: int, zoom: jax.Array) -> jax.Array:
    """Nearest downsampling by ``zoom`` then linear upsampling back, along one axis.

    The low-resolution length ``m = round(n * zoom)`` is traced, so the low-resolution array is
    never built: each output voxel reads its two low-resolution neighbours straight from the
    input through the nearest-neighbour index map. Both steps use half-pixel centres
    (``src = (dst + 0.5) * n_src / n_dst - 0.5``), like ``jax.image.resize`` and skimage.
    """
    n = x.shape[axis]
    m = jnp.clip(jnp.round(n * zoom), 1, n)
    # Output voxel j sits at low-resolution coordinate c; linear weights between floor(c) and +1.
    c = jnp.clip((jnp.arange(n, dtype=jnp.float32) + 0.5) * m / n - 0.5, 0.0, m - 1)
    i0 = jnp.floor(c)
    i1 = jnp.minimum(i0 + 1, m - 1)
    t = c - i0

    def source_index(i: jax.Array) -> jax.Array:
        # Nearest input voxel of low-resolution voxel i: floor of its centre, (2i + 1) n / 2m,
        # written so that exact integers stay exact in float32.
        return jnp.clip(jnp.floor((2 * i + 1) * n / (2 * m)), 0, n - 1).astype(jnp.int32)

    shape = [1] * x.ndim
    shape[axis] = n
    t = t.reshape(shape).astype(x.dtype)
    lo = jnp.take(x, source_index(i0), axis=axis)
    hi = jnp.take(x, source_index(i1), axis=axis)
    return lo * (1 - t) + hi * t


@registry.register("augment.low_resolution")
def get_low_resolution(
    p: float = 0.25, zoom: Range = (0.5, 1.0), per_axis: bool = False
) -> _core.AugmentFn:
    """Simulates a low-resolution scan (nnU-Net's SimulateLowResolutionTransform).

    Downsamples by a random ``zoom`` with nearest neighbour, then upsamples back to the same
    shape with linear interpolation (nnU-Net upsamples with cubic). Separable, so it is done one
    axis at a time; all channels share the zoom.

    Args:
      p: probability of applying the op to an example.
      zoom: ``(low, high)`` of the size fraction kept, in ``(0, 1]``.
      per_axis: draw a separate zoom per spatial axis.

    Returns:
      ``fn(key, sample) -> sample``; ``image [*spatial, C]`` keeps its shape and dtype.

    Raises:
      ConfigError: zoom outside ``(0, 1]``.
    """
    bounds = _core.as_range(zoom, "zoom", "low_resolution")
    if not 0.0 < bounds[0] <= bounds[1] <= 1.0:
        raise errors.ConfigError(f"augment.low_resolution: zoom={zoom!r} must lie in (0, 1].")

    def change(key: jax.Array, image: jax.Array) -> jax.Array:
        n_spatial = image.ndim - 1
        zooms = jnp.broadcast_to(
            _core.uniform(key, bounds, (n_spatial,) if per_axis else ()), (n_spatial,)
        )
        for axis in range(n_spatial):
            image = _low_resolution_axis(image, axis, zooms[axis])
        return image

    return _intensity_op(p, "low_resolution", change)


@registry.register("augment.brightness_contrast")
def get_brightness_contrast(
    p: float = 0.5,
    brightness_limit: Range = 0.2,
    contrast_limit: Range = 0.2,
    brightness_by_max: bool = True,
    max_value: float = 1.0,
    clip: Sequence[float] | None = None,
) -> _core.AugmentFn:
    """albumentations' RandomBrightnessContrast, the seed framework's default augmentation.

    ``out = x * alpha + beta * ref`` with ``alpha = 1 + U(contrast_limit)``,
    ``beta = U(brightness_limit)`` and ``ref = max_value`` (``brightness_by_max``, albumentations'
    default; 1.0 is its max for float images) or else the image mean. A number ``l`` as a limit
    means ``(-l, l)``. albumentations clips floats to ``[0, 1]``; medical images are often
    z-scored, so clipping is opt-in here (``clip=(0, 1)`` reproduces it).

    Args:
      p: probability of applying the op to an example (albumentations' default 0.5).
      brightness_limit: range of ``beta``.
      contrast_limit: range of ``alpha - 1``.
      brightness_by_max: shift by ``beta * max_value``; else by ``beta * mean(image)``.
      max_value: the intensity that ``brightness_by_max`` refers to.
      clip: optional ``(low, high)`` to clip the result to.

    Returns:
      ``fn(key, sample) -> sample``; ``image [*spatial, C]`` keeps its shape and dtype.
    """
    b_bounds = _core.as_range(
        brightness_limit, "brightness_limit", "brightness_contrast", symmetric=True
    )
    c_bounds = _core.as_range(
        contrast_limit, "contrast_limit", "brightness_contrast", symmetric=True
    )
    clip_bounds = None if clip is None else _core.as_range(clip, "clip", "brightness_contrast")

    def change(key: jax.Array, image: jax.Array) -> jax.Array:
        k_alpha, k_beta = jax.random.split(key)
        alpha = 1.0 + _core.uniform(k_alpha, c_bounds)
        beta = _core.uniform(k_beta, b_bounds)
        ref = max_value if brightness_by_max else jnp.mean(image)
        out = image * alpha + beta * ref
        return out if clip_bounds is None else jnp.clip(out, *clip_bounds)

    return _intensity_op(p, "brightness_contrast", change)
