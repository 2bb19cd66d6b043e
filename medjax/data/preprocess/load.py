"""Reading a crawled case from its files, refusing voxels that are not finite.

``load_case`` is what the fingerprint pass and the preprocessing pass both read with, so a case
with NaN or Inf voxels fails both as bad input naming its file: the store skips it, lists it in
``report.json`` and builds the rest.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from medjax import errors
from medjax.data import io as io_lib
from medjax.data.io import volume as volume_lib


def _read_label(path: str) -> volume_lib.Volume:
    # 2D masks need label=True (palette indices, colour masks checked); other readers have no
    # such switch because their files store label values directly.
    if io_lib.format_of(path) == "image2d":
        return io_lib.read_volume(path, label=True)
    return io_lib.read_volume(path)


def load_case(case: Mapping[str, Any]) -> tuple[volume_lib.Volume, volume_lib.Volume | None]:
    """Reads a crawler case: ``image`` (a path or per-channel paths) and ``label`` (path/None).

    Per-channel files (nnU-Net ``_0000``, ``_0001``) are stacked channels-last after checking
    that they share one grid.

    Returns:
      ``(image, label)``: image ``[*spatial(, C)]``; label ``[*spatial]`` or None (no mask:
      an unlabelled or a classification case, whose class is ``class_index``).

    Raises:
      DataError: a file cannot be read, channel files disagree in shape or geometry, or the
        image or mask holds NaN or Inf voxels (the message names the file).
    """
    paths = case["image"] if isinstance(case["image"], list | tuple) else [case["image"]]
    # A DICOM case's folder may hold several series (dicom_series crawler): pick this one.
    kwargs = {"series_uid": case["series_uid"]} if case.get("series_uid") else {}
    volumes = [io_lib.read_volume(p, **kwargs) for p in paths]
    image = volumes[0]
    if len(volumes) > 1:
        for path, vol in zip(paths[1:], volumes[1:], strict=True):
            if vol.array.shape != image.array.shape or not np.allclose(
                vol.affine, image.affine, atol=1e-3
            ):
                raise errors.DataError(
                    f"{path}: channel grid {vol.array.shape} / affine {vol.affine.tolist()} "
                    f"differs from {paths[0]} ({image.array.shape} / {image.affine.tolist()})."
                )
        stacked = np.stack([np.asarray(v.array) for v in volumes], axis=-1)
        image = image.with_array(stacked, channel_paths=[str(p) for p in paths])
    for path, vol in zip(paths, volumes, strict=True):
        _check_finite(vol.array, str(path), "image")
    label = case.get("label")
    if label is None:
        return image, None
    if not isinstance(label, str | os.PathLike):
        raise errors.DataError(
            f"Case {case.get('id')!r}: label={label!r} is not a mask path; a crawler gives a "
            "classification case's class as class_index (int) and label=None."
        )
    label = os.fspath(label)
    label_volume = _read_label(label)
    _check_finite(label_volume.array, label, "mask")
    return image, label_volume


def _check_finite(array: np.ndarray, path: str, what: str) -> None:
    """A DataError naming ``path`` when ``array`` holds NaN or Inf voxels.

    Checked at load, before the fingerprint and preprocessing, so one such case is skipped and
    reported instead of turning its stored volume (and the reported Dice, or training) to NaN.
    """
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(
        array.dtype, np.complexfloating
    ):
        return  # integer and bool voxels are always finite
    finite = np.isfinite(array)
    if finite.all():
        return
    n_nan = int(np.isnan(array).sum())
    n_inf = int(array.size - finite.sum()) - n_nan
    raise errors.DataError(
        f"{path}: {what} has {n_nan} NaN and {n_inf} infinite voxel(s) of {array.size}; "
        "fix or remove this file (the case is skipped)."
    )
