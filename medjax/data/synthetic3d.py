"""synthetic.lesion3d: axial T2-weighted spinal-cord MR volumes with hyperintense lesions.

The built-in 3D segmentation dataset. It is written as a Medical Segmentation Decathlon folder
(what the ``nifti_volume`` crawler reads)::

    root/imagesTr/<id>.nii.gz   int16 T2w volume (training and validation cases)
    root/labelsTr/<id>.nii.gz   uint8 lesion mask, 0/1 (``labels="cord_lesion"``: 0/1 cord/2 lesion)
    root/imagesTs/<id>.nii.gz   test volumes
    root/labelsTs/<id>.nii.gz   test masks (nnU-Net raw keeps test labels here; MSD has none)
    root/dataset.json           MSD keys plus disjoint "training" / "validation" / "test" lists

The ``training`` and ``validation`` lists are disjoint, as in MONAI's Decathlon datalists, and
``test`` lists image paths, as in the MSD.

What a volume holds, and why:

* **Anatomy** in the axial plane (H runs anterior -> posterior, W right -> left, D inferior ->
  superior in the generation frame): paraspinal muscle, the vertebral body (intermediate) with
  T2-bright intervertebral discs at some levels, dark cortical bone around the canal, the
  spinous process, T2-bright subcutaneous fat, the bright CSF ring and the cord (intermediate)
  with slightly brighter gray matter. The cord centreline curves smoothly along D.
* **Lesions**: 1-4 ellipsoids inside the cord, elongated along it, of varying size and
  contrast; a fixed fraction of each split has none. Their intensities overlap CSF, discs and
  fat, so no global threshold segments them (the best global-threshold Dice stays low).
* **Acquisition**: anisotropic voxels (default 2.0 x 0.8 x 0.8 mm, thick axial slices),
  partial-volume blur, a smooth multiplicative bias field and Rician noise; the slab is
  oblique (tilted about the left-right and superior-inferior axes) and some cases store their
  voxels flipped, with the affine saying so, which is what real scanners write.

Everything is a pure function of the seed: case ``i`` of split ``s`` uses
``np.random.default_rng([seed, s, i])``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from medjax import registry
from medjax.data import synthetic_geometry
from medjax.data.io import nifti
from medjax.data.io import volume as volume_lib

DEFAULT_SHAPE = (24, 80, 80)  # (D, H, W) voxels: 48 x 64 x 64 mm at the default spacing
DEFAULT_SPACING_MM = (2.0, 0.8, 0.8)  # (D, H, W): thick axial slices, fine in-plane
SPLITS = ("train", "val", "test")
# make_lesion3d(labels=...): the dataset.json "labels" of each label set.
LABEL_SETS = {
    "lesion": {"0": "background", "1": "lesion"},
    "cord_lesion": {"0": "background", "1": "cord", "2": "lesion"},
}
INTENSITY_SCALE = 1000.0  # stored int16 values are intensity * scale, like an MR scanner's range


class Case(NamedTuple):
    """One generated case.

    Attributes:
      image: the stored image ``Volume`` (int16 ``[D, H, W]``, voxel order possibly flipped).
      label: the stored mask ``Volume`` (uint8 ``[D, H, W]``), same geometry as ``image``.
      canonical_image: float32 ``[D, H, W]`` image in the generation frame, before flips and
        before int16 rounding (intensity units, roughly ``[0, 1.2]``).
      canonical_mask: uint8 ``[D, H, W]`` lesion mask in the generation frame.
      flip_axes: array axes that were reversed to get the stored arrays.
    """

    image: volume_lib.Volume
    label: volume_lib.Volume
    canonical_image: np.ndarray
    canonical_mask: np.ndarray
    flip_axes: tuple[int, ...]


# --------------------------------------------------------------------------------------------
# Anatomy and lesions (generation frame, intensities in [0, 1] before bias and noise).
# --------------------------------------------------------------------------------------------


def _bias_field(rng: np.random.Generator, shape: Sequence[int], strength: float) -> np.ndarray:
    """``exp`` of a random quadratic in normalised coordinates, scaled to ``|log| <= strength``.

    A low-order polynomial is the usual model of coil sensitivity (N4 fits B-splines of the same
    smoothness) and, unlike a filtered noise field, costs nothing to evaluate.
    """
    coords = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij")
    terms = list(coords) + [a * b for i, a in enumerate(coords) for b in coords[i:]]
    log_field = sum(rng.uniform(-1.0, 1.0) * t for t in terms)
    log_field = log_field - log_field.mean()
    return np.exp(strength * log_field / (np.abs(log_field).max() + 1e-8))


def _ellipse(dy: np.ndarray, dx: np.ndarray, ry: float, rx: float) -> np.ndarray:
    return (dy / ry) ** 2 + (dx / rx) ** 2 <= 1.0


def spine_volume(
    rng: np.random.Generator,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing_mm: Sequence[float] = DEFAULT_SPACING_MM,
    *,
    num_lesions: int = 2,
    cord_label: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One axial T2w cervical-spine volume and its lesion mask, in the generation frame.

    Args:
      rng: the case's generator (the only source of randomness).
      shape: ``(D, H, W)`` voxels; D is the slice (superior-inferior) axis.
      spacing_mm: ``(D, H, W)`` voxel size in mm.
      num_lesions: lesions to place inside the cord (0 gives a lesion-free volume).
      cord_label: label the cord too (the multi-class variant): 1 cord, 2 lesion.

    Returns:
      ``image float32[D, H, W]`` (non-negative, about ``[0, 1.2]`` after the bias field) and
      ``mask uint8[D, H, W]`` in {0, 1} (lesion; non-empty iff ``num_lesions > 0``), or with
      ``cord_label`` in {0, 1, 2} (lesions lie inside the cord, so they overwrite it).
    """
    depth, height, width = (int(s) for s in shape)
    sd, sh, sw = (float(s) for s in spacing_mm)
    z = (np.arange(depth) * sd)[:, None, None]
    y = (np.arange(height) * sh)[None, :, None]
    x = (np.arange(width) * sw)[None, None, :]
    extent_y, extent_x = height * sh, width * sw

    # Cord centreline: canal centre slightly anterior of the middle, curving along z.
    y0 = extent_y * rng.uniform(0.5, 0.56)
    x0 = extent_x * rng.uniform(0.45, 0.55)
    period = rng.uniform(1.5, 3.0) * depth * sd
    phase_y, phase_x = rng.uniform(0, 2 * np.pi, 2)
    yc = y0 + rng.uniform(0.5, 2.5) * np.sin(2 * np.pi * z / period + phase_y)
    xc = x0 + rng.uniform(0.0, 1.5) * np.sin(2 * np.pi * z / period + phase_x)
    dy = np.broadcast_to(y - yc, (depth, height, width))
    dx = np.broadcast_to(x - xc, (depth, height, width))

    # Radii in mm (adult cervical canal ~13 x 18 mm, cord ~8 x 12 mm).
    canal_ry, canal_rx = rng.uniform(6.0, 7.5), rng.uniform(8.0, 10.0)
    cord_ry, cord_rx = rng.uniform(3.5, 4.5), rng.uniform(5.0, 6.5)
    body_ry, body_rx = rng.uniform(7.0, 9.0), rng.uniform(8.0, 11.0)
    body_dy = -(canal_ry + 2.5 + body_ry)  # vertebral body centre, anterior of the canal
    level = rng.uniform(14.0, 20.0)  # vertebral level height (mm)
    level_pos = np.mod(z + rng.uniform(0, level), level)
    disc_level = level_pos < rng.uniform(0.22, 0.32) * level  # z-only: a disc slab

    texture = ndimage.gaussian_filter(rng.standard_normal((depth, height, width)), (0.7, 2, 2))
    texture /= np.abs(texture).max() + 1e-8
    img = 0.25 + 0.03 * texture  # paraspinal muscle
    # Subcutaneous fat posteriorly (T2 bright).
    fat_val = rng.uniform(0.7, 0.85)
    fat = dy > canal_ry + rng.uniform(14.0, 18.0)
    # Thin intermuscular fat planes between the paraspinal muscles, fanning out posteriorly.
    fan = rng.uniform(0.4, 0.7)
    planes = (np.abs(np.abs(dx) - (canal_rx + 2.0 + fan * (dy - canal_ry))) < 0.6) & (
        dy > canal_ry + 2.0
    )
    img = np.where(fat | planes, fat_val + 0.03 * texture, img)
    # Vertebral body marrow, or a disc (dark annulus, bright hydrated nucleus) at disc levels.
    body = _ellipse(dy - body_dy, dx, body_ry, body_rx)
    nucleus = _ellipse(dy - body_dy, dx, 0.6 * body_ry, 0.6 * body_rx)
    img = np.where(body, 0.38 + 0.05 * texture, img)
    img = np.where(body & disc_level, 0.3, img)
    img = np.where(nucleus & disc_level, rng.uniform(0.6, 0.8), img)
    # Dark cortical bone around the canal and the spinous process, at vertebral levels only.
    ring = _ellipse(dy, dx, canal_ry + 2.0, canal_rx + 2.0) & ~disc_level
    spinous = (np.abs(dx) < 2.0) & (dy > canal_ry) & (dy < canal_ry + 14.0) & ~disc_level
    img = np.where(ring, 0.15, img)
    img = np.where(spinous, 0.33, img)
    # CSF, cord and its gray matter (an "H": two horns joined by the commissure).
    csf = _ellipse(dy, dx, canal_ry, canal_rx)
    cord = _ellipse(dy, dx, cord_ry, cord_rx)
    cord_val = rng.uniform(0.40, 0.48)
    horns = _ellipse(dy, np.abs(dx) - 0.45 * cord_rx, 0.75 * cord_ry, 0.22 * cord_rx)
    commissure = (np.abs(dy) < 0.18 * cord_ry) & (np.abs(dx) < 0.45 * cord_rx)
    img = np.where(csf, rng.uniform(0.78, 0.92), img)
    img = np.where(cord, cord_val, img)
    img = np.where(cord & (horns | commissure), cord_val + rng.uniform(0.04, 0.08), img)

    # Lesions: ellipsoids elongated along the cord, clipped to it. A draw that misses every
    # voxel centre (possible only for the smallest ones) is redrawn so a lesion case always
    # has a non-empty mask.
    mask = np.zeros((depth, height, width), bool)
    for _ in range(num_lesions):
        for _attempt in range(20):
            z0 = rng.uniform(0.1, 0.9) * depth * sd
            ly0, lx0 = rng.uniform(-0.5, 0.5) * cord_ry, rng.uniform(-0.5, 0.5) * cord_rx
            az = rng.uniform(2.5, 12.0)  # half-length along the cord (mm)
            ay, ax = rng.uniform(1.5, 3.2), rng.uniform(1.5, 3.8)
            lesion = ((z - z0) / az) ** 2 + ((dy - ly0) / ay) ** 2 + ((dx - lx0) / ax) ** 2 <= 1
            lesion &= cord
            if lesion.any():
                break
        img = np.where(lesion, rng.uniform(0.55, 0.9), img)
        mask |= lesion

    # Partial volume: the slice profile is wider than the in-plane point spread (in voxels).
    img = ndimage.gaussian_filter(img, (0.8 / sd, 0.5 / sh, 0.5 / sw))
    img = img * _bias_field(rng, (depth, height, width), rng.uniform(0.15, 0.3))
    sigma = rng.uniform(0.02, 0.05)
    # Rician noise: magnitude of a complex signal with Gaussian noise in both channels.
    img = np.hypot(
        img + sigma * rng.standard_normal(img.shape), sigma * rng.standard_normal(img.shape)
    )
    labels = np.where(mask, 2, cord).astype(np.uint8) if cord_label else mask.astype(np.uint8)
    return img.astype(np.float32), labels


# --------------------------------------------------------------------------------------------
# One case: anatomy placed and stored by ``synthetic_geometry`` (an oblique slab, some cases
# stored with flipped voxel order).
# --------------------------------------------------------------------------------------------


def make_case(
    rng: np.random.Generator,
    *,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing_mm: Sequence[float] = DEFAULT_SPACING_MM,
    lesion_free: bool = False,
    cord_label: bool = False,
) -> Case:
    """Generates one case: anatomy, lesions, geometry, stored voxel order.

    Args:
      rng: the case's generator.
      shape: ``(D, H, W)`` voxels.
      spacing_mm: ``(D, H, W)`` mm.
      lesion_free: no lesions (an empty mask).
      cord_label: label the cord as 1 and lesions as 2 (``spine_volume``).

    Returns:
      A ``Case``; ``image`` and ``label`` are what ``make_lesion3d`` writes.
    """
    num_lesions = 0 if lesion_free else int(rng.choice([1, 2, 3, 4], p=[0.4, 0.3, 0.2, 0.1]))
    image, mask = spine_volume(
        rng, shape, spacing_mm, num_lesions=num_lesions, cord_label=cord_label
    )
    direction, origin, flip_axes = synthetic_geometry.random_geometry(rng, shape, spacing_mm)
    direction, origin = synthetic_geometry.stored_geometry(
        direction, origin, shape, spacing_mm, flip_axes
    )
    stored = np.round(np.flip(image, flip_axes) * INTENSITY_SCALE)
    stored_image = np.clip(stored, 0, np.iinfo(np.int16).max).astype(np.int16)
    stored_mask = np.ascontiguousarray(np.flip(mask, flip_axes))
    geometry = (tuple(spacing_mm), tuple(origin), direction)
    return Case(
        image=volume_lib.Volume(np.ascontiguousarray(stored_image), *geometry),
        label=volume_lib.Volume(stored_mask, *geometry),
        canonical_image=image,
        canonical_mask=mask,
        flip_axes=flip_axes,
    )


# --------------------------------------------------------------------------------------------
# The dataset on disk.
# --------------------------------------------------------------------------------------------


def lesion_free_cases(seed: int, split_index: int, n: int, empty_fraction: float) -> set[int]:
    """Indices of the lesion-free cases of one split: ``round(empty_fraction * n)`` of them.

    Drawn per split rather than per case, so every split of a dataset has its share of empty
    volumes (Dice on an empty case is the case a model most often gets wrong).
    """
    k = int(round(empty_fraction * n))
    rng = np.random.default_rng([seed, split_index, 1_000_003])
    return {int(i) for i in rng.choice(n, size=k, replace=False)} if k else set()


def case_id(index: int) -> str:
    """The id of the ``index``-th case, counting train, then val, then test cases."""
    return f"spine_{index:03d}"


@registry.register("synthetic.lesion3d")
def make_lesion3d(
    root: str,
    *,
    num_train: int = 40,
    num_val: int = 10,
    num_test: int = 10,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing_mm: Sequence[float] = DEFAULT_SPACING_MM,
    empty_fraction: float = 0.25,
    seed: int = 0,
    labels: str = "lesion",
) -> None:
    """Writes the lesion3d dataset as a Decathlon folder under ``root`` (see the module doc).

    Training and validation cases go to ``imagesTr`` / ``labelsTr`` and are told apart by the
    disjoint ``training`` and ``validation`` lists of ``dataset.json``; test cases go to
    ``imagesTs`` / ``labelsTs``.

    Args:
      root: an existing (empty) folder.
      num_train: training cases.
      num_val: validation cases.
      num_test: test cases.
      shape: ``(D, H, W)`` voxels of every volume (D: the thick-slice axis).
      spacing_mm: ``(D, H, W)`` voxel size in mm.
      empty_fraction: fraction of each split without lesions.
      seed: the dataset seed; the same seed and options give identical files' contents.
      labels: ``"lesion"`` (binary masks) or ``"cord_lesion"`` (1 cord, 2 lesion: the
        multi-class variant; the images are the same).

    Raises:
      ValueError: a negative count, a shape that is not 3D, a fraction outside [0, 1] or an
        unknown ``labels``.
    """
    if labels not in LABEL_SETS:
        raise ValueError(f"lesion3d: labels={labels!r}; expected one of {sorted(LABEL_SETS)}.")
    counts = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
    if min(counts.values()) < 0 or len(shape) != 3 or len(spacing_mm) != 3:
        raise ValueError(f"lesion3d: bad counts {counts}, shape {shape} or spacing {spacing_mm}.")
    if not 0.0 <= empty_fraction <= 1.0:
        raise ValueError(f"lesion3d: empty_fraction={empty_fraction} is not in [0, 1].")
    shape = tuple(int(s) for s in shape)
    spacing_mm = tuple(float(s) for s in spacing_mm)
    for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    lists: dict[str, list] = {"training": [], "validation": [], "test": []}
    index = 0
    for split_index, split in enumerate(SPLITS):
        empty = lesion_free_cases(seed, split_index, counts[split], empty_fraction)
        image_dir, label_dir = (
            ("imagesTs", "labelsTs") if split == "test" else ("imagesTr", "labelsTr")
        )
        for i in range(counts[split]):
            rng = np.random.default_rng([seed, split_index, i])
            case = make_case(
                rng,
                shape=shape,
                spacing_mm=spacing_mm,
                lesion_free=i in empty,
                cord_label=labels == "cord_lesion",
            )
            cid = case_id(index)
            index += 1
            image_rel = f"./{image_dir}/{cid}.nii.gz"
            label_rel = f"./{label_dir}/{cid}.nii.gz"
            nifti.write_nifti(case.image, os.path.join(root, image_rel))
            nifti.write_nifti(case.label, os.path.join(root, label_rel))
            if split == "test":
                lists["test"].append(image_rel)
            else:
                key = "training" if split == "train" else "validation"
                lists[key].append({"image": image_rel, "label": label_rel})
    info = {
        "name": "Lesion3D",
        "description": "Synthetic axial T2w spinal-cord MR with hyperintense lesions (medjax).",
        "reference": "medjax.data.synthetic3d",
        "licence": "CC0",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "T2"},
        "labels": LABEL_SETS[labels],
        "numTraining": counts["train"],
        "numValidation": counts["val"],
        "numTest": counts["test"],
        "spacing_mm": list(spacing_mm),
        "generator": {"name": "synthetic.lesion3d", "seed": seed, "shape": list(shape)},
        **lists,
    }
    with open(os.path.join(root, "dataset.json"), "w") as f:
        json.dump(info, f, indent=1)
