"""NIfTI-1/2 (``.nii``, ``.nii.gz``) through nibabel, converted to the ``Volume`` convention.

nibabel gives ``data[i, j, k(, t)]`` and an affine from voxel ``(i, j, k)`` to **RAS** mm (the
sform when its code is set, else the qform). A ``Volume`` wants the reversed axis order
``array[k, j, i(, c)]`` and **LPS** world coordinates, so with ``F = diag(-1, -1, 1)`` (RAS <->
LPS) and ``R`` the axis reversal::

    array = data.transpose(2, 1, 0[, 3])        # 4D (time / components) -> channels-last
    affine_volume[:3, :3] = F @ A[:3, :3] @ R    # columns are array axes (D, H, W)
    origin = F @ A[:3, 3]

``write_nifti`` applies the inverse, so a read/write round trip restores the affine (to float32,
the precision NIfTI stores the sform in).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zlib

import nibabel as nib
import numpy as np

from medjax import errors
from medjax.data.io import volume as volume_lib

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
_REVERSE = np.eye(3)[::-1]  # permutes (i, j, k) <-> (k, j, i)


def _read_errors() -> tuple[type[BaseException], ...]:
    # A truncated .nii.gz ends the gzip stream early (EOFError / zlib.error); a truncated .nii
    # cannot be memory-mapped (ValueError / OSError); a broken header is an ImageFileError.
    return (EOFError, OSError, ValueError, zlib.error, nib.filebasedimages.ImageFileError)


def read_nifti(path: str | os.PathLike, canonical: bool = False) -> volume_lib.Volume:
    """Reads a NIfTI file into a ``Volume``.

    Args:
      path: ``.nii`` or ``.nii.gz`` file.
      canonical: first reorient to the closest canonical RAS+ voxel order (nibabel's
        ``as_closest_canonical``): then array axes ``(D, H, W)`` run toward (S, A, R).

    Returns:
      ``Volume`` with array ``[D, H, W]`` (3D; a 2D file gives ``D = 1``) or ``[D, H, W, C]``
      (4D: time points or vector components as channels). Integer data without scaling keeps
      its stored dtype (native byte order); scaled data (``scl_slope``/``scl_inter``) is float32.
      ``meta`` holds ``path``, ``sform_code``, ``qform_code``.

    Raises:
      DataError: missing, truncated or corrupt file, degenerate affine, or > 4 dimensions with
        more than one non-singleton extra axis.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise errors.DataError(f"{path}: NIfTI file does not exist.")
    try:
        img = nib.load(path)
        if canonical:
            img = nib.as_closest_canonical(img)
        proxy = img.dataobj
        slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
        if slope == 1.0 and inter == 0.0:
            data = np.asarray(proxy)
        else:
            data = np.asarray(img.get_fdata(dtype=np.float32))
        affine = np.asarray(img.affine, np.float64)
        sform_code = int(img.header["sform_code"])
        qform_code = int(img.header["qform_code"])
    except _read_errors() as e:
        raise errors.DataError(f"{path}: cannot read NIfTI ({type(e).__name__}: {e}).") from e
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("="))
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0]  # NIfTI vector images keep components in the 5th dim
    if data.ndim > 4:
        raise errors.DataError(f"{path}: {data.ndim}D NIfTI of shape {data.shape} unsupported.")
    array = np.ascontiguousarray(np.moveaxis(data, (0, 1, 2), (2, 1, 0)))
    linear = _RAS_TO_LPS @ affine[:3, :3] @ _REVERSE
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(linear)):
        raise errors.DataError(f"{path}: degenerate affine {affine.tolist()}.")
    meta = {"path": path, "sform_code": sform_code, "qform_code": qform_code}
    return volume_lib.Volume(
        array, tuple(spacing), tuple(_RAS_TO_LPS @ affine[:3, 3]), linear / spacing, meta
    )


def _as_3d(volume: volume_lib.Volume) -> volume_lib.Volume:
    """A 2D ``[H, W(, C)]`` volume as one slice ``[1, H, W(, C)]``, 1 mm thick along LPS z."""
    if volume.ndim_spatial == 3:
        return volume
    direction = np.zeros((3, 3))
    direction[2, 0] = 1.0
    direction[:2, 1:] = volume.direction
    return volume_lib.Volume(
        np.asarray(volume.array)[None],
        (1.0, *volume.spacing),
        (*volume.origin, 0.0),
        direction,
        volume.meta,
    )


def volume_to_ras_affine(volume: volume_lib.Volume) -> np.ndarray:
    """``float64[4, 4]`` NIfTI affine (voxel ``(i, j, k)`` -> RAS mm) of a volume.

    A 2D volume is first lifted to one slice (see ``write_nifti``).
    """
    affine = _as_3d(volume).affine
    out = np.eye(4)
    out[:3, :3] = _RAS_TO_LPS @ affine[:3, :3] @ _REVERSE
    out[:3, 3] = _RAS_TO_LPS @ affine[:3, 3]
    return out


def _disk_array(volume: volume_lib.Volume, path: str) -> np.ndarray:
    array = np.asarray(_as_3d(volume).array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype == np.int64 or array.dtype == np.uint64:
        # nibabel refuses 64-bit integers without an explicit on-disk type; narrow them when
        # the values fit, as label maps always do.
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        for dtype in (np.uint8, np.int16, np.int32):
            if np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max:
                array = array.astype(dtype)
                break
        else:
            raise errors.DataError(f"{path}: integer range [{lo}, {hi}] exceeds int32.")
    return np.moveaxis(array, (0, 1, 2), (2, 1, 0))


def write_nifti(volume: volume_lib.Volume, path: str | os.PathLike) -> None:
    """Writes a ``Volume`` as NIfTI-1 with its geometry as both sform and qform.

    The file is written in a temporary folder and moved into place, so an interrupted write never
    leaves a partial file under ``path``.

    Args:
      volume: ``[D, H, W(, C)]`` (or 2D ``[H, W(, C)]``, stored as one slice). Channels are
        written as the 4th NIfTI dimension. bool becomes uint8 and int64 the narrowest of
        uint8/int16/int32 holding the values.
      path: ``.nii`` or ``.nii.gz``.

    Raises:
      DataError: the data cannot be represented.
    """
    path = os.fspath(path)
    data = _disk_array(volume, path)
    affine = volume_to_ras_affine(volume)
    img = nib.Nifti1Image(data, affine)
    # Keep the source's codes when the volume came from NIfTI; otherwise "scanner anat" (1).
    img.set_sform(affine, code=int(volume.meta.get("sform_code") or 1))
    img.set_qform(affine, code=int(volume.meta.get("qform_code") or 1))
    img.header.set_xyzt_units("mm", "sec")
    folder = os.path.dirname(os.path.abspath(path))
    tmp_dir = tempfile.mkdtemp(prefix=".tmp_nifti_", dir=folder)
    try:
        tmp = os.path.join(tmp_dir, os.path.basename(path))
        nib.save(img, tmp)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
