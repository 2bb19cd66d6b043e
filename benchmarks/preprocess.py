"""Preprocessing throughput (DICOM series and NIfTI through ``build_store``) and patch reads.

    python benchmarks/preprocess.py [--shape=64,256,256] [--cases=3] \
        [--volumes=32,96,96:96,256,256:160,384,384]

1. ``--cases`` synthetic CT volumes (int16 HU, ``D x H x W``) are written as real files into a
   temporary folder: one DICOM series per volume (one pydicom file per slice, explicit VR little
   endian) and one ``.nii.gz`` per volume (``medjax.data.io.nifti.write_nifti``). Each format is
   crawled (DICOM: the ``dicom_series`` crawler) and preprocessed by
   ``medjax.data.store.build_store`` in this process (``workers=0``) into a fresh store, with
   three specs: ``normalize`` (CT window only) and ``resample`` (also to 1.5 mm isotropic,
   cubic), both without the dataset fingerprint (``fingerprint=False``: the reading and
   preprocessing path alone, comparable across versions), and ``auto`` (``"auto"`` target
   spacing and CT normalisation: the fingerprint pass reads every case once more, then the
   cases are preprocessed; all cases share one spacing, so nothing is resampled).
   Volumes/s and MB/s of input voxels (int16) are reported, best of ``--repeats``.
2. Random patch reads (``medjax.data.transforms.sample_patch``, patch ``--patch``) from stored
   volumes of several sizes through ``StoreSource`` (memory-mapped ``.npy``): a read touches
   only the patch's bytes, so reads/s should not grow with the file (warm page cache; the first
   pass over a file is not timed). A volume that fits in the CPU's caches (the 1 MB one) reads
   faster than any that does not: that is cache, not I/O.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import run_all  # noqa: E402

SPECS = {
    "normalize": {"normalization": {"name": "ct", "window": [-1000.0, 1000.0]}},
    "resample": {
        "normalization": {"name": "ct", "window": [-1000.0, 1000.0]},
        "target_spacing_mm": [1.5, 1.5, 1.5],
    },
    "auto": {"target_spacing_mm": "auto", "normalization": {"name": "auto"}, "modality": "CT"},
}
SPACING_MM = (2.5, 0.8, 0.8)  # (D, H, W): a typical thick-slice abdominal CT


def synthetic_ct(shape: Sequence[int], seed: int) -> np.ndarray:
    """``int16[D, H, W]`` HU: air around a water ellipsoid with bone-bright blobs and noise."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape), indexing="ij")
    body = sum(g * g for g in grids) < 0.8
    hu = np.where(body, 40.0, -1000.0).astype(np.float32)
    hu += 30.0 * rng.standard_normal(shape, dtype=np.float32)
    for _ in range(4):
        c = rng.uniform(-0.5, 0.5, 3)
        hu[sum((g - ci) ** 2 for g, ci in zip(grids, c, strict=True)) < 0.01] = 900.0
    return hu.astype(np.int16)


def write_dicom_series(folder: str, hu: np.ndarray, spacing_mm: Sequence[float]) -> None:
    """Writes ``hu [D, H, W]`` as one CT file per slice (axial, LPS, rescale -1024)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    os.makedirs(folder, exist_ok=True)
    series_uid, study_uid = generate_uid(), generate_uid()
    stored = (hu.astype(np.int32) + 1024).astype("<i2")  # RescaleIntercept -1024, as scanners do
    for k, pixels in enumerate(stored):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = os.path.join(folder, f"IM{k:04d}.dcm")
        ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.PatientID = "BENCH"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-200.0, -200.0, float(k * spacing_mm[0])]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(spacing_mm[1]), float(spacing_mm[2])]
        ds.SliceThickness = float(spacing_mm[0])
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = pixels.tobytes()
        ds.save_as(path, enforce_file_format=True)


def write_nifti(path: str, hu: np.ndarray, spacing_mm: Sequence[float]) -> None:
    """Writes ``hu [D, H, W]`` as NIfTI with an LPS-axial geometry (medjax's writer)."""
    from medjax.data.io import nifti, volume

    direction = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    nifti.write_nifti(volume.Volume(hu, spacing_mm, (-200.0, -200.0, 0.0), direction), path)


def _build_rate(cases: list[dict], spec: dict, repeats: int, workdir: str) -> float:
    """Best seconds to preprocess ``cases`` into a fresh store."""
    from medjax.data import store

    def build():
        store_dir = tempfile.mkdtemp(dir=workdir)
        # fingerprint=False: the pass runs only where the spec has "auto" fields (it must).
        store.build_store(cases, store_dir, spec, workers=0, strict=True, fingerprint=False)
        shutil.rmtree(store_dir)

    return run_all.best_time(build, repeats)


def preprocessing_rows(
    shape: Sequence[int], num_cases: int, repeats: int, workdir: str
) -> list[dict[str, Any]]:
    """Volumes/s and MB/s per (format, spec); see the module docstring."""
    from medjax import registry

    volumes = [synthetic_ct(shape, seed) for seed in range(num_cases)]
    mb = sum(v.nbytes for v in volumes) / 1e6
    dicom_root = os.path.join(workdir, "dicom")
    nifti_cases = []
    for i, hu in enumerate(volumes):
        write_dicom_series(os.path.join(dicom_root, f"series{i}"), hu, SPACING_MM)
        path = os.path.join(workdir, "nifti", f"case{i}.nii.gz")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_nifti(path, hu, SPACING_MM)
        nifti_cases.append({"id": f"case{i}", "image": path, "label": None})
    dicom_cases = registry.lookup("crawlers", "dicom_series")(dicom_root)
    rows = []
    for fmt, cases in (("dicom", dicom_cases), ("nifti.gz", nifti_cases)):
        for spec_name, spec in SPECS.items():
            seconds = _build_rate(cases, spec, repeats, workdir)
            rows.append(
                {
                    "benchmark": "preprocess",
                    "setting": f"{fmt} {tuple(shape)} int16 x{num_cases} {spec_name}",
                    "value": num_cases / seconds,
                    "unit": "volumes/s",
                    "extra": f"{mb / seconds:.1f} MB/s",
                    "format": fmt,
                    "spec": spec_name,
                    "shape": list(shape),
                    "mb_per_s": mb / seconds,
                }
            )
    return rows


def patch_read_rows(
    shapes: Sequence[Sequence[int]], patch: Sequence[int], reads: int, workdir: str
) -> list[dict[str, Any]]:
    """Random patch reads/s from stored volumes of each shape (memory-mapped ``.npy``)."""
    from medjax.data import sources, store, transforms

    rows = []
    for shape in shapes:
        name = "x".join(str(n) for n in shape)
        path = os.path.join(workdir, f"{name}.nii")  # uncompressed: the store build stays short
        write_nifti(path, synthetic_ct(shape, 7), (1.0, 1.0, 1.0))
        store_dir = os.path.join(workdir, f"store_{name}")
        manifest = store.build_store(
            [{"id": name, "image": path, "label": None}],
            store_dir,
            {"normalization": {"name": "none"}},
            strict=True,
            fingerprint=False,
        )
        source = sources.StoreSource(store_dir, manifest["cases"])
        rng = np.random.default_rng(0)

        def read_all(source=source, rng=rng):
            for _ in range(reads):
                transforms.sample_patch(source[0], patch, rng, force_fg=False)

        read_all()  # first touch of the file: page cache warm-up, not timed
        seconds = run_all.best_time(read_all, 3)
        mb = os.path.getsize(os.path.join(store.case_dir(store_dir, name), "image.npy")) / 1e6
        rows.append(
            {
                "benchmark": "patch_read",
                "setting": f"volume {tuple(shape)} ({mb:.0f} MB) patch {tuple(patch)}",
                "value": reads / seconds,
                "unit": "patches/s",
                "extra": "memory-mapped .npy",
                "volume_shape": list(shape),
                "patch": list(patch),
            }
        )
    return rows


def run(
    *,
    quick: bool = False,
    shape: Sequence[int] = (64, 256, 256),
    cases: int = 3,
    volumes: Sequence[Sequence[int]] = ((32, 96, 96), (96, 256, 256), (160, 384, 384)),
    patch: Sequence[int] = (24, 64, 64),
    out: str | None = run_all.RESULTS,
) -> list[dict[str, Any]]:
    """Both measurements in a temporary folder; rows are appended to ``out``."""
    run_all.ensure_importable()
    if quick:
        shape, cases, volumes = (32, 128, 128), 2, volumes[:2]
    with tempfile.TemporaryDirectory() as workdir:
        rows = preprocessing_rows(shape, cases, 1 if quick else 2, workdir)
        rows += patch_read_rows(volumes, patch, 50 if quick else 200, workdir)
    run_all.write_rows(rows, out)
    return rows


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def main() -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=_ints, default=(64, 256, 256), help="D,H,W of each CT")
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument(
        "--volumes",
        type=lambda t: tuple(_ints(v) for v in t.split(":")),
        default=((32, 96, 96), (96, 256, 256), (160, 384, 384)),
        help="D,H,W of each stored volume for patch reads, ':'-separated",
    )
    parser.add_argument("--patch", type=_ints, default=(24, 64, 64))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=run_all.RESULTS, help="JSONL file ('' for none)")
    args = parser.parse_args()
    t = time.perf_counter()
    rows = run(
        quick=args.quick,
        shape=args.shape,
        cases=args.cases,
        volumes=args.volumes,
        patch=args.patch,
        out=args.out,
    )
    run_all.print_table(rows, f"Preprocessing and patch reads ({time.perf_counter() - t:.0f}s)")


if __name__ == "__main__":
    main()
