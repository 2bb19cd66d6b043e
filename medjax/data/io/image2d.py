"""2D raster images (PNG, JPEG, TIFF, BMP) and multi-page TIFF stacks as ``Volume`` (Pillow).

Array layout is ``[H, W]`` for grayscale and ``[H, W, C]`` for colour (RGB: C=3, RGBA: C=4,
grayscale + alpha: C=2), i.e. axis 0 runs down the rows and axis 1 along the columns. The
geometry is 2D: origin ``(0, 0)``, identity direction, and a spacing in mm taken from the file's
resolution metadata (PNG ``pHYs``, TIFF/BMP/JPEG resolution) when it is physical, else 1 mm.

A multi-page TIFF is a 3D stack ``[D, H, W(, C)]`` with the pages along axis 0 (origin 0,
identity direction). Its in-plane spacing comes from the resolution tags as above (or ImageJ's
``unit=`` with unitless resolution tags); the page spacing from ImageJ's ``spacing=`` in the
ImageDescription when present, else 1 mm. Every page must have the first page's size and mode.
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


# ImageJ length units (its ImageDescription ``unit=``) in mm; ImageJ writes micro as "\\u00B5m".
_IMAGEJ_UNIT_MM = {
    "mm": 1.0,
    "millimeter": 1.0,
    "cm": 10.0,
    "m": 1000.0,
    "meter": 1000.0,
    "inch": _MM_PER_INCH,
    "micron": 1e-3,
    "um": 1e-3,
    "\u00b5m": 1e-3,
    "\\u00b5m": 1e-3,
    "nm": 1e-6,
}


def _imagej_fields(description: object) -> dict[str, str]:
    """``key=value`` lines of an ImageJ ImageDescription (``{}`` for any other description)."""
    if not isinstance(description, str) or not description.startswith("ImageJ="):
        return {}
    fields = {}
    for line in description.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _info(img: Image.Image) -> dict:
    """``img.info`` without the resolution Pillow invents for a TIFF that has no such tags."""
    info = dict(img.info)
    if img.format == "TIFF" and 282 not in img.tag_v2:  # 282: XResolution
        # Pillow then reports TIFF's defaults, 1 pixel per inch (25.4 mm), as if they were set.
        info.pop("dpi", None)
        info.pop("resolution", None)
    return info


def _stack_spacing(
    img: Image.Image, info: dict, path: str
) -> tuple[tuple[float, float, float], str]:
    """``((page_mm, row_mm, col_mm), source)`` of a multi-page TIFF (see the module docstring)."""
    (row_mm, col_mm), source = _spacing_from_info(info, path)
    fields = _imagej_fields(img.tag_v2.get(270))
    unit_mm = _IMAGEJ_UNIT_MM.get(fields.get("unit", "").lower())
    resolution = info.get("resolution")
    if source == "default" and unit_mm is not None and resolution and min(resolution) > 0:
        # ImageJ stores pixels per `unit` with ResolutionUnit "none", so Pillow gives no dpi.
        row_mm, col_mm = unit_mm / float(resolution[1]), unit_mm / float(resolution[0])
        source = "imagej"
    page_mm, page_source = 1.0, "default"
    try:
        if unit_mm is not None and float(fields.get("spacing", "nan")) > 0:
            page_mm, page_source = float(fields["spacing"]) * unit_mm, "imagej"
    except ValueError:
        logging.warning("%s: ImageJ spacing=%r is not a number.", path, fields.get("spacing"))
    return (page_mm, row_mm, col_mm), f"pages: {page_source}, in-plane: {source}"


def _read_pages(img: Image.Image, path: str, label: bool) -> np.ndarray:
    """All pages of a multi-page TIFF stacked along a new axis 0: ``[D, H, W(, C)]``."""
    first_size, first_mode = img.size, img.mode
    stack = None
    for page in range(img.n_frames):
        img.seek(page)
        if (img.size, img.mode) != (first_size, first_mode):
            raise errors.DataError(
                f"{path}: page {page} is {img.size[1]}x{img.size[0]} mode {img.mode} but page 0 "
                f"is {first_size[1]}x{first_size[0]} mode {first_mode}; a stack needs pages of "
                "one size and mode."
            )
        img.load()
        array = _to_array(img, path, label)
        if stack is None:
            # Filled page by page: only one decoded page exists besides the stack.
            stack = np.empty((img.n_frames, *array.shape), array.dtype)
        stack[page] = array
    return stack


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
    """Reads a PNG/JPEG/TIFF/BMP image into a 2D ``Volume`` (a multi-page TIFF: 3D).

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
      A multi-page TIFF gives ``[D, H, W(, C)]`` (pages along D), spacing
      ``(page_mm, row_mm, col_mm)``, origin ``(0, 0, 0)``, identity direction and
      ``meta["pages"]``.

    Raises:
      DataError: the file is missing, not an image, truncated or corrupt, a multi-frame
        non-TIFF (GIF, APNG), or a TIFF whose pages differ in size or mode.
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
            pages = getattr(img, "n_frames", 1)
            if pages > 1 and img.format != "TIFF":
                raise errors.DataError(
                    f"{path}: has {pages} frames; only TIFF stacks are read as volumes (use "
                    "medjax.data.io.itk for other image stacks)."
                )
            fmt, mode, info = img.format, img.mode, _info(img)
            if pages > 1:
                array = _read_pages(img, path, label)
                img.seek(0)  # spacing tags of the first page
                spacing3, source3 = _stack_spacing(img, _info(img), path)
            else:
                img.load()
                array = _to_array(img, path, label)
    except errors.DataError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise errors.DataError(f"{path}: cannot read image ({type(e).__name__}: {e}).") from e
    except TypeError as e:
        # Pillow's TIFF reader raises TypeError("Missing dimensions") on a page directory cut
        # short; name the file like any other corrupt input.
        raise errors.DataError(f"{path}: corrupt or truncated image (TypeError: {e}).") from e
    if pages > 1:
        if not spacing_from_metadata:
            spacing3, source3 = (1.0, 1.0, 1.0), "default"
        meta = {"path": path, "format": fmt, "mode": mode, "spacing_source": source3}
        meta["pages"] = pages
        return volume_lib.Volume(array, spacing3, (0.0, 0.0, 0.0), np.eye(3), meta)
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
