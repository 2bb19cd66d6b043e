"""Synthetic LUNA16-format data: CT-like chest phantoms written as ``.mhd/.raw`` plus LUNA's CSVs.

The default LUNA configs train on this, so a first run needs no download and still exercises the
real readers: MetaImage files in ``subset<k>/`` folders with a non-identity direction, anisotropic
spacing and a non-zero origin, and ``annotations.csv``, ``candidates.csv``,
``annotations_excluded.csv`` and ``annotations_with_malignancy.csv`` in LUNA's column layout, with
coordinates as ITK physical points (LPS millimetres, ``coordX, coordY, coordZ = x, y, z``).

What a scan holds (Hounsfield units): air (-1000) outside an elliptic body of soft tissue (~40),
a bright spine, two lungs (~-850 with smooth texture), vessels (bright tapering tubes: the hard
negatives), nodules (3-30 mm, 0-100 HU; malignant ones are larger on average, lobulated and
spiculated, some benign ones calcified), a few tiny "excluded" findings, and Gaussian noise.
Malignancy is thus visible in the image, so a malignancy classifier can learn it.

World coordinates of every finding are computed with SimpleITK's own index -> physical point
transform, not with ``medjax.data.luna.geometry``, so the CSVs are an independent ground truth.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib
import shutil

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from medjax import errors

# LIDC/LUNA series uids all share this root.
SERIES_PREFIX = "1.3.6.1.4.1.14519.5.2.1.6279.6001."
MARKER_FILE = "medjax_synthetic.json"

# Row-major ITK direction matrices (column c is the LPS vector of ITK index axis c = i, j, k).
# All are non-identity: flipped axes as in scans stored feet-first or right-to-left, and one
# in-plane axis permutation, so readers that ignore the direction are caught.
_DIRECTIONS = (
    ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0)),
    ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0)),
    ((0.0, -1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
)
_Z_SPACINGS_MM = (1.25, 2.0, 2.5)
_EDGE_MM = 0.8  # Width of the partial-volume ramp at object borders.


@dataclasses.dataclass
class _Finding:
    center: np.ndarray  # float64[3] continuous index, array axis order (D, H, W).
    diameter_mm: float
    malignant: bool
    excluded: bool


def _add_blob(
    coverage: np.ndarray,
    spacing: np.ndarray,
    center: np.ndarray,
    radius_mm: float,
    shape_fn=None,
) -> None:
    """Max-composites a soft ball (or a star-shaped body via ``shape_fn``) into ``coverage``.

    ``shape_fn(unit_dirs float[..., 3]) -> float[...]`` scales the radius per direction (mm offsets
    in array axis order), which gives lobulated or ellipsoidal nodules.
    """
    extent = 1.5 * radius_mm + _EDGE_MM
    lo = np.maximum(np.floor(center - extent / spacing).astype(int), 0)
    hi = np.minimum(np.ceil(center + extent / spacing).astype(int) + 1, coverage.shape)
    if np.any(hi <= lo):
        return
    grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
    offsets = np.stack([(g - c) * s for g, c, s in zip(grids, center, spacing, strict=True)], -1)
    dist = np.linalg.norm(offsets, axis=-1)
    radius = radius_mm
    if shape_fn is not None:
        radius = radius_mm * shape_fn(offsets / np.maximum(dist, 1e-6)[..., None])
    blob = np.clip((radius - dist) / _EDGE_MM + 0.5, 0.0, 1.0)
    region = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    np.maximum(coverage[region], blob, out=coverage[region])


def _ellipsoid(shape, spacing, center, semi_axes_mm) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij", sparse=True)
    terms = zip(grids, center, spacing, semi_axes_mm, strict=True)
    r2 = sum(((g - c) * s / a) ** 2 for g, c, s, a in terms)
    return r2 <= 1.0


def _nodule_shape_fn(rng: np.random.Generator, malignant: bool):
    """Radius scale per direction: lobulated for malignant, near-ellipsoidal for benign."""
    axes = rng.uniform(0.85, 1.15, size=3)
    n_lobes = rng.integers(4, 7) if malignant else 0
    lobe_dirs = rng.normal(size=(n_lobes, 3))
    lobe_dirs /= np.linalg.norm(lobe_dirs, axis=-1, keepdims=True)
    lobe_amp = rng.uniform(0.15, 0.35, size=n_lobes)

    def shape_fn(unit: np.ndarray) -> np.ndarray:
        scale = 1.0 / np.sqrt(np.sum((unit / axes) ** 2, axis=-1))
        for d, a in zip(lobe_dirs, lobe_amp, strict=True):
            scale = scale * (1.0 + a * np.exp(-(1.0 - unit @ d) / 0.15))
        return scale

    return shape_fn


def _draw_tube(coverage, spacing, points: np.ndarray, radii: np.ndarray) -> None:
    """A tube as a union of balls along a polyline sampled densely (step < radius)."""
    for p, r in zip(points, radii, strict=True):
        _add_blob(coverage, spacing, p, float(r))


def _make_scan(rng: np.random.Generator, shape: tuple[int, int, int], nodules_range):
    """One phantom. Returns ``(hu int16[D,H,W], spacing_dhw, findings, vessel_points)``."""
    d, h, w = shape
    spacing = np.array(
        [rng.choice(_Z_SPACINGS_MM), *([rng.uniform(0.65, 0.8)] * 2)], dtype=np.float64
    )
    image = np.full(shape, -1000.0, dtype=np.float32)

    body = _ellipsoid(
        (1, h, w), spacing, (0, h / 2, w / 2), (1e9, 0.45 * h * spacing[1], 0.47 * w * spacing[2])
    )
    body = np.broadcast_to(body, shape)
    tissue = 40.0 + 10.0 * ndimage.gaussian_filter(rng.normal(size=shape), 2.0) * 4.0
    image = np.where(body, tissue, image).astype(np.float32)
    spine_axes = (1e9, 0.07 * h * spacing[1], 0.06 * w * spacing[2])
    spine = _ellipsoid((1, h, w), spacing, (0, 0.85 * h, w / 2), spine_axes)
    image = np.where(np.broadcast_to(spine, shape), 450.0, image)

    lung = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        lung |= _ellipsoid(
            shape,
            spacing,
            (d / 2, 0.47 * h, w / 2 + side * 0.22 * w),
            (0.42 * d * spacing[0], 0.30 * h * spacing[1], 0.17 * w * spacing[2]),
        )
    texture = ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
    texture *= 30.0 / max(float(texture.std()), 1e-6)
    image = np.where(lung, -850.0 + texture, image)

    lung_idx = np.argwhere(lung)
    # Vessels: tapering random-walk tubes inside the lungs.
    vessel_cov = np.zeros(shape, dtype=np.float32)
    vessel_points = []
    for _ in range(int(rng.integers(10, 15))):
        p = lung_idx[rng.integers(len(lung_idx))].astype(np.float64)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        n_steps = int(rng.integers(20, 50))
        r0 = rng.uniform(1.0, 2.2)
        points, radii = [], []
        for step in range(n_steps):
            ip = np.round(p).astype(int)
            if np.any(ip < 0) or np.any(ip >= shape) or not lung[tuple(ip)]:
                break
            points.append(p.copy())
            radii.append(max(r0 * (1.0 - 0.6 * step / n_steps), 0.5))
            direction += 0.25 * rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            p = p + 1.2 * direction / spacing  # 1.2 mm steps: denser than the thinnest radius.
        if points:
            _draw_tube(vessel_cov, spacing, np.array(points), np.array(radii))
            vessel_points.extend(points)
    vessel_cov *= lung
    image = image + vessel_cov * (40.0 - image)

    # Nodules, placed inside the lungs away from each other.
    depth_mm = ndimage.distance_transform_edt(lung, sampling=spacing)
    findings: list[_Finding] = []
    n_nodules = int(rng.integers(nodules_range[0], nodules_range[1] + 1))
    n_excluded = int(rng.integers(0, 2))
    for k in range(n_nodules + n_excluded):
        excluded = k >= n_nodules
        if excluded:
            diameter = float(rng.uniform(1.5, 2.8))
        else:
            # Log-uniform in [3, 30] mm: many small nodules, few large ones, as in LIDC.
            diameter = float(np.exp(rng.uniform(np.log(3.0), np.log(30.0))))
        radius = diameter / 2
        ok = depth_mm >= min(0.6 * radius + 1.0, float(depth_mm.max()) * 0.8)
        for f in findings:
            grid = np.argwhere(ok)
            dist = np.linalg.norm((grid - f.center) * spacing, axis=-1)
            ok[tuple(grid[dist < radius + f.diameter_mm / 2 + 4.0].T)] = False
        choices = np.argwhere(ok)
        if len(choices) == 0:
            continue
        center = choices[rng.integers(len(choices))] + rng.uniform(-0.4, 0.4, size=3)
        malignant = (not excluded) and bool(rng.random() < 1 / (1 + np.exp(-(diameter - 12) / 2.5)))
        findings.append(_Finding(center, diameter, malignant, excluded))

        cov = np.zeros(shape, dtype=np.float32)
        _add_blob(cov, spacing, center, radius, _nodule_shape_fn(rng, malignant))
        if malignant:
            # Spicules: thin tapering strands radiating from the surface.
            for _ in range(int(rng.integers(5, 10))):
                u = rng.normal(size=3)
                u /= np.linalg.norm(u)
                length = radius * rng.uniform(0.6, 1.2)
                ts = np.arange(0.7 * radius, radius + length, 0.5)
                pts = center + np.outer(ts, u) / spacing
                _draw_tube(cov, spacing, pts, np.linspace(0.9, 0.4, len(ts)))
        value = float(rng.uniform(-200.0, -100.0)) if excluded else float(rng.uniform(0.0, 100.0))
        image = image + cov * (value - image)
        if not excluded and not malignant and rng.random() < 0.3:
            core = np.zeros(shape, dtype=np.float32)
            _add_blob(core, spacing, center, 0.4 * radius)
            image = image + core * (float(rng.uniform(250.0, 450.0)) - image)

    image += rng.normal(0.0, 20.0, size=shape).astype(np.float32)
    hu = np.clip(np.round(image), -1024, 3071).astype(np.int16)
    return hu, spacing, findings, np.array(vessel_points).reshape(-1, 3), lung


def _negative_points(rng, shape, spacing, findings, vessel_points, lung, count) -> np.ndarray:
    """Candidate-like negatives: on vessels, in the parenchyma, anywhere in the scan."""
    pools = [
        (0.45, vessel_points),
        (0.30, np.argwhere(lung).astype(np.float64)),
        (0.25, None),
    ]
    out = []
    for fraction, pool in pools:
        n = int(round(fraction * count))
        tries = 0
        while n > 0 and tries < 50 * count:
            tries += 1
            if pool is None or len(pool) == 0:
                p = rng.uniform(0, np.array(shape) - 1)
            else:
                p = pool[rng.integers(len(pool))] + rng.uniform(-0.5, 0.5, size=3)
            # Keep negatives clear of every finding so the label is unambiguous.
            if all(
                np.linalg.norm((p - f.center) * spacing) > f.diameter_mm / 2 + 3.0 for f in findings
            ):
                out.append(p)
                n -= 1
    return np.array(out).reshape(-1, 3)


def _fmt(v: float) -> str:
    return f"{v:.6f}"


def make_luna_dataset(
    root: str | os.PathLike,
    *,
    num_scans: int = 12,
    num_subsets: int = 4,
    seed: int = 0,
    shape: tuple[int, int, int] = (64, 128, 128),
    nodules_per_scan: tuple[int, int] = (3, 6),
    negatives_per_scan: int = 40,
) -> pathlib.Path:
    """Writes a synthetic LUNA16-format dataset to ``root`` (or reuses one made with the same args).

    Layout (as LUNA16): ``root/subset<k>/<seriesuid>.mhd`` + ``.raw`` (int16 HU; scan ``i`` goes to
    subset ``i % num_subsets``), ``annotations.csv`` (``seriesuid,coordX,coordY,coordZ,
    diameter_mm``), ``candidates.csv`` (``...,class``: 1-2 jittered candidates per nodule plus
    ``negatives_per_scan`` negatives, about half of them on vessels, and one per excluded
    finding), ``annotations_excluded.csv`` (findings below 3 mm; a third with diameter -1 as in
    LUNA) and ``annotations_with_malignancy.csv`` (adds ``malignancy`` True/False).

    The data are generated in a temporary sibling folder and renamed into place, so an
    interrupted run never leaves a half-written dataset that looks whole.

    Args:
      root: destination folder. If it exists, it must hold a dataset made with the same arguments.
      num_scans: number of CT scans.
      num_subsets: number of ``subset<k>`` folders (LUNA16 has 10).
      seed: everything is a deterministic function of the arguments.
      shape: scan array shape ``(D, H, W)``; spacing is ~0.7 mm in-plane and 1.25-2.5 mm in D.
      nodules_per_scan: inclusive range of the number of nodules per scan.
      negatives_per_scan: negative candidates per scan.

    Returns:
      ``root`` as a ``pathlib.Path``.

    Raises:
      DataError: ``root`` exists but holds something else.
    """
    root = pathlib.Path(root)
    params = {
        "num_scans": num_scans,
        "num_subsets": num_subsets,
        "seed": seed,
        "shape": list(shape),
        "nodules_per_scan": list(nodules_per_scan),
        "negatives_per_scan": negatives_per_scan,
    }
    if root.exists():
        marker = root / MARKER_FILE
        if marker.exists() and json.loads(marker.read_text()) == params:
            return root
        raise errors.DataError(
            f"{root} exists but is not a synthetic LUNA dataset made with {params}; "
            "remove it or choose another folder."
        )
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    annotations, malignancy, excluded, candidates = [], [], [], []
    for scan in range(num_scans):
        rng = np.random.default_rng([seed, scan])
        uid = f"{SERIES_PREFIX}{rng.integers(10**11, 10**12)}{seed}{scan:04d}"
        hu, spacing, findings, vessels, lung = _make_scan(rng, tuple(shape), nodules_per_scan)
        direction = np.array(_DIRECTIONS[scan % len(_DIRECTIONS)])
        image = sitk.GetImageFromArray(hu)  # numpy [D, H, W] -> ITK index (i, j, k) = (W, H, D).
        image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
        origin = rng.uniform([-190, -210, -360], [-150, -160, -300])
        image.SetOrigin(tuple(float(o) for o in origin))
        image.SetDirection(tuple(float(v) for v in direction.ravel()))
        subset_dir = tmp / f"subset{scan % num_subsets}"
        subset_dir.mkdir(exist_ok=True)
        sitk.WriteImage(image, str(subset_dir / f"{uid}.mhd"), useCompression=False)

        def world(index_dhw: np.ndarray, image=image) -> list[str]:
            xyz = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in index_dhw[::-1]])
            return [_fmt(v) for v in xyz]

        rows = []
        for f in findings:
            if f.excluded:
                diameter = -1.0 if rng.random() < 1 / 3 else f.diameter_mm
                excluded.append([uid, *world(f.center), _fmt(diameter)])
                rows.append([uid, *world(f.center), "0"])
                continue
            annotations.append([uid, *world(f.center), _fmt(f.diameter_mm)])
            malignancy.append([uid, *world(f.center), _fmt(f.diameter_mm), str(f.malignant)])
            for _ in range(1 + int(rng.random() < 0.5)):
                # Jitter within a fifth of the radius: detectors rarely hit the exact centre.
                jitter = rng.normal(size=3)
                jitter *= rng.uniform(0, 0.2 * f.diameter_mm / 2) / np.linalg.norm(jitter)
                rows.append([uid, *world(f.center + jitter / spacing), "1"])
        for p in _negative_points(
            rng, hu.shape, spacing, findings, vessels, lung, negatives_per_scan
        ):
            rows.append([uid, *world(p), "0"])
        candidates.extend(rows[i] for i in rng.permutation(len(rows)))

    header = ["seriesuid", "coordX", "coordY", "coordZ"]
    for name, cols, rows in (
        ("annotations.csv", [*header, "diameter_mm"], annotations),
        ("annotations_excluded.csv", [*header, "diameter_mm"], excluded),
        ("annotations_with_malignancy.csv", [*header, "diameter_mm", "malignancy"], malignancy),
        ("candidates.csv", [*header, "class"], candidates),
    ):
        with open(tmp / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(cols)
            writer.writerows(rows)
    (tmp / MARKER_FILE).write_text(json.dumps(params))
    root.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, root)
    return root
