"""The fingerprint in the store: written, cached, and resolving "auto" spec fields.

References are numpy float64 computations over the voxels the test itself generated and wrote
with nibabel directly (not with medjax's writer), plus hand-computed nnU-Net target spacings.
"""

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from medjax import errors, registry
from medjax.data import store
from medjax.data.preprocess import fingerprint

AUTO_CT = {
    "target_spacing_mm": "auto",
    "normalization": {"name": "auto"},
    "modality": "CT",
    "label_mode": "binary",
    "image_order": 1,
}


def _write_case(root, name, shape, spacing, seed, fg_mean):
    """A body box of noise (background 0) with a labelled box of mean ``fg_mean``.

    ``shape`` and ``spacing`` are in medjax's array order ``(D, H, W)``; the NIfTI file stores
    ``(i, j, k) = (W, H, D)`` with ``affine = diag(sx, sy, sz)``. Returns the float64
    foreground voxels (the reference for the fingerprint's intensity statistics).
    """
    rng = np.random.default_rng(seed)
    image = np.zeros(shape, np.float32)
    image[1:-1, 2:-2, 2:-2] = rng.normal(0.0, 20.0, (shape[0] - 2, shape[1] - 4, shape[2] - 4))
    label = np.zeros(shape, np.uint8)
    label[1:-1, 4:9, 5:11] = 1
    image[label > 0] = rng.normal(fg_mean, 15.0, int(label.sum())).astype(np.float32)
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    for folder, array, suffix in (("imagesTr", image, "_0000"), ("labelsTr", label, "")):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        nib.save(
            nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine),
            os.path.join(root, folder, f"{name}{suffix}.nii.gz"),
        )
    return image[label > 0].astype(np.float64)


def _crawl(root):
    return registry.lookup("crawlers", "nifti_volume")(root)


# Thick slices (3, 5, 6 mm) and few of them (4 vs 16 in-plane): nnU-Net's anisotropic case.
ANISO = [
    ("a", (4, 16, 16), (3.0, 0.8, 0.8), 100.0),
    ("b", (4, 16, 16), (5.0, 1.0, 1.0), 200.0),
    ("c", (4, 16, 16), (6.0, 0.9, 0.9), 300.0),
]


def _dataset(root, specs):
    return {
        name: _write_case(root, name, shape, spacing, seed=i, fg_mean=mean)
        for i, (name, shape, spacing, mean) in enumerate(specs)
    }


def test_fingerprint_written_and_auto_ct_spec_anisotropic(tmp_path):
    root, out = str(tmp_path / "data"), str(tmp_path / "store")
    fg = _dataset(root, ANISO)
    manifest = store.build_store(_crawl(root), out, AUTO_CT)

    with open(os.path.join(out, "fingerprint.json")) as f:
        fp = json.load(f)
    assert fp["num_cases"] == 3 and fp["case_ids"] == ["a", "b", "c"]
    # NIfTI headers hold float32 spacings: 0.9 is 0.8999999761.
    spacings = [sp for _, _, sp, _ in ANISO]
    np.testing.assert_allclose(fp["spacings"], spacings, rtol=1e-7)
    np.testing.assert_allclose(fp["median_spacing_mm"], np.median(spacings, axis=0), rtol=1e-7)
    assert fp["median_shape"] == [4, 16, 16]
    # Body box (4-2) x (16-4) x (16-4) of 4 x 16 x 16 in every case.
    assert fp["median_relative_size_after_crop"] == pytest.approx(2 * 12 * 12 / (4 * 16 * 16))
    allfg = np.concatenate([fg[k] for k in "abc"])  # 60 voxels per case: all of them sampled
    assert fp["num_foreground_samples"] == allfg.size
    stats = fp["foreground_intensity"][0]
    p005, p50, p995 = np.percentile(allfg, [0.5, 50, 99.5])
    assert stats["percentile_00_5"] == pytest.approx(p005, rel=1e-12)
    assert stats["median"] == pytest.approx(p50, rel=1e-12)
    assert stats["percentile_99_5"] == pytest.approx(p995, rel=1e-12)
    assert stats["mean"] == pytest.approx(allfg.mean(), rel=1e-12)
    assert stats["std"] == pytest.approx(allfg.std(), rel=1e-12)

    # Target spacing by hand: z is thick (5 > 3 x 0.9) and short (4 x 3 < 16), so it gets the
    # 10th percentile of (3, 5, 6) = 3 + 0.2 x (5 - 3) = 3.4; in-plane is the median 0.9.
    spec = manifest["spec"]
    assert spec["target_spacing_mm"] == pytest.approx([3.4, 0.9, 0.9])
    assert spec["normalization"] == {
        "name": "ct",
        "window": pytest.approx([p005, p995], rel=1e-12),
        "mean": pytest.approx(allfg.mean(), rel=1e-12),
        "std": pytest.approx(allfg.std(), rel=1e-12),
    }
    # The resolved numbers are what the store hashes and what each case used.
    assert "auto" not in json.dumps(spec)
    assert manifest["spec_hash"] == store.spec_hash(spec)
    assert manifest["auto_fields"] == ["target_spacing_mm", "normalization"]
    assert manifest["requested_spec"]["target_spacing_mm"] == "auto"
    on_disk = store.load_manifest(out)
    assert on_disk["spec"] == spec
    case_a = manifest["cases"][0]
    assert case_a["props"]["normalization"]["window"] == pytest.approx([p005, p995], rel=1e-12)
    # Case a (3 mm) resampled to 3.4 mm: 4 slices x 3 / 3.4 -> round(3.53) = 4; in-plane
    # 16 x 0.8 / 0.9 = 14.2 -> 14.
    assert case_a["shape"] == [4, 14, 14]
    image = np.load(os.path.join(store.case_dir(out, "a"), "image.npy"))
    lo = (p005 - allfg.mean()) / allfg.std()
    hi = (p995 - allfg.mean()) / allfg.std()
    # Linear resampling of clipped values stays inside the clipped range.
    assert image.min() >= lo - 1e-4 and image.max() <= hi + 1e-4

    text = store.describe(out)
    assert "fingerprint of 3 case(s)" in text and "3.4" in text and '"name": "ct"' in text


def test_auto_isotropic_median_and_mr_zscore(tmp_path):
    # Same spacings, but 12 slices: 12 x 3 >= 16, so not "few thick slices": plain median.
    root, out = str(tmp_path / "data"), str(tmp_path / "store")
    _dataset(root, [(n, (12, 16, 16), sp, m) for n, _, sp, m in ANISO])
    spec = {**AUTO_CT, "modality": "MR"}
    manifest = store.build_store(_crawl(root), out, spec)
    assert manifest["spec"]["target_spacing_mm"] == pytest.approx([5.0, 0.9, 0.9])
    # The body crop keeps (10 x 12 x 12) / (12 x 16 x 16) = 47% < 75%: z-score inside the body.
    assert manifest["spec"]["normalization"] == {"name": "zscore", "use_mask": True}


def test_fingerprint_cached_per_case_and_recomputed_on_change(tmp_path, monkeypatch):
    root, out = str(tmp_path / "data"), str(tmp_path / "store")
    fg = _dataset(root, ANISO)
    first = store.build_store(_crawl(root), out, AUTO_CT)
    fp_path = os.path.join(out, "fingerprint.json")
    before = os.stat(fp_path).st_mtime_ns

    reads = []
    real = fingerprint.case_summary

    def counting_summary(image, *args, **kwargs):
        reads.append(image.meta["path"])
        return real(image, *args, **kwargs)

    monkeypatch.setattr(fingerprint, "case_summary", counting_summary)
    again = store.build_store(_crawl(root), out, AUTO_CT)
    assert reads == [] and os.stat(fp_path).st_mtime_ns == before
    assert again["spec"] == first["spec"]

    # A new case: only it is read; the fingerprint and the resolved spec follow it.
    fg["d"] = _write_case(root, "d", (4, 16, 16), (4.0, 0.8, 0.8), seed=9, fg_mean=50.0)
    grown = store.build_store(_crawl(root), out, AUTO_CT)
    assert len(reads) == 1 and reads[0].endswith("d_0000.nii.gz")
    fp = store.load_fingerprint(out)
    assert fp["num_cases"] == 4
    allfg = np.concatenate([fg[k] for k in "abcd"])
    assert fp["foreground_intensity"][0]["mean"] == pytest.approx(allfg.mean(), rel=1e-12)
    # z spacings (3, 4, 5, 6): 10th percentile 3 + 0.3 x 1 = 3.3.
    # In-plane (0.8, 1.0, 0.9, 0.8): median 0.85.
    assert grown["spec"]["target_spacing_mm"] == pytest.approx([3.3, 0.85, 0.85])
    assert grown["spec_hash"] != first["spec_hash"]


def test_unreadable_case_left_out_of_fingerprint_and_reported(tmp_path):
    root, out = str(tmp_path / "data"), str(tmp_path / "store")
    fg = _dataset(root, ANISO)
    bad = os.path.join(root, "imagesTr", "c_0000.nii.gz")
    with open(bad, "r+b") as f:
        f.truncate(200)
    manifest = store.build_store(_crawl(root), out, AUTO_CT)
    fp = store.load_fingerprint(out)
    assert fp["case_ids"] == ["a", "b"] and [p["id"] for p in fp["skipped"]] == ["c"]
    allfg = np.concatenate([fg["a"], fg["b"]])
    assert fp["foreground_intensity"][0]["median"] == pytest.approx(np.median(allfg), rel=1e-12)
    assert [c["id"] for c in manifest["cases"]] == ["a", "b"]
    report = json.load(open(os.path.join(out, "report.json")))
    assert [p["id"] for p in report["skipped"]] == ["c"] and "c_0000" in str(report["skipped"])


def test_auto_normalization_needs_modality_before_any_read(tmp_path):
    root, out = str(tmp_path / "data"), str(tmp_path / "store")
    _dataset(root, ANISO[:1])
    with pytest.raises(errors.ConfigError, match="data.preprocess.modality"):
        store.build_store(_crawl(root), out, {**AUTO_CT, "modality": ""})
    assert not os.path.exists(os.path.join(out, "fingerprint.json"))
    with pytest.raises(errors.ConfigError, match="target_spacing_mm='autp'"):
        store.build_store(_crawl(root), out, {**AUTO_CT, "target_spacing_mm": "autp"})
    with pytest.raises(errors.ConfigError, match=r"target_size=\[None, 2\] is not a tuple"):
        store.build_store(_crawl(root), out, {**AUTO_CT, "target_size": (None, 2)})


def test_resolve_auto_leaves_explicit_fields_alone():
    fp = {
        "spacings": [[2.0, 1.0, 1.0]],
        "median_shape": [8, 8, 8],
        "median_relative_size_after_crop": 0.9,
        "channels": 1,
        "foreground_intensity": [{"percentile_00_5": -5.0, "percentile_99_5": 7.0}],
    }
    spec = {"target_spacing_mm": "auto", "normalization": {"name": "minmax"}, "modality": "MR"}
    out = fingerprint.resolve_auto(spec, fp)
    assert out == {"target_spacing_mm": [2.0, 1.0, 1.0], **{k: spec[k] for k in list(spec)[1:]}}
    assert fingerprint.resolve_auto({"normalization": {"name": "auto"}, "modality": "MR"}, fp)[
        "normalization"
    ] == {"name": "zscore", "use_mask": False}


def test_launch_preprocess_prints_fingerprint_and_chosen_spec(tmp_path):
    root = str(tmp_path / "data")
    fg = _dataset(root, ANISO)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(repo, "launch.py"),
            "--config=configs/unet3d.py:tiny",
            "--mode=preprocess",
            f"--workdir={tmp_path}/run",
            f"--config.data.root={root}",
            f"--config.data.store_dir={tmp_path}/store",
            "--config.data.preprocess_workers=0",
            "--config.data.preprocess.target_spacing_mm=auto",
            "--config.data.preprocess.normalization.name=auto",
            "--config.data.preprocess.modality=CT",
        ],
        cwd=repo,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "fingerprint of 3 case(s)" in r.stdout
    p995 = np.percentile(np.concatenate(list(fg.values())), 99.5)
    spec = json.loads(r.stdout.split("from the fingerprint): ")[1].splitlines()[0])
    assert spec["target_spacing_mm"] == pytest.approx([3.4, 0.9, 0.9])
    assert spec["normalization"]["window"][1] == pytest.approx(p995, rel=1e-12)
    assert spec["modality"] == "CT"
