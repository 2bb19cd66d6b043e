"""2D raster images (PNG, JPEG, TIFF, BMP) as ``Volume`` through Pillow.

Array layout is ``[H, W]`` for grayscale and ``[H, W, C]`` for colour (RGB: C=3, RGBA: C=4,
grayscale + alpha: C=2), i.e. axis 0 runs down the rows and axis 1 along the columns. The
geometry is 2D: origin ``(0, 0)``, identity direction, and a spacing in mm taken from the file's
resolution metadata (PNG ``pHYs``, TIFF/BMP/JPEG resolution) when it is physical, else 1 mm.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
from absl import logging
from PIL import Image, ImageFile

from medjax import errors
from medjax.data.io import volume as volume_lib

EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

_MM_PER_INCH = 25.4
# Screen resolutions that image tools write by default (Pillow writes 96 dpi into every BMP).
# They never describe a physical pixel size, so they are treated as "no spacing".
_DEFAULT_DPI = (72.0, 96.0)

_WRITE_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}


def _spacing_from_info(info: dict, path: str) -> tuple[tuple[float, float], str]:
    """Returns ``((row_mm, col_mm), source)`` from Pillow's ``info`` dict.

    Pillow converts PNG pHYs (pixels per metre), TIFF resolution (inch or cm) and BMP pixels per
    metre into ``info["dpi"] = (x_dpi, y_dpi)``; aspect-only metadata (no unit) gives no ``dpi``.
    """
    dpi = info.get("dpi")
    if dpi is None or len(dpi) != 2:
        return (1.0, 1.0), "default"
    x_dpi, y_dpi = float(dpi[0]), float(dpi[1])
    if not (np.isfinite(x_dpi) and np.isfinite(y_dpi)) or x_dpi <= 0 or y_dpi <= 0:
        return (1.0, 1.0), "default"
    if any(abs(x_dpi - d) < 0.05 and abs(y_dpi - d) < 0.05 for d in _DEFAULT_DPI):
        logging.debug("%s: %.1f dpi looks like a tool default; using 1 mm spacing.", path, x_dpi)
        return (1.0, 1.0), "default"
    # Array axis 0 is the row (y) axis, axis 1 the column (x) axis.
    return (_MM_PER_INCH / y_dpi, _MM_PER_INCH / x_dpi), "metadata"


def _to_array(img: Image.Image, path: str, label: bool) -> np.ndarray:
    """Pillow image -> numpy in our layout, keeping the stored bit depth."""
    mode = img.mode
    if mode == "P":
        if label:
            # A palette mask stores class indices; the palette only colours them.
            return np.asarray(img, dtype=np.uint8)
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "1":
        return np.asarray(img, dtype=np.uint8)
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    array = np.asarray(img)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("="))
    if label and array.ndim == 3:
        # Gray + alpha (C=2) compares nothing; RGB(A) must have R == G == B.
        colour = array[..., : 3 if array.shape[-1] >= 3 else 1]
        if not np.all(colour == colour[..., :1]):
            raise errors.DataError(
                f"{path}: colour mask (mode {img.mode}) has differing channels; a label image "
                "must be grayscale or a palette image holding class indices."
            )
        array = array[..., 0]
    return np.ascontiguousarray(array)


def read_image2d(
    path: str | os.PathLike, *, label: bool = False, spacing_from_metadata: bool = True
) -> volume_lib.Volume:
    """Reads a PNG/JPEG/TIFF/BMP image into a 2D ``Volume``.

    Args:
      path: the image file.
      label: read a mask: palette images give their class indices (not colours), and a colour
        image must have equal channels and gives ``[H, W]``.
      spacing_from_metadata: take the pixel size from the file's resolution metadata when it is
        physical (not an unset 72/96 dpi screen default); otherwise use 1 mm.

    Returns:
      ``Volume`` with ``array`` ``[H, W]`` (uint8 / uint16 / int32 / float32 as stored) or
      ``[H, W, C]`` (uint8, C in 2..4); spacing ``(row_mm, col_mm)``; origin ``(0, 0)``;
      identity direction; ``meta`` with ``path``, ``format``, ``mode``, ``spacing_source``.

    Raises:
      DataError: the file is missing, not an image, truncated or corrupt, or multi-frame.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise errors.DataError(f"{path}: image file does not exist.")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone switched Pillow to padding truncated files with zeros; we would return them.
        logging.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set: truncation may go unseen.")
    try:
        # verify() walks the chunk structure (PNG CRCs, missing IEND) without decoding; it
        # leaves the image unusable, so the file is opened again and fully decoded with load():
        # Image.open alone is lazy and would accept a truncated file.
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            if getattr(img, "n_frames", 1) > 1:
                raise errors.DataError(
                    f"{path}: has {img.n_frames} frames; read_image2d reads single 2D images "
                    "(use medjax.data.io.itk for image stacks)."
                )
            img.load()
            fmt, mode, info = img.format, img.mode, dict(img.info)
            array = _to_array(img, path, label)
    except errors.DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise errors.DataError(f"{path}: cannot read image ({type(e).__name__}: {e}).") from e
    if spacing_from_metadata:
        spacing, source = _spacing_from_info(info, path)
    else:
        spacing, source = (1.0, 1.0), "default"
    meta = {"path": path, "format": fmt, "mode": mode, "spacing_source": source}
    return volume_lib.Volume(array, spacing, (0.0, 0.0), np.eye(2), meta)


def _to_pil(array: np.ndarray, path: str, fmt: str) -> Image.Image:
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer)):
        raise errors.DataError(
            f"{path}: cannot write a {array.dtype} array as {fmt}; cast it to uint8 or uint16 "
            "first (e.g. a label map or a rescaled image)."
        )
    lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if array.ndim == 3:
        if array.shape[-1] not in (3, 4) or lo < 0 or hi > 255:
            raise errors.DataError(
                f"{path}: colour images must be uint8 [H, W, 3|4]; got {array.dtype} "
                f"{array.shape} with range [{lo}, {hi}]."
            )
        # Pillow infers the mode from dtype and shape (uint8 [H, W, 3] -> RGB, 4 -> RGBA); the
        # explicit mode argument of fromarray is deprecated.
        return Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    if lo < 0 or hi > 65535:
        raise errors.DataError(f"{path}: values [{lo}, {hi}] fit neither uint8 nor uint16.")
    if hi <= 255 and array.dtype.itemsize == 1:
        return Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    if fmt == "BMP":
        if hi > 255:
            raise errors.DataError(f"{path}: BMP holds 8-bit gray only; values reach {hi}.")
        return Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    # Wider integer types keep 16 bits so that e.g. a CT slice in raw units is not clipped.
    return Image.fromarray(np.ascontiguousarray(array, dtype=np.uint16))  # mode I;16


def write_image2d(volume: volume_lib.Volume, path: str | os.PathLike) -> None:
    """Writes a 2D ``Volume`` as an 8- or 16-bit image (PNG; also TIFF, BMP).

    The spacing is stored as resolution metadata (PNG pHYs rounds to whole pixels per metre,
    i.e. a relative error below ~1e-3 for sub-mm pixels). Origin and direction cannot be stored
    in these formats; a non-default one is logged and dropped. The file is written under a
    temporary name and renamed, so a crash never leaves a half-written image.

    Args:
      volume: ``array`` ``[H, W]`` integer/bool (uint8 written when dtype is 1 byte, else
        uint16) or ``[H, W, 3|4]`` uint8-valued.
      path: destination; the extension picks the format (.png, .tif/.tiff, .bmp).

    Raises:
      DataError: unsupported extension, dtype, value range or not 2D.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in _WRITE_FORMATS:
        raise errors.DataError(f"{path}: write_image2d writes {sorted(_WRITE_FORMATS)}, not {ext}.")
    if volume.ndim_spatial != 2:
        raise errors.DataError(
            f"{path}: write_image2d needs a 2D volume, got {volume.ndim_spatial}D."
        )
    fmt = _WRITE_FORMATS[ext]
    if np.any(np.asarray(volume.origin) != 0) or not np.allclose(volume.direction, np.eye(2)):
        logging.warning("%s: %s cannot store origin/direction; they are dropped.", path, fmt)
    img = _to_pil(np.asarray(volume.array), path, fmt)
    row_mm, col_mm = volume.spacing
    dpi = (_MM_PER_INCH / col_mm, _MM_PER_INCH / row_mm)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=ext, dir=folder)
    os.close(fd)
    try:
        img.save(tmp, format=fmt, dpi=dpi)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
