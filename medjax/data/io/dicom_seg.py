"""DICOM Segmentation (SEG) output: a label map on a DICOM series' own grid, as a SEG object.

What belongs here: turning a label map that already lies on the original grid of a DICOM series
(``[D, H, W]`` in the axis order ``medjax.read_volume`` gives that series, i.e. slices sorted by
position along the slice normal) into a DICOM Segmentation instance that references the series'
images frame by frame. Encoding is done by highdicom (the optional ``dicom_seg`` extra), which
copies the patient/study identity, the FrameOfReferenceUID and the per-frame source references.

Slice order: medjax sorts slices by ``dot(ImagePositionPatient, normal)``, not by file name or
InstanceNumber, so ``label[k]`` belongs to the k-th slice in *that* order. The source images are
put in the same order here (with the reader's own sorting code, so the two cannot drift apart),
and highdicom then takes each frame's position and referenced SOPInstanceUID from the image at
the same index. For one enhanced multi-frame source image, ``label[k]`` goes to the source frame
that the reader placed at ``k``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pydicom
from absl import logging

import medjax
from medjax import errors
from medjax.data import case_ids
from medjax.data.io import dicom, dicom_frames
from medjax.data.io import volume as volume_lib

INSTALL_HINT = "pip install 'medjax[dicom_seg]'"
# A label grid may differ from the series only by the rounding of DICOM decimal strings.
_POSITION_ATOL_MM = 0.02
_DIRECTION_ATOL = 1e-3
_SPACING_RTOL = 1e-2
# CodeString (CS) values are at most 16 upper-case characters.
_CONTENT_LABEL = "MEDJAX"
_warned_missing = False


def available() -> bool:
    """Whether highdicom (the ``dicom_seg`` extra) can be imported."""
    try:
        _highdicom()
    except errors.MedjaxError:
        return False
    return True


def _highdicom() -> Any:
    try:
        import highdicom
    except ImportError as e:
        raise errors.MedjaxError(
            f"DICOM SEG output needs highdicom, which is not installed ({e}): {INSTALL_HINT}"
        ) from e
    return highdicom


def is_dicom_source(path: str | os.PathLike | None) -> bool:
    """Whether a case's image ``path`` is DICOM: a folder, a ``.dcm`` file or an extension-less
    file (as ``medjax.read_volume`` decides)."""
    if not path:
        return False
    path = os.fspath(path)
    if os.path.isdir(path):
        return True
    from medjax.data import io as io_lib

    fmt = io_lib.format_of(path)
    return fmt == "dicom" or (fmt is None and "." not in os.path.basename(path))


def _series_files(
    source: str | os.PathLike | Sequence[str], series_uid: str | None
) -> tuple[list[str], str]:
    """The files of the chosen series and a label naming it for error messages."""
    if isinstance(source, str | os.PathLike):
        source = os.fspath(source)
        if not os.path.isdir(source):
            return [source], os.fspath(source)
        series = dicom.find_series(source)
        listing = ", ".join(f"{uid} ({len(v)} files)" for uid, v in sorted(series.items()))
        if series_uid is None:
            if len(series) != 1:
                raise errors.DataError(
                    f"{source}: holds {len(series)} DICOM series; pass series_uid= one of: "
                    f"{listing or 'none'}."
                )
            series_uid = next(iter(series))
        if series_uid not in series:
            raise errors.DataError(f"{source}: no DICOM series {series_uid}; found: {listing}.")
        return [os.fspath(p) for p in series[series_uid]], f"series {series_uid} in {source}"
    files = [os.fspath(p) for p in source]
    if not files:
        raise errors.DataError("DICOM SEG: no source files given.")
    return files, f"{os.path.dirname(files[0]) or '.'} ({len(files)} files)"


def _read_headers(files: Sequence[str]) -> dict[str, pydicom.Dataset]:
    headers = {}
    for path in files:
        try:
            # The pixels are not needed: highdicom references the images, it does not copy them.
            headers[path] = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as e:  # noqa: BLE001 - pydicom raises many types on bad bytes.
            raise errors.DataError(
                f"{path}: cannot read the DICOM header ({type(e).__name__}: {e})."
            ) from e
    return headers


def _sorted_frames(headers: Mapping[str, pydicom.Dataset], label: str) -> tuple[list, float]:
    """The source frames in the reader's order (along the slice normal) and the slice step."""
    # The reader's own helpers: the SEG must place label[k] exactly where read_volume put it.
    frames = [f for path, ds in headers.items() for f in dicom_frames.frames_of(path, ds)]
    dicom_frames.check_uniform(frames, label)
    _, _, normal = dicom_frames.axes(frames[0].orientation, label)
    if len(frames) == 1:
        return frames, 0.0
    return dicom_frames.sort_and_measure(frames, normal, label, spacing_rtol=0.05)


def _check_grid(vol: volume_lib.Volume, frames: list, step: float, label: str) -> None:
    """Refuses a label ``Volume`` whose geometry is not the series' grid (another series)."""
    row, col, normal = dicom_frames.axes(frames[0].orientation, label)
    expected_dir = np.stack([normal, col, row], axis=1)
    if vol.ndim_spatial != 3 or not np.allclose(vol.direction, expected_dir, atol=_DIRECTION_ATOL):
        raise errors.DataError(
            f"{label}: the label map's direction {np.round(vol.direction, 4).tolist()} is not "
            f"the series' {np.round(expected_dir, 4).tolist()} (columns: normal, column, row "
            "cosine); the prediction is not on this series' grid."
        )
    origin = np.asarray(vol.origin)
    if np.abs(origin - frames[0].position).max() > _POSITION_ATOL_MM:
        raise errors.DataError(
            f"{label}: the label map's origin {np.round(origin, 4).tolist()} is not the first "
            f"slice's ImagePositionPatient {frames[0].position.tolist()} ({frames[0].name}); "
            "the prediction is not on this series' grid."
        )
    expected = (step, *frames[0].pixel_spacing) if len(frames) > 1 else frames[0].pixel_spacing
    got = vol.spacing if len(frames) > 1 else vol.spacing[1:]
    if not np.allclose(got, expected, rtol=_SPACING_RTOL):
        raise errors.DataError(
            f"{label}: the label map's spacing {list(got)} mm is not the series' "
            f"{list(expected)} mm; the prediction is not on this series' grid."
        )


def write_dicom_seg(
    label_map: volume_lib.Volume | np.ndarray,
    source: str | os.PathLike | Sequence[str],
    path: str | os.PathLike,
    *,
    series_uid: str | None = None,
    num_classes: int | None = None,
    segment_labels: Sequence[str] | None = None,
    segment_codes: Mapping[int, tuple[Any, Any]] | None = None,
    model_name: str = "model",
    series_number: int = 1000,
    series_description: str | None = None,
) -> str:
    """Writes a label map on a DICOM series' grid as a BINARY DICOM Segmentation.

    Args:
      label_map: integer label map ``[D, H, W]`` (0 = background, ``k`` = class ``k``) in the
        axis order ``medjax.read_volume`` gives the series (``D`` sorted along the slice normal;
        ``H`` rows, ``W`` columns), or a ``Volume`` of it (e.g. from ``invert_prediction``),
        whose geometry is then also checked against the series.
      source: the series' folder (searched recursively), one file (single slice or enhanced
        multi-frame), or the list of its files.
      path: output file, conventionally ``<case>.seg.dcm``; written to a temporary name first
        and renamed, so a killed job leaves no half-written file under this name.
      series_uid: which series of a folder holding several.
      num_classes: classes including background; one segment is written for each of
        ``1..num_classes-1`` (default: ``1..label max``, at least one).
      segment_labels: one label per segment (default ``"class <k>"``).
      segment_codes: segment number -> ``(category, type)`` codes (``pydicom.sr.coding.Code``);
        default ``(Tissue, Tissue)`` from SNOMED CT (CID 7150 / 7151), since medjax does not
        know what a class means.
      model_name: named in the algorithm identification (``medjax <model_name>``) and as the
        manufacturer model name.
      series_number: SeriesNumber of the new SEG series.
      series_description: SeriesDescription (default ``"medjax <model_name> segmentation"``).

    Returns:
      The written path.

    Raises:
      MedjaxError: highdicom is not installed (names the extra to install).
      DataError: naming the series: the label map's shape is not ``(slices, Rows, Columns)``,
        its geometry (for a ``Volume``) is not the series' grid, its values are not integers in
        ``0..num_classes-1``, or the source cannot be read or is not one stackable series.
    """
    hd = _highdicom()
    from pydicom.sr.codedict import codes

    files, where = _series_files(source, series_uid)
    headers = _read_headers(files)
    uids = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in headers.values()})
    if len(uids) != 1:
        raise errors.DataError(f"{where}: the files belong to {len(uids)} series: {uids}.")
    label = where if where.startswith("series ") else f"series {uids[0]} in {where}"
    frames, step = _sorted_frames(headers, label)
    array = np.asarray(label_map.array if isinstance(label_map, volume_lib.Volume) else label_map)
    rows, cols = frames[0].shape
    if array.shape != (len(frames), rows, cols):
        raise errors.DataError(
            f"{label}: label map of shape {array.shape} does not fit the series' grid "
            f"{(len(frames), rows, cols)} (slices, Rows, Columns)."
        )
    if isinstance(label_map, volume_lib.Volume):
        _check_grid(label_map, frames, step, label)
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise errors.DataError(f"{label}: label map dtype {array.dtype} is not an integer type.")
    top = int(array.max()) if array.size else 0
    if array.size and int(array.min()) < 0:
        raise errors.DataError(f"{label}: label map has negative values ({int(array.min())}).")
    n_segments = max(num_classes - 1, 1) if num_classes else max(top, 1)
    if top > n_segments:
        raise errors.DataError(
            f"{label}: label map value {top} is not a class of {n_segments + 1} (num_classes)."
        )
    if segment_labels is not None and len(segment_labels) != n_segments:
        raise errors.DataError(
            f"{label}: {len(segment_labels)} segment_labels for {n_segments} segment(s)."
        )

    # Source images and frame-aligned pixels: label[k] belongs to frames[k].
    if all(f.index is None for f in frames):
        source_images = [headers[f.path] for f in frames]
        pixels = array
    elif len(headers) == 1:
        source_images = list(headers.values())
        pixels = np.zeros_like(array)
        pixels[[f.index for f in frames]] = array
    else:
        raise errors.DataError(
            f"{label}: several multi-frame files; a DICOM SEG references either single-frame "
            "images or one multi-frame image."
        )

    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"medjax {model_name}"[:64],
        family=codes.cid7162.ArtificialIntelligence,
        version=medjax.__version__,
        source="medjax",
    )
    descriptions = []
    for k in range(1, n_segments + 1):
        category, kind = (segment_codes or {}).get(k, (codes.SCT.Tissue, codes.SCT.Tissue))
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=k,
                segment_label=segment_labels[k - 1] if segment_labels else f"class {k}",
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    seg = hd.seg.Segmentation(
        source_images=source_images,
        # uint8/uint16 label-map style: highdicom splits it into one binary frame per segment
        # and slice, omitting empty ones.
        pixel_array=pixels.astype(np.uint8 if n_segments < 256 else np.uint16),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medjax",
        manufacturer_model_name=str(model_name)[:64],
        software_versions=medjax.__version__,
        device_serial_number="0",
        content_label=_CONTENT_LABEL,
        content_description=f"medjax {model_name} prediction"[:64],
        series_description=(series_description or f"medjax {model_name} segmentation")[:64],
    )
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        seg.save_as(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_case_seg(
    volume: volume_lib.Volume,
    entry: Mapping[str, Any],
    out_dir: str,
    *,
    model_name: str,
    num_classes: int | None,
) -> str | None:
    """Writes ``<out_dir>/<id>.seg.dcm`` for a store case whose image is a DICOM series.

    For ``SegmentationTask.write_outputs``: ``volume`` is the case's prediction on its original
    grid (``invert_prediction``), ``entry`` its store manifest entry. Cases that are not DICOM
    are left alone. A case whose SEG cannot be written (e.g. its source files have moved) is
    logged and recorded with its reason in ``<out_dir>/dicom_seg_skipped.txt``, so one bad case
    does not stop the others.

    Without highdicom the SEG is not written (one warning per process naming the extra): the
    NIfTI prediction beside it is the primary output.

    Returns:
      The written path, or None (not DICOM, highdicom missing, or skipped).
    """
    sources = entry.get("source", {}).get("image") or [entry["props"].get("source")]
    if len(sources) != 1 or not is_dicom_source(sources[0]):
        return None
    source = sources[0]
    if not available():
        global _warned_missing
        if not _warned_missing:
            logging.warning(
                "DICOM cases get no DICOM SEG: highdicom is missing (%s).", INSTALL_HINT
            )
            _warned_missing = True
        return None
    # The dicom_series crawler names a case by its SeriesInstanceUID; a folder that holds one
    # series needs no uid (and with several and no match, write_dicom_seg names them all).
    # The store id is a safe file name (case_ids.safe_case_id); the uid is its source id.
    path = case_ids.ensure_inside(out_dir, os.path.join(out_dir, f"{entry['id']}.seg.dcm"))
    uid = case_ids.source_id(entry)
    try:
        files: str | list[str] = source
        if os.path.isdir(source):
            # Scan once and hand over the files (write_dicom_seg would scan the folder again).
            series = dicom.find_series(source)
            if uid in series:
                files = series[uid]
            elif len(series) == 1:
                files = next(iter(series.values()))
        return write_dicom_seg(
            volume,
            files,
            path,
            num_classes=num_classes,
            model_name=model_name,
        )
    except errors.DataError as e:
        logging.warning("DICOM SEG of case %s skipped: %s", entry["id"], e)
        with open(os.path.join(out_dir, "dicom_seg_skipped.txt"), "a") as f:
            f.write(f"{entry['id']}\t{e}\n")
        return None
