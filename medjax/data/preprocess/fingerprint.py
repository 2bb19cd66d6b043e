"""Dataset fingerprint and an nnU-Net style preprocessing spec suggested from it.

``compute_fingerprint`` reads every case once and summarises what preprocessing needs:
spacings and shapes (median spacing -> target spacing), the size left after cropping to the
nonzero body (-> whether z-scoring should use the body mask), and foreground intensity
statistics (-> the CT window and its mean/std). ``suggest_spec`` turns it into a spec for
``preprocess.pipeline``, which the experiment config then states explicitly (the choice is
visible in the config, not hidden in a plans file).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from medjax import errors
from medjax.data.io import volume as volume_lib
from medjax.data.preprocess import crop as crop_lib
from medjax.data.preprocess import pipeline

CaseLike = Mapping[str, Any] | tuple[volume_lib.Volume, volume_lib.Volume | None]

# nnU-Net: an axis counts as anisotropic when its spacing is > 3x the finest one.
ANISOTROPY_RATIO = 3.0


def compute_fingerprint(
    cases: Iterable[CaseLike], samples_per_case: int = 10000, seed: int = 0
) -> dict[str, Any]:
    """Summarises a dataset for choosing preprocessing.

    Args:
      cases: crawler case dicts (read with ``pipeline.load_case``) or ``(image, label)``
        ``Volume`` pairs. Foreground is ``label > 0``; a case without a label contributes its
        nonzero body instead.
      samples_per_case: foreground voxels drawn per case (all of them when fewer), so large
        cases do not dominate the intensity statistics (nnU-Net draws 10k).
      seed: seed of the voxel sampling (the fingerprint is deterministic).

    Returns:
      JSON-able dict: ``num_cases``, ``spacings`` / ``shapes`` (per case, array axis order),
      ``median_spacing_mm``, ``median_shape``, ``median_relative_size_after_crop``,
      ``channels`` and ``foreground_intensity``: per channel ``{mean, std, min, max,
      percentile_00_5, median, percentile_99_5}`` over the sampled foreground voxels.

    Raises:
      DataError: no cases, or cases with differing numbers of spatial axes or channels.
    """
    rng = np.random.default_rng(seed)
    spacings, shapes, relative_sizes, samples = [], [], [], []
    for case in cases:
        image, label = pipeline.load_case(case) if isinstance(case, Mapping) else case
        n = image.ndim_spatial
        array = np.asarray(image.array)
        array = array[..., None] if array.ndim == n else array
        if spacings and (n != len(spacings[0]) or array.shape[-1] != samples[0].shape[-1]):
            raise errors.DataError(
                f"{image.meta.get('path')}: {n}D with {array.shape[-1]} channels differs from "
                f"the first case ({len(spacings[0])}D, {samples[0].shape[-1]} channels)."
            )
        body = crop_lib.nonzero_mask(array, n)
        box = crop_lib.bbox(body)
        relative_sizes.append(
            float(np.prod([hi - lo for lo, hi in box]) / np.prod(array.shape[:n]))
        )
        if label is not None:
            if label.spatial_shape != image.spatial_shape:
                raise errors.DataError(
                    f"{label.meta.get('path')}: label shape {label.spatial_shape} differs from "
                    f"image shape {image.spatial_shape}."
                )
            fg = np.asarray(label.array).reshape(array.shape[:n] + (-1,))[..., 0] > 0
        else:
            fg = body
        voxels = array[fg]  # [N, C]
        if len(voxels) > samples_per_case:
            voxels = voxels[rng.choice(len(voxels), samples_per_case, replace=False)]
        samples.append(voxels.astype(np.float64))
        spacings.append(list(image.spacing))
        shapes.append(list(array.shape[:n]))
    if not spacings:
        raise errors.DataError("compute_fingerprint got no cases.")
    allv = np.concatenate(samples, axis=0)
    stats = []
    for c in range(allv.shape[-1]):
        v = allv[:, c]
        if v.size == 0:
            stats.append(None)
            continue
        p005, p50, p995 = np.percentile(v, [0.5, 50.0, 99.5])
        stats.append(
            {
                "mean": float(v.mean()),
                "std": float(v.std()),
                "min": float(v.min()),
                "max": float(v.max()),
                "percentile_00_5": float(p005),
                "median": float(p50),
                "percentile_99_5": float(p995),
            }
        )
    return {
        "num_cases": len(spacings),
        "spacings": spacings,
        "shapes": shapes,
        "median_spacing_mm": np.median(np.asarray(spacings), axis=0).tolist(),
        "median_shape": np.median(np.asarray(shapes), axis=0).tolist(),
        "median_relative_size_after_crop": float(np.median(relative_sizes)),
        "channels": int(allv.shape[-1]),
        "foreground_intensity": stats,
    }


def suggest_target_spacing(fingerprint: Mapping[str, Any]) -> list[float]:
    """nnU-Net's rule: the median spacing, except that a strongly anisotropic axis gets the
    10th percentile of its spacings (finer than the median), but never finer than the others.
    """
    spacings = np.asarray(fingerprint["spacings"], np.float64)
    target = np.median(spacings, axis=0)
    shape = np.asarray(fingerprint["median_shape"], np.float64)
    worst = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != worst]
    if not others:
        return target.tolist()
    aniso_spacing = target[worst] > ANISOTROPY_RATIO * min(target[others])
    aniso_voxels = shape[worst] * ANISOTROPY_RATIO < min(shape[others])
    if aniso_spacing and aniso_voxels:
        finer = np.percentile(spacings[:, worst], 10)
        target[worst] = max(finer, max(target[others]) + 1e-5)
    return target.tolist()


def suggest_spec(fingerprint: Mapping[str, Any], modality: str) -> dict[str, Any]:
    """A preprocessing spec (keys of ``pipeline.DEFAULT_SPEC``) chosen nnU-Net style.

    Args:
      fingerprint: from ``compute_fingerprint``.
      modality: ``"CT"`` (window to the foreground 0.5/99.5 percentiles, then z-score with the
        foreground mean/std) or anything else (per-image z-score, inside the body mask when
        cropping to the body removed more than a quarter of the image).

    Returns:
      A resolved spec dict with ``target_spacing_mm``, ``crop_foreground=True`` and
      ``normalization``.
    """
    spec: dict[str, Any] = {
        "target_spacing_mm": suggest_target_spacing(fingerprint),
        "crop_foreground": True,
    }
    if modality.upper() == "CT":
        fg = fingerprint["foreground_intensity"][0]
        if fg is None:
            raise errors.DataError("CT normalisation needs foreground voxels; none were found.")
        spec["normalization"] = {
            "name": "ct",
            "window": [fg["percentile_00_5"], fg["percentile_99_5"]],
            "mean": fg["mean"],
            "std": fg["std"],
        }
    else:
        use_mask = fingerprint["median_relative_size_after_crop"] < 0.75
        spec["normalization"] = {"name": "zscore", "use_mask": bool(use_mask)}
    return pipeline.resolve_spec(spec)
