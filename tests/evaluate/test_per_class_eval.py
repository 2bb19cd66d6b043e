"""Per-class and per-region split metrics of both evaluations vs a numpy float64 reference."""

import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest

from medjax.data import sources, store
from medjax.evaluate import segmentation as seg_eval
from medjax.metrics import confusion

SHAPE = (10, 12)
SPACING = (1.0, 0.5)
BRATS = ((1, 2, 3), (2, 3), (3,))


def _labels():
    """Hand-made reference and prediction label maps (values 0..3) of three cases."""
    refs, preds = [], []
    for i in range(3):
        ref = np.zeros(SHAPE, np.uint8)
        ref[1:8, 2:10] = 1
        ref[2:6, 3 + i : 8] = 2
        ref[3:5, 4:6] = 3 if i < 2 else 2  # case 2 has no class 3
        pred = np.zeros(SHAPE, np.uint8)
        pred[2:9, 1:9] = 1
        pred[2:7, 4 : 8 + i] = 2
        if i != 1:
            pred[3:5, 5:7] = 3  # case 1 misses class 3, case 2 hallucinates it
        refs.append(ref)
        preds.append(pred)
    return refs, preds


def _store(tmp_path, refs):
    entries = []
    for i, ref in enumerate(refs):
        folder = store.case_dir(str(tmp_path), f"c{i}")
        (tmp_path / "cases" / f"c{i}").mkdir(parents=True)
        np.save(f"{folder}/image.npy", np.zeros((*SHAPE, 1), np.float32))
        np.save(f"{folder}/label.npy", ref)
        np.savez(f"{folder}/locations.npz")
        entries.append({"id": f"c{i}", "shape": list(SHAPE), "has_label": True})
    return sources.StoreSource(str(tmp_path), entries)


def _surface(mask):
    padded = np.pad(mask, 1)
    interior = mask.copy()
    for axis, step in itertools.product(range(mask.ndim), (-1, 1)):
        interior &= np.roll(padded, step, axis)[1:-1, 1:-1]
    return mask & ~interior


def _hd95_assd(p, r):
    """Brute force (all pairs, float64, face surfaces); NaN unless both masks are non-empty."""
    if not p.any() or not r.any():
        return math.nan, math.nan
    a = np.argwhere(_surface(p)) * np.asarray(SPACING)
    b = np.argwhere(_surface(r)) * np.asarray(SPACING)
    d = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
    d_ab, d_ba = d.min(1), d.min(0)
    hd = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    return hd, (d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size)


def _reference(preds, refs, groups, names):
    """Split metrics of scored classes given as label-value groups, from numpy counts."""
    out, rows = {}, [{} for _ in refs]
    dices = []
    for name, values in zip(names, groups, strict=True):
        ps = [np.isin(p, values) for p in preds]
        rs = [np.isin(r, values) for r in refs]
        tp = sum(float((p & r).sum()) for p, r in zip(ps, rs, strict=True))
        fp = sum(float((p & ~r).sum()) for p, r in zip(ps, rs, strict=True))
        fn = sum(float((~p & r).sum()) for p, r in zip(ps, rs, strict=True))
        out[f"dice/{name}"] = 2 * tp / (2 * tp + fp + fn)
        out[f"iou/{name}"] = tp / (tp + fp + fn)
        dices.append(out[f"dice/{name}"])
        hds, assds = [], []
        for row, p, r in zip(rows, ps, rs, strict=True):
            hd, assd = _hd95_assd(p, r)
            row[f"hd95/{name}"], row[f"assd/{name}"] = hd, assd
            inter = float((p & r).sum())
            row[f"dice/{name}"] = 2 * inter / (p.sum() + r.sum()) if p.any() or r.any() else 1.0
            if not math.isnan(hd):
                hds.append(hd)
                assds.append(assd)
        out[f"hd95_mm/{name}"] = np.mean(hds)
        out[f"assd_mm/{name}"] = np.mean(assds)
        out[f"hd95_empty_cases/{name}"] = float(
            sum(p.any() != r.any() for p, r in zip(ps, rs, strict=True))
        )
    out["dice"] = float(np.mean(dices))  # the foreground mean
    return out, rows


def _split(source, preds, refs, logits, regions, names):
    """SplitEvaluation fed with the eval step's counts (``confusion.per_example_counts``)."""
    ev = seg_eval.SplitEvaluation(
        source,
        keep_predictions=True,
        spacings=[SPACING] * len(refs),
        num_classes=logits.shape[-1],
        regions=regions,
        class_names=names,
    )
    labels = np.stack(refs).astype(np.int32)
    out = confusion.per_example_counts(jnp.asarray(logits), jnp.asarray(labels), regions=regions)
    out = {k: np.asarray(v) for k, v in out.items()}
    out["pred"], out["loss"] = np.stack(preds), np.zeros(len(refs))
    batch = {"label": labels, "index": np.arange(len(refs)), "valid": np.ones(len(refs), bool)}
    ev.accumulate(out, batch)
    return ev.finalize()


def _volume(source, logits, regions, names):
    ev = seg_eval.VolumeEvaluation(
        source,
        [SPACING] * len(logits),
        tile_size=SHAPE,
        num_classes=logits.shape[-1],
        regions=regions,
        class_names=names,
        keep_predictions=True,
    )
    for i, case_logits in enumerate(logits):
        ev.accumulate({"logits": case_logits[None]}, {"index": np.array([i])})
    return ev.finalize()


def _check(result, want, want_rows, preds):
    for key, value in want.items():
        assert result.metrics[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key
    for row, want_row in zip(result.per_case, want_rows, strict=True):
        for key, value in want_row.items():
            assert row[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key
    for i, pred in enumerate(preds):
        np.testing.assert_array_equal(result.predictions[i], pred)


def test_multiclass_metrics_per_class_match_numpy(tmp_path):
    refs, preds = _labels()
    source = _store(tmp_path, refs)
    logits = 10.0 * np.eye(4)[np.stack(preds)]  # softmax logits whose argmax is pred
    names = ("a", "b", "c")
    want, want_rows = _reference(preds, refs, [[1], [2], [3]], names)
    assert want["hd95_empty_cases/c"] == 2.0
    _check(_split(source, preds, refs, logits, (), names), want, want_rows, preds)
    _check(_volume(source, logits, (), names), want, want_rows, preds)


def test_region_metrics_score_the_painted_label_map(tmp_path):
    refs, preds = _labels()
    source = _store(tmp_path, refs)
    # Region logits by hand: whole tumour where pred > 0, core where pred >= 2, enhancing = 3;
    # plus one voxel where only "enhancing" fires: painting makes it label 3 (all regions).
    regions_on = np.stack([np.stack([p > 0, p >= 2, p == 3], -1) for p in preds])
    regions_on[0, 0, 0] = (False, False, True)
    logits = np.where(regions_on, 5.0, -5.0)
    painted = [p.copy() for p in preds]
    painted[0][0, 0] = 3
    names = ("1+2+3", "2+3", "3")  # the default region names
    want, want_rows = _reference(painted, refs, [list(r) for r in BRATS], names)
    _check(_split(source, painted, refs, logits, BRATS, ()), want, want_rows, painted)
    _check(_volume(source, logits, BRATS, ()), want, want_rows, painted)


def test_binary_keeps_its_keys(tmp_path):
    refs, preds = _labels()
    source = _store(tmp_path, refs)
    logits = np.where(np.stack(preds) > 0, 3.0, -3.0)[..., None]
    result = _volume(source, logits, (), ())
    assert not any("/" in k for k in result.metrics)  # no per-class keys for one class
    want, _ = _reference(preds, refs, [[1, 2, 3]], ("fg",))
    assert result.metrics["dice"] == pytest.approx(want["dice/fg"], rel=1e-12)


def test_sample_grid_shows_each_class_in_its_own_colour(tmp_path):
    refs, preds = _labels()
    source = _store(tmp_path, refs)
    grid = seg_eval.sample_grid(source, dict(enumerate(preds)), 1)
    h, w = SHAPE
    assert grid.shape == (h, 3 * w, 3) and grid.dtype == np.uint8
    for row in range(1):  # case 0 holds every label in truth and prediction
        truth = grid[row * h : (row + 1) * h, w : 2 * w]
        pred = grid[row * h : (row + 1) * h, 2 * w :]
        for panel, labels in ((truth, refs[row]), (pred, preds[row])):
            colours = {}
            for value in range(4):
                seen = np.unique(panel[labels == value].reshape(-1, 3), axis=0)
                assert len(seen) == 1, value  # one colour per label value
                colours[value] = tuple(seen[0])
            assert colours[0] == (0, 0, 0)
            assert len(set(colours.values())) == 4  # background and three distinct classes


def test_sample_grid_pads_cases_of_different_sizes(tmp_path):
    # Real datasets (a Decathlon folder) have cases of different shapes; the grid once crashed
    # concatenating their rows.
    shapes = [(5, 7), (4, 11)]
    entries, preds = [], {}
    for i, shape in enumerate(shapes):
        folder = store.case_dir(str(tmp_path), f"c{i}")
        (tmp_path / "cases" / f"c{i}").mkdir(parents=True)
        np.save(
            f"{folder}/image.npy", np.arange(np.prod(shape), dtype=np.float32).reshape(*shape, 1)
        )
        np.save(f"{folder}/label.npy", np.ones(shape, np.uint8))
        np.savez(f"{folder}/locations.npz")
        entries.append({"id": f"c{i}", "shape": list(shape), "has_label": True})
        preds[i] = np.ones(shape, np.uint8)
    grid = seg_eval.sample_grid(sources.StoreSource(str(tmp_path), entries), preds, 2)
    assert grid.shape == (5 + 4, 3 * 11, 3)
    # Row 0 (7 wide per panel): its three panels then black padding; row 1 fills the width.
    assert (grid[:5, 21:] == 0).all() and (grid[:5, 7:21] != 0).any()
    assert (grid[5:, 11:22] == seg_eval.PALETTE[1]).all()


def test_cases_without_labels_are_predicted_but_never_scored(tmp_path):
    # A Decathlon imagesTs has no labels: those cases were once scored against an all-zero
    # reference (test Dice 0). The labelled cases' metrics must equal a split of those alone.
    refs, preds = _labels()
    source = _store(tmp_path, refs)
    source.has_label[1] = False  # case 1 arrives without its label file
    kept = [0, 2]
    want, want_rows = _reference(
        [preds[i] for i in kept], [refs[i] for i in kept], [[1], [2], [3]], ("1", "2", "3")
    )
    logits = np.eye(4)[np.stack(preds)] * 10.0
    for result in (_split(source, preds, refs, logits, (), ()), _volume(source, logits, (), ())):
        assert [row["id"] for row in result.per_case] == ["c0", "c2"]
        assert result.metrics["unlabelled_cases"] == 1
        assert {"dice", "dice/1", "dice/3", "hd95_mm/2"} <= set(want)
        for key, value in want.items():
            assert result.metrics[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key
        assert set(result.predictions) == {0, 1, 2}  # the unlabelled case is still predicted
        np.testing.assert_array_equal(result.predictions[1], preds[1])
    source.has_label[:] = [False] * 3
    result = _volume(source, logits, (), ())
    assert result.metrics == {"unlabelled_cases": 3.0} and result.per_case == []
