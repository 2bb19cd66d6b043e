"""Tests for medjax.data.preprocess.pipeline: preprocess_case / invert_prediction."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from medjax import errors
from medjax.data import crawlers, crawlers_volume
from medjax.data.io import image2d
from medjax.data.io import volume as volume_lib
from medjax.data.preprocess import pipeline


def _vol(array, spacing=None, origin=None, direction=None, **meta):
    n = 3 if (array.ndim == 3 and spacing is None) or (spacing and len(spacing) == 3) else 2
    spacing = spacing or (1.0,) * n
    return volume_lib.Volume(
        array,
        spacing,
        origin or (0.0,) * n,
        np.eye(n) if direction is None else direction,
        meta,
    )


def _png_pair(tmp_path, h=20, w=24):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[5:12, 6:15] = 255
    Image.fromarray(rgb).save(tmp_path / "img.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return rgb, mask


# --- the 2D PNG path (what the 2D end-to-end run uses) ------------------------------------------


def test_2d_png_grayscale_minmax_binary_no_resize(tmp_path):
    rgb, mask = _png_pair(tmp_path)
    image = image2d.read_image2d(tmp_path / "img.png")
    label = image2d.read_image2d(tmp_path / "mask.png", label=True)
    spec = {
        "grayscale": True,
        "normalization": {"name": "minmax", "min": 0, "max": 255},
        "label_mode": "binary",
    }
    x, y, props = pipeline.preprocess_case(image, label, spec)
    assert x.dtype == np.float32 and x.shape == (20, 24, 1)
    assert y.dtype == np.uint8 and y.shape == (20, 24)
    ref = (rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])) / 255.0
    np.testing.assert_allclose(x[..., 0], ref, atol=1e-6)
    # Pillow's own luminance conversion agrees to within one grey level.
    pil = np.asarray(Image.fromarray(rgb).convert("L"), np.float64) / 255.0
    assert np.abs(x[..., 0] - pil).max() <= 1.0 / 255 + 1e-6
    np.testing.assert_array_equal(y, (mask > 0).astype(np.uint8))
    assert props["label_values"] == [0, 1]
    json.dumps(props)  # JSON-able


def test_2d_png_resize_zscore_and_invert(tmp_path):
    _, mask = _png_pair(tmp_path, 8, 12)
    image = image2d.read_image2d(tmp_path / "img.png")
    label = image2d.read_image2d(tmp_path / "mask.png", label=True)
    spec = {
        "grayscale": True,
        "target_size": (16, 24),
        "normalization": {"name": "zscore"},
        "label_mode": "binary",
    }
    x, y, props = pipeline.preprocess_case(image, label, spec)
    assert x.shape == (16, 24, 1) and y.shape == (16, 24)
    gray = np.asarray(image.array, np.float64) @ np.array([0.299, 0.587, 0.114])
    z = (gray - gray.mean()) / gray.std()
    ref = ndimage.zoom(z, 2, order=3, mode="nearest", grid_mode=True)
    np.testing.assert_allclose(x[..., 0], ref, atol=1e-4)
    np.testing.assert_allclose(props["normalization"]["mean"], [gray.mean()], rtol=1e-9)
    # Upsampling 2x then back is exact for 2D labels: per-label linear gives each fine voxel
    # its own coarse voxel's label (weight 0.75**2 > 0.5), and going back averages two fine
    # voxels of one block; so the identity "prediction" inverts to the original mask.
    back = pipeline.invert_prediction(y, json.loads(json.dumps(props)))
    np.testing.assert_array_equal(back.array, (mask > 0).astype(np.uint8))
    assert back.spacing == image.spacing and back.origin == image.origin
    np.testing.assert_allclose(props["spacing_mm"], [0.5, 0.5])


def test_synthetic_segmentation_dataset_end_to_end(tmp_path):
    from medjax.data import synthetic

    synthetic.make_spine2d(str(tmp_path), size=32, num_train=2, num_val=1, num_test=1)
    cases = crawlers.get_segmentation_file()(str(tmp_path))
    assert len(cases) == 4
    for case in cases:
        image = image2d.read_image2d(case["image"])
        label = image2d.read_image2d(case["label"], label=True)
        x, y, _ = pipeline.preprocess_case(
            image, label, {"target_size": (16, 16), "label_mode": "binary"}
        )
        assert x.shape == (16, 16, 1) and np.isfinite(x).all()
        assert set(np.unique(y)) <= {0, 1}


def test_probabilities_invert_sum_to_one_with_crop(tmp_path):
    del tmp_path
    img = np.zeros((12, 10), np.float32)
    img[3:9, 2:7] = np.arange(30).reshape(6, 5) + 1
    x, _, props = pipeline.preprocess_case(
        _vol(img), None, {"crop_foreground": True, "target_size": (12, 10)}
    )
    assert props["crop_box"] == [[3, 9], [2, 7]]
    probs = np.random.default_rng(0).dirichlet([1, 1, 1], size=(12, 10)).astype(np.float32)
    back = pipeline.invert_prediction(probs, props)
    assert back.array.shape == (12, 10, 3)
    np.testing.assert_allclose(back.array.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(back.array[0, 0], [1, 0, 0])  # outside the crop: background


# --- label checks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, word",
    [
        ({"array": np.zeros((5, 4), np.uint8)}, "shape"),
        ({"spacing": (1.0, 2.0)}, "spacing"),
        ({"origin": (0.0, 3.5)}, "origin"),
        ({"direction": np.array([[0.0, 1.0], [1.0, 0.0]])}, "direction"),
    ],
)
def test_label_geometry_mismatch_names_what(change, word):
    image = _vol(np.ones((4, 4), np.float32), path="img.png")
    kw = {
        "array": np.zeros((4, 4), np.uint8),
        "spacing": (1.0, 1.0),
        "origin": (0.0, 0.0),
        "direction": np.eye(2),
    }
    kw.update(change)
    label = volume_lib.Volume(kw["array"], kw["spacing"], kw["origin"], kw["direction"])
    with pytest.raises(errors.DataError, match=word) as info:
        pipeline.preprocess_case(image, label, {})
    assert "img.png" in str(info.value)


def test_bad_spec_and_bad_labels():
    image = _vol(np.ones((4, 4), np.float32))
    with pytest.raises(errors.ConfigError, match="unknown_key"):
        pipeline.preprocess_case(image, None, {"unknown_key": 1})
    with pytest.raises(errors.ConfigError, match="allowed"):
        pipeline.preprocess_case(image, None, {"normalization": {"name": "fancy"}})
    with pytest.raises(errors.ConfigError, match="3D"):
        pipeline.preprocess_case(image, None, {"reorient": "RAS"})
    with pytest.raises(errors.DataError, match="uint8"):
        pipeline.preprocess_case(image, _vol(np.full((4, 4), 300, np.int32)), {})
    with pytest.raises(errors.DataError, match="integers"):
        pipeline.preprocess_case(image, _vol(np.full((4, 4), 0.5, np.float32)), {})


def test_none_from_the_command_line_unsets_a_tuple_option():
    # ml_collections parses "--config.data.preprocess.target_size=None" on a tuple placeholder
    # as (None,); it means "no resize", not a bad tuple.
    spec = pipeline.resolve_spec({"target_size": (None,), "target_spacing_mm": [None]})
    assert spec["target_size"] is None and spec["target_spacing_mm"] is None
    with pytest.raises(errors.ConfigError, match="tuple of numbers"):
        pipeline.resolve_spec({"target_size": (None, 4)})


# --- 3D geometry: every voxel keeps its world position ------------------------------------------


def _world_of_values(array, spacing, origin, direction):
    """value -> world position of the voxel holding it (values are unique)."""
    vol = volume_lib.Volume(array, spacing, origin, direction)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in array.shape], indexing="ij"), -1)
    world = vol.index_to_world(idx.reshape(-1, 3))
    return dict(zip(array.reshape(-1).astype(int).tolist(), world, strict=True))


@pytest.mark.parametrize("code", ["LPS", "RAS"])
def test_reorient_and_crop_keep_world_positions(code):
    # Oblique-ish direction with permuted and flipped axes (a rotation by 10 degrees about z).
    c, s = np.cos(np.deg2rad(10)), np.sin(np.deg2rad(10))
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    perm_flip = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float)  # D->-? mixed
    direction = rot @ perm_flip
    shape = (4, 5, 6)
    array = np.arange(1, 1 + np.prod(shape), dtype=np.float64).reshape(shape)
    array[0] = 0  # a zero slab that crop_foreground removes
    spacing, origin = (1.5, 0.7, 2.0), (10.0, -20.0, 5.0)
    image = _vol(array, spacing, origin, direction)
    spec = {"reorient": code, "crop_foreground": True, "normalization": {"name": "none"}}
    x, _, props = pipeline.preprocess_case(image, None, spec)
    new_dir = np.asarray(props["direction"])
    expected_axes = {"LPS": [(2, 1), (1, 1), (0, 1)], "RAS": [(2, 1), (1, -1), (0, -1)]}[code]
    for b, (world_axis, sign) in enumerate(expected_axes):
        assert np.argmax(np.abs(new_dir[:, b])) == world_axis
        assert np.sign(new_dir[world_axis, b]) == sign
    before = _world_of_values(array, spacing, origin, direction)
    after = _world_of_values(x[..., 0], props["spacing_mm"], props["origin"], new_dir)
    assert 0 not in after  # the zero slab was cropped away
    for value, world in after.items():
        np.testing.assert_allclose(world, before[value], atol=1e-9)
    back = pipeline.invert_prediction(x[..., 0].astype(np.int64), props)
    expected = array.astype(np.int64)
    np.testing.assert_array_equal(back.array, expected)
    np.testing.assert_allclose(back.affine, image.affine)


def test_resample_to_spacing_keeps_a_linear_world_function():
    # f(world) = a . world + b sampled on an oblique grid; linear resampling must reproduce f at
    # the new voxel centres (away from the clamped border), which checks spacing and origin.
    direction = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))[0]
    spacing, origin = (2.0, 1.0, 1.5), (3.0, -4.0, 7.0)
    shape = (10, 12, 9)
    a, b = np.array([0.3, -0.2, 0.5]), 4.0
    vol = _vol(np.zeros(shape), spacing, origin, direction)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    values = vol.index_to_world(idx) @ a + b
    spec = {"target_spacing_mm": (1.0, 2.0, 0.75), "normalization": {"name": "none"}}
    spec["image_order"] = 1
    x, _, props = pipeline.preprocess_case(vol.with_array(values), None, spec)
    assert list(x.shape[:3]) == [20, 6, 18]
    np.testing.assert_allclose(props["spacing_mm"], [1.0, 2.0, 0.75])
    new = _vol(np.zeros(x.shape[:3]), props["spacing_mm"], props["origin"], direction)
    new_idx = np.stack(np.meshgrid(*[np.arange(s) for s in x.shape[:3]], indexing="ij"), -1)
    ref = new.index_to_world(new_idx) @ a + b
    inner = (slice(2, -2), slice(1, -1), slice(2, -2))
    np.testing.assert_allclose(x[..., 0][inner], ref[inner], atol=1e-4)


def test_load_case_dicom_folder_with_two_series(tmp_path):
    pytest.importorskip("medjax.data.io.dicom")
    dicom_dir = os.path.join(os.path.dirname(__file__), "..", "dicom")
    if not os.path.isdir(dicom_dir):
        pytest.skip("DICOM test data not present")
    shutil.copytree(os.path.join(dicom_dir, "ct_series_reduced_CT5N"), tmp_path / "mixed")
    shutil.copy(os.path.join(dicom_dir, "ct_single", "CT_small.dcm"), tmp_path / "mixed")
    cases = crawlers_volume.get_dicom_series()(str(tmp_path))
    # The 5-slice series' image is the folder that also holds CT_small.dcm: series_uid decides.
    assert len(cases) == 2
    assert str(tmp_path / "mixed") in [c["image"] for c in cases]
    shapes = sorted(pipeline.load_case(c)[0].array.shape for c in cases)
    assert shapes == [(1, 128, 128), (5, 16, 16)]
