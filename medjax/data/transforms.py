"""Host-side Grain transforms (numpy only): patch sampling with foreground oversampling.

Randomness comes only from the ``np.random.Generator`` handed in; no JAX inside workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medjax import registry


def sample_patch(
    record: dict[str, Any],
    patch_size: Sequence[int],
    rng: np.random.Generator,
    *,
    force_fg: bool,
) -> dict[str, np.ndarray]:
    """Cuts one patch from a (memory-mapped) case; pads with zeros where the case is smaller.

    With ``force_fg`` and a labelled case that has foreground, the patch is placed so that a
    random foreground voxel of a random foreground class lies at a random position inside it
    (nnU-Net's oversampling, per-class); otherwise the patch position is uniform.

    Returns:
      ``image float32[*patch, C]`` and ``label int32[*patch]`` (zeros when unlabelled).
    """
    image = record["image"]
    spatial = image.shape[:-1]
    patch = tuple(int(p) for p in patch_size)
    nd = len(patch)
    if len(spatial) != nd:
        raise ValueError(f"patch_size {patch} has {nd} axes but the case has shape {spatial}.")
    locations = record.get("locations") or {}
    classes = [k for k, v in locations.items() if len(v)]
    if force_fg and classes:
        coords = locations[classes[rng.integers(len(classes))]]
        voxel = coords[rng.integers(len(coords))]
        # Lowest start that still contains the voxel, highest start too; then clip to the case.
        lo = [int(v) - p + 1 for v, p in zip(voxel, patch, strict=True)]
        hi = [int(v) for v in voxel]
        start = [int(rng.integers(a, b + 1)) for a, b in zip(lo, hi, strict=True)]
        start = [
            min(max(s, min(0, n - p)), max(n - p, 0))
            for s, n, p in zip(start, spatial, patch, strict=True)
        ]
    else:
        start = [
            int(rng.integers(min(0, n - p), max(n - p, 0) + 1))
            for n, p in zip(spatial, patch, strict=True)
        ]
    src = tuple(
        slice(max(s, 0), min(s + p, n)) for s, p, n in zip(start, patch, spatial, strict=True)
    )
    dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start, strict=True))
    out_image = np.zeros((*patch, image.shape[-1]), np.float32)
    out_image[dst] = image[src]
    out_label = np.zeros(patch, np.int32)
    if "label" in record:
        out_label[dst] = record["label"][src]
    return {"image": out_image, "label": out_label}


class LoadPatchBatch:
    """Turns one global batch of case indices into this process's rows of patches.

    Each row's generator is seeded by ``(seed, batch index, global row)``, so a row gets the
    same patch whichever process loads it: the global batch is identical on 1 or N processes.
    Foreground is forced for the last ``round(fg_oversample * B)`` rows of each global batch, as
    nnU-Net does, so every batch sees foreground.
    """

    def __init__(
        self,
        source: Any,
        patch_size: Sequence[int],
        *,
        fg_oversample: float,
        seed: int,
        rows: slice,
    ):
        self.source = source
        self.patch_size = tuple(int(p) for p in patch_size)
        self.fg_oversample = float(fg_oversample)
        self.seed = int(seed)
        self.rows = rows

    def __call__(self, batch_index: int, case_indices: np.ndarray) -> dict[str, np.ndarray]:
        global_bs = len(case_indices)
        num_fg = int(round(self.fg_oversample * global_bs))
        images, labels = [], []
        for row in range(global_bs)[self.rows]:
            rng = np.random.default_rng([self.seed, int(batch_index), row])
            record = self.source[int(case_indices[row])]
            patch = sample_patch(record, self.patch_size, rng, force_fg=row >= global_bs - num_fg)
            images.append(patch["image"])
            labels.append(patch["label"])
        return {"image": np.stack(images), "label": np.stack(labels)}


@registry.register("transforms.sample_patch")
def get_sample_patch(**kwargs: Any) -> LoadPatchBatch:
    """Factory for ``LoadPatchBatch`` (see its arguments)."""
    return LoadPatchBatch(**kwargs)
