"""Loader patches/s: medjax's Grain loader against MONAI's CacheDataset pipeline, same volumes.

Run through ``python benchmarks/peers.py --workloads=loader [--loader_workers=0,2]``.

Data: ``NUM_VOLUMES`` CT-like NIfTI pairs (160x160x96 float32 HU at 1.2 x 1.2 x 2.0 mm, an LPS
affine, an elliptic body in air with 3-5 spherical lesions labelled 1), written once into
``$MEDJAX_CACHE/bench/ct_pairs-v1`` under the file names ``/work/shared/bench/peer_pipeline.py``
uses (``case000_img.nii.gz`` / ``case000_seg.nii.gz``), so that tool can be pointed at the same
files (``--data``) as a cross-check.

Both sides cache the same deterministic part (to RAS, 1.5 mm isotropic with linear/nearest
interpolation, the -175..250 HU window, crop to the body) and then draw 96^3 patches, half of
them centred on foreground:

* medjax: ``build_store`` once (not timed), then ``pipeline.make_train_dataset``: a global batch
  of 4 patches (``fg_oversample=0.5``) memory-mapped out of the store, ``--loader_workers``
  Grain processes. Its augmentations run on the device inside the train step, so the host does
  only the crop.
* MONAI: ``CacheDataset`` (not timed), then ``RandCropByPosNegLabeld(pos=1, neg=1,
  num_samples=2)`` and the host augmentations of ``peer_pipeline.py`` (three ``RandFlipd``,
  ``RandRotate90d``, ``RandScaleIntensityd``, ``RandShiftIntensityd``), ``DataLoader(batch_size=2,
  shuffle=True, num_workers=...)``: 4 patches a batch, workers re-forked every epoch (the
  default).

patches/s counts patches after the first batch of a run (the first includes worker start-up).
"""

from __future__ import annotations

import os
import time
from typing import Any

NUM_VOLUMES = 24
SHAPE = (160, 160, 96)
SPACING_MM = (1.2, 1.2, 2.0)
PATCH = 96
MIN_SECONDS = 6.0
SPEC = {
    "reorient": "RAS",
    "target_spacing_mm": [1.5, 1.5, 1.5],
    "normalization": {"name": "ct", "window": [-175.0, 250.0]},
    "crop_foreground": True,
    "label_mode": "binary",
    "image_order": 1,
    "label_resampling": "nearest",
}


def _volume(rng):
    """One CT-like volume (x, y, z array order) with its label and a LPS-like affine."""
    import numpy as np

    sx, sy, sz = SPACING_MM
    x = (np.arange(SHAPE[0])[:, None, None] - SHAPE[0] / 2) * sx
    y = (np.arange(SHAPE[1])[None, :, None] - SHAPE[1] / 2) * sy
    z = np.arange(SHAPE[2])[None, None, :] * sz
    ax, ay = rng.uniform(0.40, 0.48, 2) * SHAPE[0] * sx
    body = (x / ax) ** 2 + (y / ay) ** 2 <= 1.0
    image = np.where(body, 40.0, -1000.0) + rng.normal(0.0, 20.0, SHAPE)
    label = np.zeros(SHAPE, np.uint8)
    for _ in range(int(rng.integers(3, 6))):
        r = rng.uniform(6.0, 15.0)
        cx, cy = rng.uniform(-0.5, 0.5) * ax, rng.uniform(-0.5, 0.5) * ay
        cz = rng.uniform(0.2, 0.8) * SHAPE[2] * sz
        ball = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= r * r
        label[ball] = 1
        image[ball] += 60.0
    affine = np.diag([-sx, -sy, sz, 1.0])
    return image.astype(np.float32), label, affine


def ensure_volumes(n: int = NUM_VOLUMES) -> list[dict[str, str]]:
    """Writes the NIfTI pairs once; returns ``[{"id", "image", "label"}]``."""
    import nibabel as nib
    import numpy as np

    from medjax.data import synthetic

    folder = os.path.join(synthetic.cache_dir(), "bench", "ct_pairs-v1")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    cases = []
    for i in range(n):
        img_p = os.path.join(folder, f"case{i:03d}_img.nii.gz")
        lab_p = os.path.join(folder, f"case{i:03d}_seg.nii.gz")
        image, label, affine = _volume(rng)  # drawn every time: case i is the same on reruns
        if not (os.path.exists(img_p) and os.path.exists(lab_p)):
            for data, path in ((image, img_p), (label, lab_p)):
                tmp = path.replace(".nii.gz", f".tmp{os.getpid()}.nii.gz")
                nib.save(nib.Nifti1Image(data, affine), tmp)
                os.replace(tmp, path)  # a killed run never leaves a half-written case
        cases.append({"id": f"case{i:03d}", "image": img_p, "label": lab_p})
    return cases


class MedjaxLoader:
    """medjax's Grain training dataset over a store of the volumes; ``answer(n)`` times a run."""

    def __init__(self, workers: int):
        from medjax.data import sources, store, synthetic

        cases = ensure_volumes()
        store_dir = os.path.join(
            synthetic.cache_dir(), "bench", f"ct_store-{store.spec_hash([cases, SPEC])}"
        )
        manifest = store.build_store(cases, store_dir, SPEC, workers=0, fingerprint=False)
        self.source = sources.StoreSource(store_dir, manifest["cases"])
        self.workers = workers
        self.shapes = sorted(set(self.source.shapes))
        self.runs = 0

    def answer(self, min_batches: int) -> dict[str, Any]:
        """Patches/s of one fresh iterator, after its first ``1 + workers`` batches."""
        from medjax.data import pipeline

        self.runs += 1
        ds = pipeline.make_train_dataset(
            self.source,
            patch_size=(PATCH,) * 3,
            global_batch_size=4,
            fg_oversample=0.5,
            seed=self.runs,
            num_workers=self.workers,
        )
        it = iter(ds)
        try:
            for _ in range(1 + self.workers):
                next(it)
            t, patches, fg = time.perf_counter(), 0, 0
            while patches < 4 * min_batches or time.perf_counter() - t < MIN_SECONDS:
                batch = next(it)
                patches += len(batch["image"])
                fg += int((batch["label"].reshape(len(batch["label"]), -1).max(1) > 0).sum())
            elapsed = time.perf_counter() - t
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        return {"patches_per_s": patches / elapsed, "patches": patches, "fg_fraction": fg / patches}

    def info(self) -> dict[str, Any]:
        """Static facts: store shapes, worker count."""
        import grain

        return {
            "framework": "medjax",
            "version": f"grain {getattr(grain, '__version__', '?')}",
            "workers": self.workers,
            "stored_shapes": [list(s) for s in self.shapes[:2]],
        }


class MonaiLoader:
    """MONAI's CacheDataset pipeline over the same volumes; ``answer(n)`` times a run."""

    def __init__(self, workers: int):
        from monai import transforms as T
        from monai.data import CacheDataset

        keys = ["image", "label"]
        cached = [
            T.LoadImaged(keys),
            T.EnsureChannelFirstd(keys),
            T.Orientationd(keys, axcodes="RAS"),
            T.Spacingd(keys, pixdim=(1.5, 1.5, 1.5), mode=("bilinear", "nearest")),
            T.ScaleIntensityRanged("image", a_min=-175, a_max=250, b_min=0.0, b_max=1.0, clip=True),
            T.CropForegroundd(keys, source_key="image"),
        ]
        random = [
            T.RandCropByPosNegLabeld(
                keys,
                label_key="label",
                spatial_size=(PATCH,) * 3,
                pos=1,
                neg=1,
                num_samples=2,
                image_key="image",
                image_threshold=0,
            ),
            T.RandFlipd(keys, prob=0.5, spatial_axis=0),
            T.RandFlipd(keys, prob=0.5, spatial_axis=1),
            T.RandFlipd(keys, prob=0.5, spatial_axis=2),
            T.RandRotate90d(keys, prob=0.5, max_k=3),
            T.RandScaleIntensityd("image", factors=0.1, prob=0.5),
            T.RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        ]
        files = [{"image": c["image"], "label": c["label"]} for c in ensure_volumes()]
        t = time.perf_counter()
        self.ds = CacheDataset(files, T.Compose(cached + random), cache_rate=1.0, progress=False)
        self.cache_s = time.perf_counter() - t
        self.workers = workers

    def answer(self, min_batches: int) -> dict[str, Any]:
        """Patches/s over whole epochs until ``min_batches`` and ``MIN_SECONDS`` are reached."""
        from monai.data import DataLoader

        loader = DataLoader(self.ds, batch_size=2, shuffle=True, num_workers=self.workers)
        t, patches, fg, first = None, 0, 0, True
        while True:
            for batch in loader:
                if first:  # the first batch includes the workers' start-up
                    first, t = False, time.perf_counter()
                    continue
                patches += batch["image"].shape[0]
                fg += int((batch["label"].flatten(1).amax(1) > 0).sum())
            if patches >= 4 * min_batches and time.perf_counter() - t >= MIN_SECONDS:
                break
        elapsed = time.perf_counter() - t
        return {"patches_per_s": patches / elapsed, "patches": patches, "fg_fraction": fg / patches}

    def info(self) -> dict[str, Any]:
        """Static facts: versions, cache time, worker count."""
        import monai
        import torch

        return {
            "framework": "monai",
            "version": f"torch {torch.__version__}, monai {monai.__version__}",
            "workers": self.workers,
            "cache_s": self.cache_s,
            "torch_threads": torch.get_num_threads(),
        }


def make_worker(side: str, workers: int) -> MedjaxLoader | MonaiLoader:
    """The loader of ``side`` (``medjax`` | ``torch``) with ``workers`` worker processes."""
    return MedjaxLoader(workers) if side == "medjax" else MonaiLoader(workers)


def loader_rows(workers: list[int], rounds: int, min_batches: int = 9) -> list[dict[str, Any]]:
    """Interleaved medjax / MONAI patches/s for each worker count (same count on both sides)."""
    from benchmarks import peers

    rows = []
    ensure_volumes()  # written before either side starts, so neither times the writing
    for w in workers:
        sides = {}
        try:
            sides["medjax"] = peers.Worker(["--worker=medjax", f"--workload=loader:{w}"])
            sides["monai"] = peers.Worker(
                ["--worker=torch", f"--workload=loader:{w}"], peers.torch_env()
            )
            infos = {k: s.info for k, s in sides.items()}
            results = peers.interleave(
                sides, rounds, f"run {min_batches}", lambda a: a["patches_per_s"]
            )
        finally:
            for s in sides.values():
                s.close()
        setting = f"loader {PATCH}^3 x4/batch workers={w}"
        rows += peers.summarize("peers", setting, "patches/s", results, infos)
    return rows
