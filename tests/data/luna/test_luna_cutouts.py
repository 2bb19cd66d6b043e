"""Tests of cutout extraction and the cutout store (skips, reports, incremental re-runs)."""

import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from medjax import errors
from medjax.data.io import itk
from medjax.data.luna import csvs, cutouts, geometry


def test_interior_cutout_is_plain_slice_with_clipping():
    rng = np.random.default_rng(0)
    array = rng.integers(-2000, 2000, size=(20, 30, 40)).astype(np.int16)
    out = cutouts.extract_cutout(array, np.array([10.2, 14.6, 20.0]), (6, 8, 10))
    # Nearest voxel (10, 15, 20) minus size // 2 -> start (7, 11, 15).
    np.testing.assert_array_equal(out, np.clip(array[7:13, 11:19, 15:25], -1000, 1000))
    assert out.dtype == np.int16 and out.min() == -1000 and out.max() == 1000


def test_edge_cutouts_shift_inward():
    array = np.arange(20 * 30 * 40, dtype=np.float32).reshape(20, 30, 40) % 900
    size = (6, 8, 10)
    for centre, start in [
        ((0, 0, 0), (0, 0, 0)),
        ((19, 29, 39), (14, 22, 30)),
        ((2, 28, 5), (0, 22, 0)),
    ]:
        got = cutouts.cutout_start(array.shape, np.array(centre), size)
        np.testing.assert_array_equal(got, start)
        out = cutouts.extract_cutout(array, np.array(centre), size)
        sl = tuple(slice(a, a + s) for a, s in zip(start, size, strict=True))
        np.testing.assert_array_equal(out, array[sl])  # Never padded: fully inside the scan.
        assert out.dtype == np.float32


def test_small_scan_is_padded_with_air_and_centred():
    array = np.full((4, 30, 30), 55, np.int16)
    out = cutouts.extract_cutout(array, np.array([1.0, 15.0, 15.0]), (8, 10, 10))
    assert out.shape == (8, 10, 10)
    np.testing.assert_array_equal(out[:, 0, 0], [-1000, -1000, 55, 55, 55, 55, -1000, -1000])


def _write_case(root, uid, subset, array, direction, spacing_xyz, origin):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(origin)
    image.SetDirection(tuple(float(v) for v in np.ravel(direction)))
    (root / f"subset{subset}").mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(root / f"subset{subset}" / f"{uid}.mhd"))
    return image


def _ball_scan(centre_ijk, spacing_xyz, shape=(30, 60, 60), radius_mm=4.0):
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    dist = np.sqrt(
        ((i - centre_ijk[0]) * spacing_xyz[0]) ** 2
        + ((j - centre_ijk[1]) * spacing_xyz[1]) ** 2
        + ((k - centre_ijk[2]) * spacing_xyz[2]) ** 2
    )
    return np.where(dist <= radius_mm, 60, -850).astype(np.int16)


@pytest.mark.parametrize(
    "direction", [np.diag([-1.0, -1.0, 1.0]), [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]]
)
def test_cutout_of_a_nodule_is_centred_on_it(tmp_path, direction):
    spacing = (0.7, 0.7, 2.5)
    centre_ijk = (22.3, 40.0, 9.6)  # Off-centre in the scan, near the D edge for the window.
    image = _write_case(
        tmp_path, "s1", 0, _ball_scan(centre_ijk, spacing), direction, spacing, (-50, 20, -300)
    )
    xyz = image.TransformContinuousIndexToPhysicalPoint(centre_ijk)
    (tmp_path / "candidates.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,class\n" + "s1,{:f},{:f},{:f},1\n".format(*xyz)
    )
    (tmp_path / "annotations.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n" + "s1,{:f},{:f},{:f},8\n".format(*xyz)
    )
    size = (8, 24, 24)
    report = cutouts.build_cutout_store(
        tmp_path, tmp_path / "store", size=size, workers=0, progress=False
    )
    assert report["n_rows"] == 1
    cut = np.load(tmp_path / "store" / "cutouts.npy")[0]
    table = json.loads((tmp_path / "store" / "candidates.json").read_text())["columns"]
    assert table["diameter_mm"] == [8.0]
    centroid = np.array(ndimage.center_of_mass(cut > -400))
    # The window centre is voxel size // 2 (shifted inward only at an edge, which this is not).
    np.testing.assert_allclose(centroid, np.array(size) // 2, atol=1.0)
    expected = np.array(centre_ijk[::-1]) - [table[f"start_{a}"][0] for a in "dhw"]
    np.testing.assert_allclose(centroid, expected, atol=0.6)


def test_synthetic_nodule_cutouts_are_centred(luna_root, tmp_path):
    """Benign (non-spiculated) synthetic nodules: bright blob centroid at the cutout centre."""
    table = csvs.read_annotations(luna_root / "annotations_with_malignancy.csv")
    scans = csvs.find_scans(luna_root)
    checked = 0
    for a in table:
        if a.malignancy or a.diameter_mm < 5:
            continue
        volume = itk.read_itk(scans[a.seriesuid][1])
        centre = geometry.world_to_voxel(np.array(a.xyz), volume)
        size = (8, 24, 24)
        start = cutouts.cutout_start(volume.spatial_shape, centre, size)
        if np.any(start != geometry.nearest_voxel(centre) - np.array(size) // 2):
            continue  # Shifted at an edge: the nodule is legitimately off-centre.
        cut = cutouts.extract_cutout(volume.array, centre, size).astype(np.float64)
        # Within the annotated radius only, so touching vessels do not pull the centroid.
        grid = np.stack(np.meshgrid(*[np.arange(s) for s in size], indexing="ij"), -1)
        mm = (grid - (centre - start)) * np.asarray(volume.spacing)
        blob = (np.linalg.norm(mm, axis=-1) < a.diameter_mm / 2) & (cut > -400)
        np.testing.assert_allclose(ndimage.center_of_mass(blob), centre - start, atol=1.0)
        checked += 1
    assert checked >= 1


@pytest.fixture
def faulty_root(luna_root, tmp_path):
    """A copy of the synthetic data: a missing scan, a truncated .raw, an outside candidate."""
    root = tmp_path / "faulty"
    shutil.copytree(luna_root, root)
    scans = sorted(csvs.find_scans(root).items())
    (missing_uid, (_, missing)), (trunc_uid, (_, trunc)) = scans[0], scans[1]
    missing.unlink()
    raw = trunc.with_suffix(".raw")
    raw.write_bytes(raw.read_bytes()[:1000])
    outside_uid = scans[2][0]
    with open(root / "candidates.csv", "a") as f:
        f.write(f"{outside_uid},9999.0,9999.0,9999.0,0\n")
    return root, missing_uid, trunc_uid, outside_uid


def test_store_reports_bad_scans_and_candidates(faulty_root):
    root, missing_uid, trunc_uid, outside_uid = faulty_root
    out = root / "store"
    report = cutouts.build_cutout_store(root, out, size=(8, 16, 16), workers=0, progress=False)
    assert json.loads((out / "report.json").read_text()) == report
    reasons = {s["seriesuid"]: s["reason"] for s in report["skipped_scans"]}
    assert set(reasons) == {missing_uid, trunc_uid}
    assert "no " in reasons[missing_uid] and missing_uid in reasons[missing_uid]
    assert "unreadable" in reasons[trunc_uid] and trunc_uid in reasons[trunc_uid]
    (bad,) = report["skipped_candidates"]
    assert (
        bad["seriesuid"] == outside_uid and "outside" in bad["reason"] and bad["coordX"] == 9999.0
    )
    # The rest is written: every candidate of the two good scans except the outside one.
    cands = csvs.load_candidates(root)
    good = [c for c in cands if c.seriesuid not in reasons and c.xyz[0] != 9999.0]
    store = np.load(out / "cutouts.npy", mmap_mode="r")
    manifest = json.loads((out / "candidates.json").read_text())
    assert store.shape == (len(good), 8, 16, 16) and store.dtype == np.int16
    assert manifest["columns"]["seriesuid"] == [c.seriesuid for c in good]
    assert manifest["columns"]["class"] == [c.label for c in good]
    assert store.min() >= -1000 and store.max() <= 1000
    assert not [p for p in os.listdir(out) if "tmp" in p or p == "parts"]
    with pytest.raises(errors.DataError, match="skipped"):
        cutouts.build_cutout_store(
            root, out, size=(8, 16, 16), workers=0, progress=False, strict=True
        )


def test_store_rerun_is_incremental(luna_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(luna_root, root)
    out = tmp_path / "store"
    kw = dict(size=(8, 16, 16), progress=False)
    first = cutouts.build_cutout_store(root, out, workers=2, **kw)  # Spawned workers.
    data1 = np.load(out / "cutouts.npy").copy()
    again = cutouts.build_cutout_store(root, out, workers=0, **kw)
    assert (again["n_scans_new"], again["n_scans_reused"]) == (0, first["n_scans"])
    np.testing.assert_array_equal(np.load(out / "cutouts.npy"), data1)
    # Change one scan's voxels (same size, new mtime): only that scan is redone.
    uid, (_, mhd) = sorted(csvs.find_scans(root).items())[1]
    image = sitk.ReadImage(str(mhd))
    sitk.WriteImage(image * 0 + 7, str(mhd))
    third = cutouts.build_cutout_store(root, out, workers=0, **kw)
    assert (third["n_scans_new"], third["n_scans_reused"]) == (1, first["n_scans"] - 1)
    data3 = np.load(out / "cutouts.npy")
    rows = (
        np.array(json.loads((out / "candidates.json").read_text())["columns"]["seriesuid"]) == uid
    )
    assert np.all(data3[rows] == 7)
    np.testing.assert_array_equal(data3[~rows], data1[~rows])
