"""Tests for medjax.data.io.image2d: real PNG/TIFF/BMP/JPEG files written in tmp_path."""

import numpy as np
import pytest
from PIL import Image

from medjax import errors
from medjax.data.io import image2d
from medjax.data.io import volume as volume_lib


def _gray(h=12, w=20, dtype=np.uint8):
    return (np.arange(h * w).reshape(h, w) * 7 % np.iinfo(dtype).max).astype(dtype)


def test_png_gray_roundtrip_with_spacing(tmp_path):
    array = _gray()
    path = tmp_path / "a.png"
    vol = volume_lib.Volume(array, (0.5, 0.25), (0, 0), np.eye(2))
    image2d.write_image2d(vol, path)
    back = image2d.read_image2d(path)
    assert back.array.dtype == np.uint8 and back.array.shape == (12, 20)
    np.testing.assert_array_equal(back.array, array)
    # pHYs stores whole pixels per metre: 2000 and 4000 px/m are exact.
    np.testing.assert_allclose(back.spacing, (0.5, 0.25), rtol=1e-9)
    assert back.origin == (0.0, 0.0)
    np.testing.assert_array_equal(back.direction, np.eye(2))
    assert back.meta["spacing_source"] == "metadata"


def test_png_uint16_roundtrip(tmp_path):
    array = (np.arange(8 * 9).reshape(8, 9) * 900).astype(np.uint16)
    assert array.max() > 255
    path = tmp_path / "b.png"
    image2d.write_image2d(volume_lib.Volume(array, (1, 1), (0, 0), np.eye(2)), path)
    # Independent check of the file itself with Pillow: 16-bit grayscale.
    assert Image.open(path).mode.startswith("I")
    back = image2d.read_image2d(path)
    assert back.array.dtype == np.uint16
    np.testing.assert_array_equal(back.array, array)


def test_rgb_and_rgba_and_default_spacing(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (10, 11, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    vol = image2d.read_image2d(tmp_path / "c.png")
    assert vol.array.shape == (10, 11, 3)
    np.testing.assert_array_equal(vol.array, rgb)
    assert vol.spacing == (1.0, 1.0) and vol.meta["spacing_source"] == "default"
    rgba = np.concatenate([rgb, np.full((10, 11, 1), 200, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "d.png")
    assert image2d.read_image2d(tmp_path / "d.png").array.shape == (10, 11, 4)


def test_tiff_resolution_in_cm_and_jpeg(tmp_path):
    array = _gray()
    # 40 px/cm = 0.25 mm along x; 20 px/cm = 0.5 mm along y (rows).
    Image.fromarray(array).save(
        tmp_path / "e.tif", resolution_unit=3, x_resolution=40.0, y_resolution=20.0
    )
    vol = image2d.read_image2d(tmp_path / "e.tif")
    np.testing.assert_allclose(vol.spacing, (0.5, 0.25), rtol=1e-6)
    np.testing.assert_array_equal(vol.array, array)
    Image.fromarray(array).save(tmp_path / "f.jpg", quality=95)
    jpg = image2d.read_image2d(tmp_path / "f.jpg")
    assert jpg.array.shape == array.shape
    assert np.abs(jpg.array.astype(int) - array).mean() < 8  # lossy, but the same picture


def test_bmp_default_96dpi_is_not_a_spacing(tmp_path):
    Image.fromarray(_gray()).save(tmp_path / "g.bmp")  # Pillow writes 96 dpi by default
    assert image2d.read_image2d(tmp_path / "g.bmp").spacing == (1.0, 1.0)
    assert image2d.read_image2d(tmp_path / "g.bmp", spacing_from_metadata=False).spacing == (1, 1)


def test_palette_mask_reads_indices_with_label_true(tmp_path):
    idx = np.zeros((6, 7), np.uint8)
    idx[2:4, 3:6] = 2
    idx[0, 0] = 1
    img = Image.fromarray(idx, "P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    img.save(tmp_path / "m.png")
    np.testing.assert_array_equal(image2d.read_image2d(tmp_path / "m.png", label=True).array, idx)
    rgb = image2d.read_image2d(tmp_path / "m.png").array
    assert rgb.shape == (6, 7, 3) and tuple(rgb[2, 3]) == (0, 255, 0)


def test_colour_mask_with_equal_channels_and_unequal(tmp_path):
    gray = np.zeros((5, 5), np.uint8)
    gray[1:3, 1:3] = 255
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "eq.png")
    np.testing.assert_array_equal(image2d.read_image2d(tmp_path / "eq.png", label=True).array, gray)
    rgb = np.zeros((5, 5, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "neq.png")
    with pytest.raises(errors.DataError, match="neq.png"):
        image2d.read_image2d(tmp_path / "neq.png", label=True)


@pytest.mark.parametrize("cut", [12, 20, 200])
def test_truncated_png_raises_data_error_naming_file(tmp_path, cut):
    path = tmp_path / "trunc.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32), np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    with pytest.raises(errors.DataError, match="trunc.png"):
        image2d.read_image2d(path)


def test_corrupt_and_missing_and_truncated_jpeg(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"not an image at all")
    with pytest.raises(errors.DataError, match="x.png"):
        image2d.read_image2d(path)
    with pytest.raises(errors.DataError, match="nope.png"):
        image2d.read_image2d(tmp_path / "nope.png")
    jpg = tmp_path / "t.jpg"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64), np.uint8)).save(jpg)
    jpg.write_bytes(jpg.read_bytes()[:300])
    with pytest.raises(errors.DataError, match="t.jpg"):
        image2d.read_image2d(jpg)


def test_write_rejects_float_and_out_of_range(tmp_path):
    vol = volume_lib.Volume(np.zeros((4, 4), np.float32), (1, 1), (0, 0), np.eye(2))
    with pytest.raises(errors.DataError, match="cast"):
        image2d.write_image2d(vol, tmp_path / "f.png")
    vol = volume_lib.Volume(np.full((4, 4), 70000, np.int64), (1, 1), (0, 0), np.eye(2))
    with pytest.raises(errors.DataError, match="70000"):
        image2d.write_image2d(vol, tmp_path / "g.png")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_write_bool_mask_and_int_label_as_uint8_or_uint16(tmp_path):
    mask = np.zeros((4, 5), bool)
    mask[1, 2] = True
    image2d.write_image2d(volume_lib.Volume(mask, (1, 1), (0, 0), np.eye(2)), tmp_path / "m.png")
    back = image2d.read_image2d(tmp_path / "m.png")
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, mask.astype(np.uint8))
    lab = np.arange(20, dtype=np.int32).reshape(4, 5)
    image2d.write_image2d(volume_lib.Volume(lab, (1, 1), (0, 0), np.eye(2)), tmp_path / "l.png")
    back = image2d.read_image2d(tmp_path / "l.png")
    np.testing.assert_array_equal(back.array, lab)  # int32 is written as 16-bit, values kept
