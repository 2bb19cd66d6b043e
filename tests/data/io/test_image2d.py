"""Tests for medjax.data.io.image2d: real PNG/TIFF/BMP/JPEG files written in tmp_path."""

import os

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


# --- multi-page TIFF stacks ----------------------------------------------------------------------


def _save_stack(path, arrays, **kwargs):
    pages = [Image.fromarray(a) for a in arrays]
    pages[0].save(path, save_all=True, append_images=pages[1:], **kwargs)


def test_multipage_tiff_reads_as_volume_with_resolution_and_imagej_spacing(tmp_path):
    pages = [_gray() * 0 + np.uint8(k) + _gray() // 4 for k in range(3)]
    path = tmp_path / "stack.tif"
    description = "ImageJ=1.54f\nimages=3\nslices=3\nunit=mm\nspacing=2.5\n"
    # 127 dpi down the rows (y) and 254 dpi along the columns (x): 0.2 mm x 0.1 mm pixels.
    _save_stack(path, pages, dpi=(254, 127), description=description)
    vol = image2d.read_image2d(path)
    assert vol.array.shape == (3, 12, 20) and vol.array.dtype == np.uint8
    np.testing.assert_array_equal(vol.array, np.stack(pages))
    np.testing.assert_allclose(vol.spacing, (2.5, 25.4 / 127, 25.4 / 254), rtol=1e-9)
    assert vol.origin == (0.0, 0.0, 0.0)
    np.testing.assert_array_equal(vol.direction, np.eye(3))
    assert vol.meta["pages"] == 3 and vol.meta["spacing_source"] == (
        "pages: imagej, in-plane: metadata"
    )
    # Through the public entry point too.
    from medjax.data import io as io_lib

    assert io_lib.read_volume(path).array.shape == (3, 12, 20)


def test_multipage_tiff_without_metadata_rgb_and_uint16(tmp_path):
    rgb = [np.stack([_gray(), _gray() // 2, _gray() // 3], axis=-1) + k for k in range(2)]
    _save_stack(tmp_path / "rgb.tif", rgb)
    vol = image2d.read_image2d(tmp_path / "rgb.tif")
    assert vol.array.shape == (2, 12, 20, 3)
    np.testing.assert_array_equal(vol.array, np.stack(rgb))
    assert vol.spacing == (1.0, 1.0, 1.0) and vol.meta["spacing_source"].startswith("pages: def")
    wide = [(np.arange(6 * 7).reshape(6, 7) * 1000 + k).astype(np.uint16) for k in range(4)]
    _save_stack(tmp_path / "wide.tif", wide)
    back = image2d.read_image2d(tmp_path / "wide.tif")
    assert back.array.dtype == np.uint16 and back.array.shape == (4, 6, 7)
    np.testing.assert_array_equal(back.array, np.stack(wide))


def test_multipage_tiff_imagej_unitless_resolution_in_microns(tmp_path):
    path = tmp_path / "micro.tif"
    # ImageJ: 2 pixels per micron in x and y (ResolutionUnit none), 3 micron between slices.
    description = "ImageJ=1.54f\nimages=2\nslices=2\nunit=micron\nspacing=3\n"
    _save_stack(
        path, [_gray(), _gray()], resolution=2.0, resolution_unit=1, description=description
    )
    vol = image2d.read_image2d(path)
    np.testing.assert_allclose(vol.spacing, (0.003, 0.0005, 0.0005), rtol=1e-9)
    assert vol.meta["spacing_source"] == "pages: imagej, in-plane: imagej"


def test_multipage_tiff_palette_label_pages(tmp_path):
    masks = []
    for k in range(2):
        m = np.zeros((8, 8), np.uint8)
        m[k : k + 3, 2:5] = k + 1
        masks.append(m)
    pages = []
    for m in masks:
        p = Image.fromarray(m, mode=None).convert("P")
        p.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
        pages.append(p)
    pages[0].save(tmp_path / "mask.tif", save_all=True, append_images=pages[1:])
    vol = image2d.read_image2d(tmp_path / "mask.tif", label=True)
    np.testing.assert_array_equal(vol.array, np.stack(masks))


@pytest.mark.parametrize("odd", ["size", "mode"])
def test_multipage_tiff_pages_that_differ_raise(tmp_path, odd):
    first = Image.fromarray(_gray())
    other = Image.fromarray(_gray(10, 20)) if odd == "size" else first.convert("RGB")
    path = tmp_path / "mixed.tif"
    first.save(path, save_all=True, append_images=[first, other])
    with pytest.raises(errors.DataError, match=r"mixed\.tif: page 2 is .* but page 0 is 12x20"):
        image2d.read_image2d(path)


def test_multipage_gif_is_still_refused(tmp_path):
    path = tmp_path / "anim.gif"
    _save_stack(path, [_gray(), _gray() + 1])
    with pytest.raises(errors.DataError, match="only TIFF stacks"):
        image2d.read_image2d(path)


def test_tiff_without_resolution_tags_is_1mm_not_pillows_1dpi_default(tmp_path):
    # Pillow reports dpi (1, 1) for a TIFF without resolution tags: that is not 25.4 mm pixels.
    Image.fromarray(_gray()).save(tmp_path / "plain.tif")
    assert 282 not in Image.open(tmp_path / "plain.tif").tag_v2
    vol = image2d.read_image2d(tmp_path / "plain.tif")
    assert vol.spacing == (1.0, 1.0) and vol.meta["spacing_source"] == "default"


@pytest.mark.parametrize("cut", [0.5, 0.8, 0.95])
def test_truncated_multipage_tiff_names_the_file(tmp_path, cut):
    path = tmp_path / "cut.tif"
    _save_stack(path, [np.full((40, 50), k, np.uint8) for k in range(3)])
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * cut))
    with pytest.raises(errors.DataError, match=r"cut\.tif: (cannot read|corrupt or truncated)"):
        image2d.read_image2d(path)
