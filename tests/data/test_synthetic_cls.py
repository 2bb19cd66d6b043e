"""The built-in classification set ``spine2d_cls``, and spine2d left as it was."""

import hashlib
import os

import numpy as np
from PIL import Image

from medjax import registry
from medjax.data import synthetic


def test_spine2d_slices_are_unchanged():
    # sha1 of spine_slice(default_rng([0, 0, i]), 64) for i < 3, taken from the generator
    # before num_lesions existed: spine2d caches and store hashes depend on these bytes.
    h = hashlib.sha1()
    for i in range(3):
        image, mask = synthetic.spine_slice(np.random.default_rng([0, 0, i]), 64)
        h.update(image.tobytes())
        h.update(mask.tobytes())
    assert h.hexdigest() == "bb92da2900c06f96296ee10c2b661f0b16501906"


def test_class_folder_layout_and_labels(tmp_path):
    registry.get("synthetic.spine2d_cls")(str(tmp_path), size=64, num_per_class=3)
    assert sorted(os.listdir(tmp_path)) == ["lesion", "no_lesion"]
    names = ("no_lesion", "lesion")
    crawl = registry.lookup("crawlers", "classification_folder", class_names=names)
    cases = crawl(str(tmp_path))
    assert len(cases) == 6
    for case in cases:
        assert case["class_index"] == (os.path.basename(os.path.dirname(case["image"])) == "lesion")
        image = np.asarray(Image.open(case["image"]))
        assert image.shape == (64, 64) and image.dtype == np.uint8


def test_lesion_slices_have_visible_lesions_and_others_none():
    for i in range(6):
        image, mask = synthetic.spine_class_slice(np.random.default_rng([1, i]), 64, True)
        assert mask.sum() >= 30 * (64 / 128) ** 2  # the minimum area, scaled to 64x64
        # Lesions (0.60-0.88 before blur, bias and noise) outshine the slice on average.
        assert image[mask > 0].mean() > image.mean() + 0.1
        image, mask = synthetic.spine_class_slice(np.random.default_rng([1, i]), 64, False)
        assert mask.sum() == 0
