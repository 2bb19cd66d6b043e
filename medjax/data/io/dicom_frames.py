"""DICOM frames and their geometry: one 2D image per classic file or per multi-frame frame,
checked for one orientation and pixel grid, sorted along the slice normal, with the slice step
measured from the positions (gaps and duplicates refused). ``dicom.py`` stacks them into a
``Volume``; ``dicom_seg.py`` maps SEG frames onto a series with the same rules.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pydicom

from medjax import errors

# Orientation cosines of one series may differ by rounding only; 1e-3 is ~0.06 degrees, i.e.
# ~0.3 mm at the edge of a 300 mm field of view.
_ORIENTATION_ATOL = 1e-3
# Slices closer than this along the normal are the same slice written twice.
_DUPLICATE_MM = 0.01
# Floor of every position tolerance: IPP strings are often rounded to 0.01 mm.
_POSITION_ATOL_MM = 0.02
# A step this many times the median step means slices are missing.
_GAP_FACTOR = 1.5


@dataclasses.dataclass(frozen=True)
class Frame:
    """One 2D image: a classic single-frame file, or one frame of a multi-frame file."""

    path: str
    index: int | None  # frame index inside a multi-frame file; None for a single-frame file
    position: np.ndarray  # float64[3] IPP, LPS mm
    orientation: np.ndarray  # float64[6] IOP
    pixel_spacing: tuple[float, float]  # (row step, column step) mm
    shape: tuple[int, int]  # (Rows, Columns)
    slope: float
    intercept: float
    has_rescale: bool

    @property
    def name(self) -> str:
        return self.path if self.index is None else f"{self.path} [frame {self.index}]"


# ---------------------------------------------------------------------------------------------
# Per-frame geometry from headers
# ---------------------------------------------------------------------------------------------


def group_value(ds: pydicom.Dataset, frame: int | None, sequence: str, keyword: str) -> Any:
    """A functional-group attribute: per-frame group, then shared group, then top level."""
    groups = []
    if frame is not None and "PerFrameFunctionalGroupsSequence" in ds:
        groups.append(ds.PerFrameFunctionalGroupsSequence[frame])
    if "SharedFunctionalGroupsSequence" in ds and len(ds.SharedFunctionalGroupsSequence):
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    for group in groups:
        items = group.get(sequence)
        if items and keyword in items[0]:
            return items[0].get(keyword)
    return ds.get(keyword)


def frames_of(path: str, ds: pydicom.Dataset) -> list[Frame]:
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise errors.DataError(
            f"{path}: {ds.get('PhotometricInterpretation')} with {ds.SamplesPerPixel} samples "
            "per pixel; the volume reader takes grayscale images only."
        )
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    multi = n_frames > 1 or "PerFrameFunctionalGroupsSequence" in ds
    frames = []
    for index in range(n_frames) if multi else [None]:

        def value(sequence: str, keyword: str, index: int | None = index) -> Any:
            return group_value(ds, index, sequence, keyword)

        ipp = value("PlanePositionSequence", "ImagePositionPatient")
        iop = value("PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = value("PixelMeasuresSequence", "PixelSpacing")
        where = path if index is None else f"{path} [frame {index}]"
        for keyword, found, length in [
            ("ImagePositionPatient", ipp, 3),
            ("ImageOrientationPatient", iop, 6),
            ("PixelSpacing", spacing, 2),
        ]:
            if found is None or len(found) != length:
                raise errors.DataError(
                    f"{where}: {keyword} is missing or malformed ({found!r}); without it the "
                    "slice cannot be placed in the patient."
                )
        slope = value("PixelValueTransformationSequence", "RescaleSlope")
        intercept = value("PixelValueTransformationSequence", "RescaleIntercept")
        frames.append(
            Frame(
                path=path,
                index=index,
                position=np.array([float(v) for v in ipp]),
                orientation=np.array([float(v) for v in iop]),
                pixel_spacing=(float(spacing[0]), float(spacing[1])),
                shape=(int(ds.Rows), int(ds.Columns)),
                slope=1.0 if slope is None else float(slope),
                intercept=0.0 if intercept is None else float(intercept),
                has_rescale=slope is not None or intercept is not None,
            )
        )
    return frames


def axes(orientation: np.ndarray, label: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit (row cosine, column cosine, normal) from an IOP; refuses degenerate ones."""
    row, col = orientation[:3], orientation[3:]
    norms = np.linalg.norm(row), np.linalg.norm(col)
    if min(norms) < 0.5 or abs(float(row @ col)) > 10 * _ORIENTATION_ATOL * norms[0] * norms[1]:
        raise errors.DataError(
            f"{label}: ImageOrientationPatient {orientation.tolist()} is not two orthogonal "
            "unit vectors."
        )
    row, col = row / norms[0], col / norms[1]
    normal = np.cross(row, col)
    return row, col, normal / np.linalg.norm(normal)


def check_uniform(frames: list[Frame], label: str) -> None:
    """Refuses a series mixing orientations, image sizes or pixel spacings."""
    first = frames[0]
    for attr, what in [("shape", "Rows/Columns"), ("pixel_spacing", "PixelSpacing")]:
        values: dict[tuple, list[str]] = {}
        for f in frames:
            values.setdefault(tuple(np.round(getattr(f, attr), 4)), []).append(f.name)
        if len(values) > 1:
            listing = "; ".join(f"{v}: {len(n)} image(s), e.g. {n[0]}" for v, n in values.items())
            raise errors.DataError(f"{label}: mixed {what} in one series ({listing}).")
    odd = [f for f in frames if np.abs(f.orientation - first.orientation).max() > _ORIENTATION_ATOL]
    if odd:
        distinct = {tuple(np.round(f.orientation, 3)) for f in frames}
        raise errors.DataError(
            f"{label}: {len(distinct)} different ImageOrientationPatient values in one series "
            f"(e.g. {first.name}: {np.round(first.orientation, 4).tolist()} vs {odd[0].name}: "
            f"{np.round(odd[0].orientation, 4).tolist()}); non-parallel slices (localizers, "
            "radial planes) cannot be stacked into one volume. Select the images of one "
            "orientation and read them as their own series."
        )


def sort_and_measure(
    frames: list[Frame], normal: np.ndarray, label: str, spacing_rtol: float
) -> tuple[list[Frame], float]:
    """Sorts frames along ``normal`` and returns them with the slice step (mm).

    Raises DataError for duplicate positions, missing slices, uneven steps and positions that do
    not lie on one line along the normal (e.g. gantry tilt).
    """
    proj = np.array([f.position @ normal for f in frames])
    order = np.argsort(proj, kind="stable")
    frames = [frames[i] for i in order]
    proj = proj[order]
    steps = np.diff(proj)
    for k in np.flatnonzero(steps < _DUPLICATE_MM):
        raise errors.DataError(
            f"{label}: duplicate slice position {proj[k]:.4f} mm along the normal in "
            f"{frames[k].name} and {frames[k + 1].name} (a repeated file, or several "
            "acquisitions/time points in one series; pick one)."
        )
    median = float(np.median(steps))
    for k in np.flatnonzero(steps > _GAP_FACTOR * median):
        raise errors.DataError(
            f"{label}: missing slice(s) between positions {proj[k]:.4f} and {proj[k + 1]:.4f} mm "
            f"along the normal (IPP {frames[k].position.tolist()} in {frames[k].name} and "
            f"{frames[k + 1].position.tolist()} in {frames[k + 1].name}): step "
            f"{steps[k]:.4f} mm vs median {median:.4f} mm, about "
            f"{round(steps[k] / median) - 1} slice(s) missing."
        )
    # A least-squares-free estimate: the first-to-last distance spreads rounding over all steps.
    step = float((proj[-1] - proj[0]) / (len(proj) - 1))
    residual = np.abs(proj - (proj[0] + step * np.arange(len(proj))))
    tol = max(spacing_rtol * step, _POSITION_ATOL_MM)
    if residual.max() > tol:
        k = int(residual.argmax())
        raise errors.DataError(
            f"{label}: uneven slice spacing: {frames[k].name} lies {residual[k]:.4f} mm off the "
            f"regular grid of step {step:.4f} mm (tolerance {tol:.4f} mm; steps range "
            f"{steps.min():.4f}..{steps.max():.4f} mm). Raise spacing_rtol to accept it."
        )
    # Positions must move along the normal only; an in-plane drift (gantry tilt) makes the stack
    # a sheared grid that a direction matrix cannot describe.
    offsets = np.stack([f.position for f in frames]) - frames[0].position
    in_plane = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1)
    tol = max(spacing_rtol * min(frames[0].pixel_spacing), _POSITION_ATOL_MM)
    if in_plane.max() > tol:
        k = int(in_plane.argmax())
        raise errors.DataError(
            f"{label}: slice positions do not lie along the slice normal: {frames[k].name} is "
            f"shifted {in_plane[k]:.4f} mm in-plane from {frames[0].name} (gantry tilt or a "
            f"sheared acquisition; tolerance {tol:.4f} mm). Resample it before use."
        )
    return frames, step
