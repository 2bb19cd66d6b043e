"""DICOM reading: find the series under a folder and stack one into a ``Volume`` in LPS.

What belongs here: discovering series (headers only), turning classic one-slice-per-file series
and enhanced multi-frame files into a ``[D, H, W]`` float32 array with geometry, and refusing
input that would stack into a geometrically wrong volume. pydicom and numpy only.

Geometry (see ``volume.py``): with row cosine ``r = IOP[0:3]``, column cosine ``c = IOP[3:6]``
and slice normal ``n = r x c``, slices are sorted by ``dot(IPP, n)`` ascending, so array axis 0
runs along ``+n``. ``direction = [n | c | r]`` (columns in array axis order ``D, H, W``),
``spacing = (slice_step, PixelSpacing[0], PixelSpacing[1])`` and ``origin`` is the IPP of the
first sorted slice. The slice step comes from the positions, never from SliceThickness, except for
a single slice where there are no positions to difference.

Writing DICOM (e.g. DICOM SEG) is not done here; write predictions with the NIfTI writer, which
takes this LPS geometry.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import pydicom
import pydicom.errors
import pydicom.pixels
from absl import logging

from medjax import errors
from medjax.data.io import dicom_frames
from medjax.data.io import volume as volume_lib

# Element values longer than this are not read by the header scan: pydicom records where they
# are and reads them when first used (``defer_size``). The scan's datasets then serve the pixel
# read too (one parse per file), and only the slice being decoded has its pixel bytes in memory.
_DEFER_BYTES = 16 * 1024
_INSTALL_HINT = (
    'install a decoder plugin: `pip install "pydicom[pixeldata]"` (all of them), or e.g. '
    "`pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg` / `pip install pyjpegls`"
)


@dataclasses.dataclass
class SeriesScan:
    """What ``scan_series`` found under a folder.

    Attributes:
      series: SeriesInstanceUID -> sorted paths of the image files in that series.
      skipped: path -> why it is not part of any series (not DICOM, no image, corrupt).
      corrupt: the subset of ``skipped`` that looked like DICOM but could not be parsed.
    """

    series: dict[str, list[str]]
    skipped: dict[str, str]
    corrupt: list[str]


# ---------------------------------------------------------------------------------------------
# Discovery (headers only)
# ---------------------------------------------------------------------------------------------


def _read_header(path: str) -> tuple[pydicom.Dataset | None, bool, str]:
    """Parses a file with its pixel data left on disk (deferred); returns ``(dataset or None,
    forced, reason it is skipped)``. ``_decode`` reads the pixels from the same dataset."""
    try:
        return pydicom.dcmread(path, defer_size=_DEFER_BYTES), False, ""
    except pydicom.errors.InvalidDicomError:
        pass  # No 128-byte preamble + "DICM": maybe an old raw dataset, retried below.
    except Exception as e:  # noqa: BLE001 - pydicom raises many undocumented types on bad bytes.
        return None, False, f"corrupt DICOM ({type(e).__name__}: {e})"
    # force=True parses anything; accept the result only if it carries the tags of an image.
    try:
        ds = pydicom.dcmread(path, defer_size=_DEFER_BYTES, force=True)
        if "SeriesInstanceUID" in ds and "Rows" in ds:
            return ds, True, ""
    except Exception:  # noqa: BLE001, S110 - garbage bytes; reported as "not DICOM" below.
        pass
    return None, False, "not DICOM"


def _scan(root: str) -> tuple[dict[str, list[tuple[str, pydicom.Dataset, bool]]], SeriesScan]:
    if not os.path.isdir(root):
        raise errors.DataError(f"DICOM folder {root!r} does not exist or is not a folder.")
    headers: dict[str, list[tuple[str, pydicom.Dataset, bool]]] = {}
    skipped: dict[str, str] = {}
    corrupt: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()  # os.walk order is filesystem order; sort for determinism.
        for filename in sorted(filenames):
            path = os.path.join(dirpath, filename)
            ds, forced, reason = _read_header(path)
            if ds is not None and ("SeriesInstanceUID" not in ds or "Rows" not in ds):
                ds, reason = (
                    None,
                    "DICOM without an image (no SeriesInstanceUID/Rows, e.g. DICOMDIR)",
                )
            if ds is None:
                skipped[path] = reason
                if reason.startswith("corrupt"):
                    corrupt.append(path)
                continue
            headers.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds, forced))
    scan = SeriesScan({uid: [p for p, _, _ in v] for uid, v in headers.items()}, skipped, corrupt)
    if skipped:
        logging.warning(
            "DICOM scan of %s skipped %d file(s): %s",
            root,
            len(skipped),
            "; ".join(f"{p}: {r}" for p, r in list(skipped.items())[:10]),
        )
    return headers, scan


def scan_series(root: str) -> SeriesScan:
    """Walks a folder tree and groups DICOM image files by SeriesInstanceUID.

    Only headers are read (element values over 16 KB, i.e. the pixel data, stay on disk);
    ``force=True`` is tried only for files without the DICOM preamble, and kept only if the
    result has SeriesInstanceUID and Rows.

    Args:
      root: folder to walk (recursively).

    Returns:
      A ``SeriesScan`` with the series and a report of every skipped file and why.

    Raises:
      DataError: ``root`` is not a folder.
    """
    return _scan(root)[1]


def find_series(root: str) -> dict[str, list[str]]:
    """SeriesInstanceUID -> sorted file paths of every image series under ``root``.

    Files that are not DICOM images are skipped and logged (absl WARNING) with their reason;
    use ``scan_series`` to get that report as data.

    Raises:
      DataError: ``root`` is not a folder.
    """
    return scan_series(root).series


# ---------------------------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------------------------


def _decode(path: str, ds: pydicom.Dataset) -> tuple[np.ndarray, str]:
    """Stored pixel values of a scanned file: ``[Rows, Columns]`` or ``[F, Rows, Columns]``.

    The pixel bytes are read now (deferred by the scan) and dropped from ``ds`` afterwards, so a
    series never holds more than one file's pixel bytes.
    """
    if "PixelData" not in ds:
        raise errors.DataError(f"{path}: no PixelData (truncated before the pixels?).")
    syntax = ds.file_meta.get("TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian)
    if syntax.is_compressed:
        try:
            decoder = pydicom.pixels.get_decoder(syntax)
        except NotImplementedError as e:
            raise errors.DataError(f"{path}: pydicom cannot decode {syntax.name}.") from e
        if not decoder.is_available:
            raise errors.DataError(
                f"{path}: pixel data is {syntax.name} and no decoder for it is installed "
                f"(options: {'; '.join(decoder.missing_dependencies)}). To read it, "
                f"{_INSTALL_HINT}."
            )
    try:
        # pixel_array(ds) decodes without caching the array in ds (ds.pixel_array would).
        array = pydicom.pixels.pixel_array(ds)
    except Exception as e:  # noqa: BLE001 - decoders raise ValueError/RuntimeError/struct.error.
        raise errors.DataError(
            f"{path}: pixel data cannot be decoded ({type(e).__name__}: {e}); the file is "
            "truncated or corrupt."
        ) from e
    finally:
        if "PixelData" in ds:
            del ds.PixelData  # release the bytes the deferred read loaded
    return array, syntax.name


# ---------------------------------------------------------------------------------------------
# Public reader
# ---------------------------------------------------------------------------------------------


def read_dicom_series(
    path: str, *, series_uid: str | None = None, spacing_rtol: float = 0.05
) -> volume_lib.Volume:
    """Reads one DICOM series (a folder) or one file (single slice or multi-frame) as a Volume.

    Slices are sorted by ImagePositionPatient projected on the slice normal (never by file name or
    InstanceNumber); each slice gets its own RescaleSlope/Intercept (per-frame functional groups
    for enhanced multi-frame files, with the shared groups as fallback).

    Args:
      path: a folder holding the series (searched recursively) or a single DICOM file.
      series_uid: which series to read when the folder holds several.
      spacing_rtol: largest allowed misplacement of a slice from the regular grid, as a fraction
        of the slice step (in-plane drift: of the pixel spacing); never below 0.02 mm.

    Returns:
      A ``Volume`` with ``array`` float32 ``[D, H, W]`` (D along the normal, H along rows, W along
      columns; values rescaled, e.g. CT in HU), LPS ``spacing``/``origin``/``direction`` in that
      axis order, and ``meta`` holding ``modality``, ``series_uid``, ``study_uid``,
      ``patient_id`` (or None), ``files`` (one per slice, in D order), ``frame_indices`` (None
      for single-frame files), ``rescale_applied``, ``rescale_type``, ``transfer_syntaxes`` and
      ``slice_step_source`` (``"positions"``, or for one slice the tag it came from).

    Raises:
      DataError: naming the file/series: no or several series (listed), corrupt or truncated
        files, missing decoder for a compressed transfer syntax (with what to install), missing
        geometry tags, mixed orientations/sizes/pixel spacings, duplicate positions, missing
        slices (with the positions around the gap), uneven spacing, or in-plane drift.
    """
    if os.path.isfile(path):
        ds, forced, reason = _read_header(path)
        if ds is None or "Rows" not in ds:
            raise errors.DataError(f"{path}: not a DICOM image ({reason or 'no Rows'}).")
        if series_uid is not None and ds.get("SeriesInstanceUID") != series_uid:
            raise errors.DataError(
                f"{path}: belongs to series {ds.get('SeriesInstanceUID')}, not {series_uid}."
            )
        members = [(path, ds, forced)]
        label = path
    else:
        headers, scan = _scan(path)
        if scan.corrupt:
            raise errors.DataError(
                f"{path}: corrupt DICOM file(s): "
                + "; ".join(f"{p}: {scan.skipped[p]}" for p in scan.corrupt)
            )
        if not headers:
            raise errors.DataError(
                f"{path}: no DICOM image series found ({len(scan.skipped)} file(s) skipped)."
            )
        listing = ", ".join(f"{uid} ({len(v)} files)" for uid, v in sorted(headers.items()))
        if series_uid is None and len(headers) > 1:
            raise errors.DataError(
                f"{path}: holds {len(headers)} series; pass series_uid= one of: {listing}."
            )
        uid = series_uid if series_uid is not None else next(iter(headers))
        if uid not in headers:
            raise errors.DataError(f"{path}: no series {uid}; found: {listing}.")
        members = headers[uid]
        label = f"series {uid} in {path}"
        if scan.skipped:
            try:
                return _stack(members, label, path, spacing_rtol)
            except errors.DataError as e:
                # A slice that failed to parse (truncated header) shows up as a gap: name it.
                skipped = "; ".join(f"{p}: {r}" for p, r in sorted(scan.skipped.items()))
                raise errors.DataError(f"{e} Unreadable files in this folder: {skipped}") from e
    return _stack(members, label, path, spacing_rtol)


def read_dicom_files(files: Sequence[str], *, spacing_rtol: float = 0.05) -> volume_lib.Volume:
    """Stacks an explicit list of DICOM files (e.g. a crawler's ``case["files"]``) as one Volume.

    The files are sorted by position exactly as in ``read_dicom_series``, whatever their order
    here; they must all be DICOM images of one series.

    Args:
      files: paths of the image files (single-frame or multi-frame).
      spacing_rtol: as in ``read_dicom_series``.

    Returns:
      The ``Volume``, as described in ``read_dicom_series`` (``meta["path"]`` is the first file).

    Raises:
      DataError: as in ``read_dicom_series``; also when the files span several series.
    """
    if not files:
        raise errors.DataError("read_dicom_files: no files given.")
    members = []
    for path in files:
        ds, forced, reason = _read_header(path)
        if ds is None or "Rows" not in ds:
            raise errors.DataError(f"{path}: not a DICOM image ({reason or 'no Rows'}).")
        members.append((path, ds, forced))
    uids = {str(ds.get("SeriesInstanceUID")) for _, ds, _ in members}
    if len(uids) > 1:
        raise errors.DataError(f"{files[0]} ...: the files belong to {len(uids)} series: {uids}.")
    return _stack(members, f"series {uids.pop()} ({len(files)} files)", files[0], spacing_rtol)


def _stack(
    members: list[tuple[str, pydicom.Dataset, bool]], label: str, path: str, spacing_rtol: float
) -> volume_lib.Volume:
    """Geometry checks, sorting, decoding and rescaling of one series' header datasets."""
    dataset_by_path = {p: ds for p, ds, _ in members}
    frames = [frame for p, ds, _ in members for frame in dicom_frames.frames_of(p, ds)]
    dicom_frames.check_uniform(frames, label)
    row, col, normal = dicom_frames.axes(frames[0].orientation, label)
    first_ds = members[0][1]
    if len(frames) > 1:
        frames, step = dicom_frames.sort_and_measure(frames, normal, label, spacing_rtol)
        step_source = "positions"
    else:
        # One slice has no neighbour to measure from; the tags are the only source left.
        step, step_source = 1.0, "default_1mm"
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            found = dicom_frames.group_value(
                first_ds, frames[0].index, "PixelMeasuresSequence", keyword
            )
            if found is not None and float(found) > 0:
                step, step_source = float(found), keyword
                break

    # Decode each file once, from its scanned dataset, and write its frames straight into their
    # sorted places: only one file's pixels exist at a time besides the output volume.
    places: dict[str, list[tuple[int, dicom_frames.Frame]]] = {}
    for k, f in enumerate(frames):
        places.setdefault(f.path, []).append((k, f))
    array = np.empty((len(frames), *frames[0].shape), np.float32)
    syntaxes: set[str] = set()
    for file_path, placed in places.items():
        stored, syntax = _decode(file_path, dataset_by_path[file_path])
        syntaxes.add(syntax)
        for k, f in placed:
            pixels = stored if f.index is None else stored.reshape(-1, *f.shape)[f.index]
            if pixels.shape != f.shape:
                raise errors.DataError(
                    f"{f.name}: pixels {pixels.shape} but header says {f.shape}."
                )
            # float64 for the affine map so large intercepts do not lose integer precision.
            array[k] = pixels.astype(np.float64) * f.slope + f.intercept
        del stored

    rescale_type = dicom_frames.group_value(
        first_ds, frames[0].index, "PixelValueTransformationSequence", "RescaleType"
    )
    meta = {
        "source": "dicom",
        "path": path,
        "modality": str(first_ds.get("Modality", "")) or None,
        "series_uid": str(first_ds.get("SeriesInstanceUID", "")) or None,
        "study_uid": str(first_ds.get("StudyInstanceUID", "")) or None,
        "patient_id": str(first_ds.get("PatientID", "")) or None,
        "files": [f.path for f in frames],
        "frame_indices": [f.index for f in frames],
        "rescale_applied": any(f.has_rescale for f in frames),
        "rescale_type": None if rescale_type is None else str(rescale_type),
        "transfer_syntaxes": sorted(syntaxes),
        "slice_step_source": step_source,
    }
    return volume_lib.Volume(
        array=array,
        spacing=(step, *frames[0].pixel_spacing),
        origin=tuple(frames[0].position),
        direction=np.stack([normal, col, row], axis=1),
        meta=meta,
    )
