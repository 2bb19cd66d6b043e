"""Reading and writing medical images as ``Volume`` (array + geometry).

The axis and coordinate convention is stated once, in ``medjax.data.io.volume``:

* arrays are ``[D, H, W]`` (3D) or ``[H, W]`` (2D) with an optional trailing channel axis ``C``;
  ``array[k, j, i]`` is ITK's voxel ``(i, j, k)``, i.e. the axis order is reversed with respect
  to nibabel's / ITK's ``(i, j, k)``;
* world coordinates are patient **LPS** millimetres (NIfTI's RAS is converted on read and back
  on write);
* ``spacing``, ``origin`` and ``direction`` are given in array axis order.

``read_volume`` / ``write_volume`` dispatch on the file extension; format modules are imported
lazily so that a missing optional reader (e.g. DICOM) only fails when it is used.
"""

from __future__ import annotations

import os
from typing import Any

from medjax import errors
from medjax.data.io.volume import Volume

__all__ = ["Volume", "read_volume", "write_volume", "format_of", "strip_extension"]

# Longest suffix first, so that ".nii.gz" wins over ".gz".
_FORMATS = (
    (".nii.gz", "nifti"),
    (".nii", "nifti"),
    (".mhd", "itk"),
    (".mha", "itk"),
    (".nrrd", "itk"),
    (".nhdr", "itk"),
    (".png", "image2d"),
    (".jpg", "image2d"),
    (".jpeg", "image2d"),
    (".tif", "image2d"),
    (".tiff", "image2d"),
    (".bmp", "image2d"),
    (".dcm", "dicom"),
)


def format_of(path: str | os.PathLike) -> str | None:
    """The reader family of ``path`` by extension: nifti, itk, image2d, dicom, or None."""
    name = os.fspath(path).lower()
    for suffix, fmt in _FORMATS:
        if name.endswith(suffix):
            return fmt
    return None


def strip_extension(path: str | os.PathLike) -> str:
    """The file name without its (possibly double, ``.nii.gz``) image extension."""
    name = os.path.basename(os.fspath(path))
    lower = name.lower()
    for suffix, _ in _FORMATS:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


def read_volume(path: str | os.PathLike, **kwargs: Any) -> Volume:
    """Reads any supported image into a ``Volume``.

    Args:
      path: a file (``.nii[.gz]``, ``.mhd``/``.mha``, ``.nrrd``/``.nhdr``, ``.png``/``.jpg``/
        ``.tif``/``.bmp``, ``.dcm``) or a folder holding one DICOM series. Extension-less files
        are tried as DICOM (series files often have no extension).
      **kwargs: passed to the format reader (e.g. ``canonical=True`` for NIfTI, ``label=True``
        for 2D images).

    Returns:
      The ``Volume``: ``[D, H, W(, C)]`` or ``[H, W(, C)]`` with LPS geometry.

    Raises:
      DataError: the path does not exist or the extension is not supported.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise errors.DataError(f"{path}: no such file or folder.")
    fmt = "dicom" if os.path.isdir(path) else format_of(path)
    if fmt is None and "." not in os.path.basename(path):
        fmt = "dicom"
    if fmt == "nifti":
        from medjax.data.io import nifti

        return nifti.read_nifti(path, **kwargs)
    if fmt == "itk":
        from medjax.data.io import itk

        return itk.read_itk(path, **kwargs)
    if fmt == "image2d":
        from medjax.data.io import image2d

        return image2d.read_image2d(path, **kwargs)
    if fmt == "dicom":
        # Written by another module owner; imported here only when a DICOM input shows up.
        from medjax.data.io import dicom

        return dicom.read_dicom_series(path, **kwargs)
    raise errors.DataError(
        f"{path}: unsupported image extension; known: {', '.join(s for s, _ in _FORMATS)}."
    )


def write_volume(volume: Volume, path: str | os.PathLike) -> None:
    """Writes a ``Volume`` with its geometry, choosing the format by extension.

    Args:
      volume: the volume (``[D, H, W(, C)]`` or ``[H, W(, C)]``).
      path: ``.nii``/``.nii.gz`` (NIfTI), ``.mhd``/``.mha``/``.nrrd`` (ITK), or
        ``.png``/``.tif``/``.bmp`` (2D, 8/16-bit integers).

    Raises:
      DataError: unsupported extension (DICOM writing is not supported) or data.
    """
    path = os.fspath(path)
    fmt = format_of(path)
    if fmt == "nifti":
        from medjax.data.io import nifti

        return nifti.write_nifti(volume, path)
    if fmt == "itk" and not path.lower().endswith(".nhdr"):
        from medjax.data.io import itk

        return itk.write_itk(volume, path)
    if fmt == "image2d" and not path.lower().endswith((".jpg", ".jpeg")):
        from medjax.data.io import image2d

        return image2d.write_image2d(volume, path)
    raise errors.DataError(
        f"{path}: cannot write this extension; use .nii.gz, .nii, .mhd, .mha, .nrrd, .png, "
        ".tif or .bmp."
    )
