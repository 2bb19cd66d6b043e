"""MetaImage (``.mhd``/``.raw``, ``.mha``) and NRRD (``.nrrd``, ``.nhdr``) through SimpleITK.

ITK already works in LPS and ``sitk.GetArrayFromImage`` already returns ``array[k, j, i]``, so
the only conversion is reversing ITK's per-axis geometry into array axis order::

    spacing = itk_spacing[::-1]
    direction[:, a] = itk_direction[:, n - 1 - a]      # column of array axis a
    origin = itk_origin                                 # a world point: unchanged

Multi-component pixels (RGB, vectors) become a trailing channel axis.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import SimpleITK as sitk

from medjax import errors
from medjax.data.io import volume as volume_lib

EXTENSIONS = (".mhd", ".mha", ".nrrd", ".nhdr")


def from_sitk(image: sitk.Image, meta: dict | None = None) -> volume_lib.Volume:
    """Converts a SimpleITK image to a ``Volume`` (``[D, H, W(, C)]`` or ``[H, W(, C)]``)."""
    n = image.GetDimension()
    array = sitk.GetArrayFromImage(image)
    itk_direction = np.asarray(image.GetDirection(), np.float64).reshape(n, n)
    return volume_lib.Volume(
        np.ascontiguousarray(array),
        tuple(image.GetSpacing())[::-1],
        tuple(image.GetOrigin()),
        itk_direction[:, ::-1],
        dict(meta or {}),
    )


def to_sitk(volume: volume_lib.Volume) -> sitk.Image:
    """Converts a ``Volume`` to a SimpleITK image with the same geometry."""
    array = np.asarray(volume.array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    is_vector = array.ndim == volume.ndim_spatial + 1
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=is_vector)
    image.SetSpacing(tuple(float(s) for s in volume.spacing[::-1]))
    image.SetOrigin(tuple(float(o) for o in volume.origin))
    image.SetDirection(tuple(volume.direction[:, ::-1].reshape(-1).tolist()))
    return image


def _metaimage_data_file(path: str) -> str | None:
    """The data file a ``.mhd`` header names (the file that is usually short or missing)."""
    if not path.lower().endswith(".mhd"):
        return None
    try:
        with open(path, errors="replace") as f:
            for line in f:
                key, _, value = line.partition("=")
                if key.strip() == "ElementDataFile":
                    return os.path.join(os.path.dirname(path), value.strip())
    except OSError:
        return None
    return None


def read_itk(path: str | os.PathLike) -> volume_lib.Volume:
    """Reads a MetaImage or NRRD file into a ``Volume``.

    Args:
      path: ``.mhd`` (with its ``.raw``/``.zraw`` data file), ``.mha``, ``.nrrd`` or ``.nhdr``.

    Returns:
      ``Volume`` with array ``[D, H, W(, C)]`` (or 2D ``[H, W(, C)]``) in the stored pixel type,
      LPS geometry in array axis order, and ``meta`` with ``path`` and the header keys SimpleITK
      exposes (e.g. NRRD ``space``), as strings.

    Raises:
      DataError: missing, truncated (e.g. a short ``.raw``) or unreadable file; the message
        names the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise errors.DataError(f"{path}: image file does not exist.")
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        image = reader.Execute()
        header = {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()}
    except RuntimeError as e:
        # SimpleITK reports short data files, bad headers and decompression failures as
        # RuntimeError with a multi-line ITK trace; the first line that says why is enough.
        reason = next((ln for ln in str(e).splitlines() if "rror" in ln), str(e)).strip()
        data_file = _metaimage_data_file(path)
        also = f" (data file {data_file})" if data_file else ""
        raise errors.DataError(f"{path}{also}: cannot read image ({reason}).") from e
    # Keep only short plain-text header values: the meta dict must stay small and JSON-able.
    meta = {"path": path, **{k: v for k, v in header.items() if len(v) < 200}}
    return from_sitk(image, meta)


def write_itk(volume: volume_lib.Volume, path: str | os.PathLike, compress: bool = True) -> None:
    """Writes a ``Volume`` as MetaImage (``.mhd`` + ``.raw``/``.zraw``, ``.mha``) or NRRD.

    Files are written in a temporary folder under their final names (a ``.mhd`` header names its
    data file) and then moved into place, data file first, so an interrupted write never leaves a
    header pointing at missing data.

    Args:
      volume: ``[D, H, W(, C)]`` or ``[H, W(, C)]``; bool is written as uint8.
      path: ``.mhd``, ``.mha`` or ``.nrrd``.
      compress: zlib-compress the pixel data (``.zraw`` for ``.mhd``).

    Raises:
      DataError: unsupported extension or SimpleITK cannot write the data.
    """
    path = os.fspath(path)
    if not path.lower().endswith((".mhd", ".mha", ".nrrd")):
        raise errors.DataError(f"{path}: write_itk writes .mhd, .mha or .nrrd.")
    folder = os.path.dirname(os.path.abspath(path))
    tmp_dir = tempfile.mkdtemp(prefix=".tmp_itk_", dir=folder)
    try:
        tmp = os.path.join(tmp_dir, os.path.basename(path))
        try:
            sitk.WriteImage(to_sitk(volume), tmp, useCompression=compress)
        except RuntimeError as e:
            raise errors.DataError(f"{path}: SimpleITK cannot write this volume ({e}).") from e
        header = os.path.basename(path)
        for name in sorted(os.listdir(tmp_dir), key=lambda f: f == header):
            os.replace(os.path.join(tmp_dir, name), os.path.join(folder, name))
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
