"""Built-in default datasets, generated deterministically on first use into a cache folder.

They are written in the same on-disk formats as real data (PNG pairs here; NIfTI and MetaImage
for the 3D and LUNA16 sets), so a default run exercises the real readers and crawlers.

The cache folder is ``$MEDJAX_CACHE`` or ``~/.cache/medjax``; a dataset is generated into a
temporary folder and renamed into place, so a killed generation never looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import logging
from PIL import Image
from scipy import ndimage

from medjax import registry

GENERATOR_VERSION = 1


def cache_dir() -> str:
    """The root of medjax's caches: ``$MEDJAX_CACHE`` or ``~/.cache/medjax``."""
    return os.path.abspath(
        os.environ.get("MEDJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "medjax")
    )


def ensure_dataset(name: str, **kwargs: Any) -> str:
    """Returns the folder of built-in dataset ``name``, generating it on first use.

    Args:
      name: a registered ``synthetic.<name>`` generator (``spine2d``, ...).
      **kwargs: generator options; different options give a different folder.
    """
    generate = registry.get(f"synthetic.{name}")
    registry.check_kwargs("synthetic", name, kwargs, positional=1)  # generate(root, **kwargs)
    tag = hashlib.sha1(json.dumps(kwargs, sort_keys=True, default=str).encode()).hexdigest()[:8]
    root = os.path.join(cache_dir(), "datasets", f"{name}-v{GENERATOR_VERSION}-{tag}")
    if os.path.exists(os.path.join(root, ".complete")):
        return root
    tmp = f"{root}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    logging.info("Generating the built-in dataset %r into %s", name, root)
    generate(tmp, **kwargs)
    with open(os.path.join(tmp, ".complete"), "w") as f:
        json.dump({"name": name, "kwargs": kwargs}, f, default=str)
    shutil.rmtree(root, ignore_errors=True)
    try:
        os.rename(tmp, root)
    except OSError:  # another process finished first; keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return root


# --------------------------------------------------------------------------------------------
# spine2d: sagittal T2-weighted spinal-cord MR slices with hyperintense lesions.
# --------------------------------------------------------------------------------------------


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field / (np.abs(field).max() + 1e-8)


def spine_slice(
    rng: np.random.Generator, size: int = 128, *, num_lesions: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic sagittal T2w slice of the cervical/thoracic spine and its lesion mask.

    Anatomy (columns run anterior -> posterior, rows superior -> inferior): soft tissue,
    vertebral bodies separated by bright discs, the CSF column (bright), the cord inside it
    (intermediate), posterior elements, muscle and bright subcutaneous fat. Lesions are
    elongated hyperintense ellipses inside the cord whose intensity overlaps CSF, discs and fat,
    so no global threshold separates them; then partial-volume blur, a multiplicative bias
    field and Rician noise.

    Args:
      rng: the slice's generator (the slice is a function of its state).
      size: image side in pixels; anatomy scales with it.
      num_lesions: how many lesion ellipses to draw; None draws 0-3 (a quarter of slices
        have none). None keeps the random stream of the original generator, so the
        ``spine2d`` dataset (and the store hashes built on it) is unchanged.

    Returns:
      image float32[size, size] in [0, 1], mask uint8[size, size] in {0, 1}.
    """
    s = size / 128.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Curved cord centreline x_c(y).
    cx = size * rng.uniform(0.45, 0.55)
    amp = rng.uniform(0, 6) * s
    phase = rng.uniform(0, 2 * np.pi)
    period = rng.uniform(1.2, 2.5) * size
    xc = cx + amp * np.sin(2 * np.pi * yy / period + phase)
    dx = xx - xc
    r_cord = rng.uniform(7, 9) * s
    r_csf = r_cord + rng.uniform(4, 6) * s

    img = np.full((size, size), 0.30, np.float32)  # paraspinal soft tissue
    img += 0.04 * _smooth_field(rng, (size, size), 3 * s)
    # Vertebral bodies (anterior) with discs in between.
    body_w = rng.uniform(24, 32) * s
    vb = (dx < -r_csf - 2 * s) & (dx > -r_csf - 2 * s - body_w)
    level_h = rng.uniform(18, 24) * s
    offset = rng.uniform(0, level_h)
    pos = np.mod(yy + offset, level_h)
    disc = vb & (pos < 0.22 * level_h)
    img[vb] = 0.38 + 0.05 * _smooth_field(rng, (size, size), 1.5 * s)[vb]
    img[disc] = rng.uniform(0.62, 0.8)  # hydrated nucleus: T2 bright
    # Posterior elements and muscle, then subcutaneous fat.
    post = (dx > r_csf + 2 * s) & (dx < r_csf + 12 * s) & (pos > 0.3 * level_h)
    img[post] = 0.33
    muscle = (dx >= r_csf + 12 * s) & (dx < r_csf + 30 * s)
    img[muscle] = 0.22
    fat = dx >= r_csf + 30 * s
    img[fat] = rng.uniform(0.7, 0.85)
    # CSF and cord.
    csf = np.abs(dx) < r_csf
    cord = np.abs(dx) < r_cord
    img[csf] = rng.uniform(0.78, 0.92)
    cord_val = rng.uniform(0.40, 0.50)
    img[cord] = cord_val
    # Lesions: 0-3 elongated ellipses inside the cord; about a quarter of slices have none.
    mask = np.zeros((size, size), bool)
    if num_lesions is None:
        n_lesions = rng.choice([0, 1, 2, 3], p=[0.25, 0.4, 0.25, 0.1])
    else:
        n_lesions = int(num_lesions)
    for _ in range(n_lesions):
        y0 = rng.uniform(0.1, 0.9) * size
        x0 = np.interp(y0, yy[:, 0], xc[:, 0]) + rng.uniform(-0.3, 0.3) * r_cord
        a = rng.uniform(5, 14) * s  # along the cord
        b = rng.uniform(3, 6) * s  # across
        ell = ((yy - y0) / a) ** 2 + ((xx - x0) / b) ** 2 <= 1.0
        lesion = ell & cord
        contrast = rng.uniform(0.6, 0.88)
        img[lesion] = contrast
        mask |= lesion
    img = ndimage.gaussian_filter(img, 0.6 * s)  # partial volume
    bias = np.exp(0.25 * _smooth_field(rng, (size, size), 20 * s))
    img = img * bias
    sigma = rng.uniform(0.03, 0.06)
    noisy = np.sqrt(
        (img + sigma * rng.standard_normal(img.shape)) ** 2
        + (sigma * rng.standard_normal(img.shape)) ** 2
    )
    return np.clip(noisy, 0, 1).astype(np.float32), mask.astype(np.uint8)


@registry.register("synthetic.spine2d")
def make_spine2d(
    root: str,
    *,
    size: int = 128,
    num_train: int = 480,
    num_val: int = 96,
    num_test: int = 96,
    seed: int = 0,
) -> None:
    """Writes ``root/<split>/{images,masks}/<id>.png`` (a ``segmentation_file`` dataset).

    Images are 8-bit grayscale PNGs; masks are 0/255 PNGs.
    """
    splits = {"train": num_train, "val": num_val, "test": num_test}
    for split_index, (split, n) in enumerate(splits.items()):
        os.makedirs(os.path.join(root, split, "images"))
        os.makedirs(os.path.join(root, split, "masks"))
        for i in range(n):
            rng = np.random.default_rng([seed, split_index, i])
            image, mask = spine_slice(rng, size)
            case = f"{split}_{i:04d}"
            Image.fromarray(np.round(image * 255).astype(np.uint8)).save(
                os.path.join(root, split, "images", f"{case}.png")
            )
            Image.fromarray(mask * 255).save(os.path.join(root, split, "masks", f"{case}.png"))


SPINE_CLASSES = ("lesion", "no_lesion")


def spine_class_slice(
    rng: np.random.Generator, size: int, lesion: bool, *, min_lesion_area: float = 30.0
) -> tuple[np.ndarray, np.ndarray]:
    """One ``spine_slice`` with (1-3) or without cord lesions.

    A lesion slice is redrawn (from ``rng``'s continuing stream) until its lesions cover at
    least ``min_lesion_area`` pixels at 128x128 (scaled by ``(size / 128) ** 2``): an ellipse
    that barely grazes the cord would be a label no reader could confirm.

    Returns:
      image float32[size, size] in [0, 1], lesion mask uint8[size, size] (all 0 without).
    """
    min_area = min_lesion_area * (size / 128.0) ** 2
    for _ in range(100):
        n = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15])) if lesion else 0
        image, mask = spine_slice(rng, size, num_lesions=n)
        if not lesion or mask.sum() >= min_area:
            return image, mask
    raise RuntimeError(f"no lesion of {min_area:.0f} px in 100 draws (size={size})")


@registry.register("synthetic.spine2d_cls")
def make_spine2d_cls(
    root: str,
    *,
    size: int = 128,
    num_per_class: int = 300,
    seed: int = 0,
) -> None:
    """Writes ``root/<class>/<case>.png`` (a ``classification_folder`` dataset).

    Classes ``lesion`` (1-3 hyperintense cord lesions of at least 30 px at 128x128) and
    ``no_lesion`` (the same anatomy, noise and bias, no lesion), ``num_per_class`` slices each,
    8-bit grayscale. There is no split folder: the pipeline carves the validation and test
    splits by a hash of the case id (``data.val_fraction``, ``data.test_fraction``).
    """
    for class_index, name in enumerate(SPINE_CLASSES):
        os.makedirs(os.path.join(root, name))
        for i in range(num_per_class):
            # Stream tag 7 keeps these slices apart from spine2d's [seed, split, i] streams.
            rng = np.random.default_rng([seed, 7, class_index, i])
            image, _ = spine_class_slice(rng, size, lesion=name == "lesion")
            Image.fromarray(np.round(image * 255).astype(np.uint8)).save(
                os.path.join(root, name, f"case_{i:04d}.png")
            )


def generators() -> dict[str, Callable[..., None]]:
    """The registered generator names (for error messages and docs)."""
    return {n: registry.get(f"synthetic.{n}") for n in registry.names("synthetic")}


# Other built-in generators register themselves on import (after ``ensure_dataset`` exists).
from medjax.data import synthetic3d  # noqa: E402, F401
