"""Intensity normalisation schemes (numpy, host side), nnU-Net style.

``normalize(image, params, mask)`` applies one scheme to every channel of ``[*spatial, C]`` and
returns the normalised float32 image plus the statistics it used (JSON-able), so that a
preprocessing run records exactly what was done. Schemes (``params["name"]``):

* ``zscore``: ``(x - mean) / std`` per channel and image; ``use_mask=True`` computes the
  statistics inside the body mask and sets voxels outside it to 0 (nnU-Net's
  ``use_mask_for_norm``, for MR where the crop to nonzero removed much background).
* ``ct``: clip to ``window=[lo, hi]`` (HU); then ``(x - mean) / std`` when ``mean`` and ``std``
  are given (dataset foreground statistics from the fingerprint), else scale to ``[-1, 1]``.
* ``percentile``: clip to this image's ``lower``/``upper`` percentiles (default 0.5 / 99.5)
  per channel, then scale to ``[0, 1]``.
* ``minmax``: scale ``[min, max]`` to ``[0, 1]``; fixed ``min``/``max`` (e.g. 0 / 255 for 8-bit
  images) or, if absent, this image's range per channel.
* ``none``: only the cast to float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from medjax import errors

_PARAMS = {
    "zscore": {"use_mask"},
    "ct": {"window", "mean", "std"},
    "percentile": {"lower", "upper"},
    "minmax": {"min", "max"},
    "none": set(),
}
_EPS = 1e-8


def check_params(params: Mapping[str, Any]) -> str:
    name = params.get("name")
    if name not in _PARAMS:
        raise errors.ConfigError(
            f"normalization.name={name!r}; allowed: {sorted(_PARAMS)} (spec {dict(params)})."
        )
    unknown = set(params) - _PARAMS[name] - {"name"}
    if unknown:
        raise errors.ConfigError(
            f"normalization {name!r} got unknown keys {sorted(unknown)}; allowed: "
            f"{sorted(_PARAMS[name])}."
        )
    if name == "ct":
        window = params.get("window")
        if window is None or len(window) != 2 or not window[0] < window[1]:
            raise errors.ConfigError(f"normalization 'ct' needs window=[lo, hi], got {window!r}.")
        if (params.get("mean") is None) != (params.get("std") is None):
            raise errors.ConfigError("normalization 'ct' needs both mean and std, or neither.")
    return name


def normalize(
    image: np.ndarray, params: Mapping[str, Any], mask: np.ndarray | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Normalises every channel of an image.

    Args:
      image: ``[*spatial, C]`` (any real dtype).
      params: ``{"name": ..., **scheme params}`` as in the module docstring.
      mask: bool ``[*spatial]`` body mask, used by ``zscore(use_mask=True)``.

    Returns:
      ``(float32 [*spatial, C], stats)`` where ``stats`` holds the per-channel numbers used
      (lists of floats), e.g. ``{"name": "zscore", "mean": [...], "std": [...]}``.

    Raises:
      ConfigError: unknown scheme or parameters.
    """
    name = check_params(params)
    channels = image.shape[-1]
    stats: dict[str, Any] = {"name": name}
    if name == "ct":
        # Slab by slab along axis 0 (the same float64 arithmetic per voxel): whole-volume
        # float64 temporaries of a CT (300x512x512) would take ~2 GB (predict's memory bound).
        out = np.empty(image.shape, np.float32)
        lo, hi = (float(v) for v in params["window"])
        mean, std = params.get("mean"), params.get("std")
        for i in range(0, max(image.shape[0], 1), 16):
            clipped = np.clip(np.asarray(image[i : i + 16], np.float64), lo, hi)
            if mean is not None:
                out[i : i + 16] = (clipped - float(mean)) / max(float(std), _EPS)
            else:
                out[i : i + 16] = 2.0 * (clipped - lo) / (hi - lo) - 1.0
        stats.update(window=[lo, hi])
        if mean is not None:
            stats.update(mean=[float(mean)] * channels, std=[float(std)] * channels)
        return out, stats
    x = np.asarray(image, np.float64)
    out = np.empty(x.shape, np.float32)
    if name == "none":
        out[...] = x
        return out, stats
    use_mask = name == "zscore" and bool(params.get("use_mask", False)) and mask is not None
    keys = {
        "zscore": ("mean", "std"),
        "percentile": ("clip_lo", "clip_hi"),
        "minmax": ("min", "max"),
    }
    a_list, b_list = [], []
    for c in range(channels):
        xc = x[..., c]
        if name == "zscore":
            values = xc[mask] if use_mask and mask.any() else xc
            a, b = float(values.mean()), float(values.std())
            res = (xc - a) / max(b, _EPS)
            if use_mask:
                res = np.where(mask, res, 0.0)
        elif name == "percentile":
            lower, upper = float(params.get("lower", 0.5)), float(params.get("upper", 99.5))
            a, b = (float(v) for v in np.percentile(xc, [lower, upper]))
            res = (np.clip(xc, a, b) - a) / max(b - a, _EPS)
        else:  # minmax
            a = float(params["min"]) if params.get("min") is not None else float(xc.min())
            b = float(params["max"]) if params.get("max") is not None else float(xc.max())
            res = (xc - a) / max(b - a, _EPS)
        out[..., c] = res
        a_list.append(a)
        b_list.append(b)
    stats.update({keys[name][0]: a_list, keys[name][1]: b_list})
    if use_mask:
        stats["use_mask"] = True
    return out, stats
