"""New, unlabelled inputs: a file or a folder -> one case per image or DICOM series.

A folder is walked recursively. Files with an image extension (NIfTI, MetaImage, NRRD, PNG,
TIFF, ...) are one case each (a ``.raw``/``.zraw`` beside its ``.mhd`` is its data, not a case);
every other file is offered to the DICOM header scan, which groups image files by
SeriesInstanceUID (one case per series). Non-image DICOM objects (RTSTRUCT, SR, SEG,
presentation states, DICOMDIR) are left out and listed as skipped with their reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

from medjax.data import case_ids
from medjax.data import io as io_lib

# Modalities that never hold an image to segment, even when a file carries Rows (SEG does).
_NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO"}
_SIDE_CAR = (".raw", ".zraw", ".json", ".txt", ".csv", ".md")


@dataclasses.dataclass
class InputCase:
    """One case to predict.

    Attributes:
      id: file-name-safe case id (output names).
      source: the image file, or the folder of a DICOM series.
      fmt: reader family: ``nifti``, ``itk``, ``image2d`` or ``dicom``.
      files: a DICOM series' files (empty otherwise).
      series_uid: the DICOM SeriesInstanceUID (or None).
      problem: why the case cannot be predicted, found while listing (or None).
    """

    id: str
    source: str
    fmt: str
    files: list[str] = dataclasses.field(default_factory=list)
    series_uid: str | None = None
    problem: str | None = None

    def suffix(self) -> str:
        """The output extension of this case's format family."""
        if self.fmt == "image2d":
            return ".png"
        if self.fmt == "itk":
            lower = self.source.lower()
            return ".nrrd" if lower.endswith((".nrrd", ".nhdr")) else ".mha"
        return ".nii.gz"


def _dicom_header(path: str) -> tuple[Any | None, str]:
    """Header (pixels left on disk) of a DICOM image file, or ``(None, reason)``."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except pydicom.errors.InvalidDicomError:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - garbage bytes: not DICOM
            return None, "not an image file medjax reads (unknown extension, not DICOM)"
        if "SeriesInstanceUID" not in ds or "Rows" not in ds:
            return None, "not an image file medjax reads (unknown extension, not DICOM)"
    except Exception as e:  # noqa: BLE001 - pydicom raises many types on bad bytes
        return None, f"unreadable DICOM ({type(e).__name__}: {e})"
    modality = str(ds.get("Modality", ""))
    if modality in _NON_IMAGE_MODALITIES:
        return None, f"DICOM {modality} object, not an image series"
    if "SeriesInstanceUID" not in ds or "Rows" not in ds:
        return None, "DICOM without an image (no SeriesInstanceUID/Rows, e.g. DICOMDIR)"
    return ds, ""


def _unique(cases: list[InputCase]) -> list[InputCase]:
    """Makes ids unique (two ``a.nii.gz`` in different folders) by a hash of the source."""
    seen: dict[str, int] = {}
    for c in cases:
        seen[c.id] = seen.get(c.id, 0) + 1
    for c in cases:
        if seen[c.id] > 1:
            c.id = f"{c.id}-{hashlib.sha1(c.source.encode()).hexdigest()[:6]}"
    return cases


def find_cases(path: str) -> tuple[list[InputCase], list[tuple[str, str]]]:
    """The cases under ``path`` (a file or a folder), in a stable order.

    Returns:
      ``(cases, ignored)``: ``ignored`` lists ``(file, reason)`` for files that are not an
      image to predict (non-image DICOM, unknown files); they are reported, not predicted.

    Raises:
      DataError: ``path`` does not exist.
    """
    from medjax import errors

    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise errors.DataError(f"predict.input={path!r}: no such file or folder.")
    if os.path.isfile(path):
        files, root = [path], os.path.dirname(path)
    else:
        root, files = path, []
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            files += [os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
    cases: list[InputCase] = []
    ignored: list[tuple[str, str]] = []
    series: dict[str, list[tuple[str, Any]]] = {}
    for f in files:
        fmt = io_lib.format_of(f)
        if fmt in ("nifti", "itk", "image2d"):
            cases.append(InputCase(case_ids.safe_case_id(io_lib.strip_extension(f)), f, fmt))
        elif f.lower().endswith(_SIDE_CAR):
            continue
        else:
            ds, reason = _dicom_header(f)
            if ds is None:
                ignored.append((f, reason))
            else:
                series.setdefault(str(ds.SeriesInstanceUID), []).append((f, ds))
    folders: dict[str, int] = {}
    for members in series.values():
        folder = os.path.commonpath([os.path.dirname(f) for f, _ in members])
        folders[folder] = folders.get(folder, 0) + 1
    for uid, members in sorted(series.items(), key=lambda kv: kv[1][0][0]):
        paths = sorted(f for f, _ in members)
        folder = os.path.commonpath([os.path.dirname(f) for f in paths])
        name = os.path.relpath(folder, root) if folder != root else os.path.basename(folder)
        name = name.replace(os.sep, "_")
        if folders[folder] > 1:  # several series in one folder: tell them apart
            number = members[0][1].get("SeriesNumber")
            name += f"_series{number}" if number is not None else f"_{uid[-8:]}"
        source = paths[0] if len(paths) == 1 else folder
        cases.append(InputCase(case_ids.safe_case_id(name), source, "dicom", paths, uid))
    return _unique(cases), ignored
