"""FROC / CPM tests on hand-computed cases, plus results-file IO and the plot."""

import io

import numpy as np
import pytest
from PIL import Image

from medjax.data.luna import csvs, froc

A = csvs.Annotation


def _case_a():
    annotations = [
        A("a", (0.0, 0.0, 0.0), 10.0),  # N1: hit twice
        A("a", (50.0, 0.0, 0.0), 6.0),  # N2: never detected
        A("b", (0.0, 0.0, 0.0), 8.0),  # N3: radius 4
    ]
    excluded = [A("a", (100.0, 0.0, 0.0), -1.0)]  # Unknown diameter -> 10 mm.
    results = [
        ("a", 1.0, 0.0, 0.0, 0.9),  # hit N1 (best)
        ("a", 0.0, 1.0, 0.0, 0.6),  # second hit on N1: ignored
        ("a", 100.0, 3.0, 0.0, 0.95),  # on the excluded finding: ignored
        ("a", 200.0, 0.0, 0.0, 0.8),  # FP
        ("a", 300.0, 0.0, 0.0, 0.3),  # FP
        {"seriesuid": "b", "coordX": 0, "coordY": 0, "coordZ": 3.9, "probability": 0.5},  # N3
        ("b", 0.0, 0.0, 4.0, 0.99),  # exactly on N3's radius: not a hit (strict) -> FP
        ("b", 100.0, 100.0, 100.0, 0.1),  # FP
        ("c", 0.0, 0.0, 0.0, 0.7),  # scan not evaluated: ignored
    ]
    return results, annotations, excluded


def test_hand_computed_case():
    results, annotations, excluded = _case_a()
    r = froc.froc(results, annotations, excluded, ["a", "b"])
    # Sorted: .99 FP, .9 TP, .8 FP, .5 TP, .3 FP, .1 FP over 2 scans and 3 nodules:
    np.testing.assert_allclose(r.curve_fps, [0, 0.5, 0.5, 1.0, 1.0, 1.5, 2.0])
    np.testing.assert_allclose(r.curve_sens, [0, 0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(r.thresholds[1:], [0.99, 0.9, 0.8, 0.5, 0.3, 0.1])
    # At a vertical step the higher sensitivity counts (np.interp takes the last equal x).
    np.testing.assert_allclose(r.sensitivities, [0, 0, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert r.cpm == pytest.approx(3 / 7)
    assert (r.n_scans, r.n_nodules, r.n_detected, r.n_false_positives) == (2, 3, 2, 4)
    assert (r.n_ignored_double, r.n_ignored_excluded) == (1, 1)
    assert r.to_dict()["froc/cpm"] == pytest.approx(3 / 7)
    assert r.ci_low is None


def test_ties_interpolate_linearly():
    # One threshold group holding 1 TP and 2 FPs over 2 scans: a straight line (0,0)-(1,1).
    annotations = [A("a", (0.0, 0.0, 0.0), 4.0)]
    results = [("a", 0, 0, 0, 0.5), ("a", 9, 9, 9, 0.5), ("b", 9, 9, 9, 0.5)]
    r = froc.froc(results, annotations, [], ["a", "b"])
    np.testing.assert_allclose(r.sensitivities, [0.125, 0.25, 0.5, 1, 1, 1, 1])
    assert r.cpm == pytest.approx(4.875 / 7)


def test_no_false_positives_and_empty_scans():
    annotations = [A("a", (0.0, 0.0, 0.0), 4.0), A("a", (20.0, 0.0, 0.0), 4.0)]
    r = froc.froc([("a", 20.5, 0, 0, 0.3)], annotations, [], ["a", "z"])
    np.testing.assert_allclose(r.sensitivities, [0.5] * 7)  # Half the nodules, at any FP rate.
    assert r.n_scans == 2 and r.n_false_positives == 0
    # A result hitting two overlapping nodules counts for both (as the official script).
    both = [A("a", (0.0, 0.0, 0.0), 10.0), A("a", (4.0, 0.0, 0.0), 10.0)]
    r = froc.froc([("a", 2, 0, 0, 0.4)], both, [], ["a"])
    assert r.n_detected == 2 and r.cpm == pytest.approx(1.0)


def test_more_fps_per_scan_moves_the_curve():
    annotations = [A("a", (0.0, 0.0, 0.0), 4.0), A("b", (0.0, 0.0, 0.0), 4.0)]
    # Scan a: 2 FPs above its nodule; scan b: nodule first. Over 2 scans: FP step = 0.5.
    results = [
        ("a", 50, 0, 0, 0.9),
        ("a", 60, 0, 0, 0.8),
        ("a", 0, 0, 0, 0.7),
        ("b", 0, 0, 1, 0.95),
    ]
    r = froc.froc(results, annotations, [], ["a", "b"])
    # Points: (0,.5) after .95, (.5,.5), (1,.5), (1,1) after .7.
    np.testing.assert_allclose(r.sensitivities, [0.5, 0.5, 0.5, 1, 1, 1, 1])
    # Divided over 4 scans (2 without findings or results) the FP rates halve:
    # points (0,.5), (.25,.5), (.5,.5), (.5,1), so full sensitivity is reached at 1/2 FP/scan.
    r4 = froc.froc(results, annotations, [], ["a", "b", "c", "d"])
    np.testing.assert_allclose(r4.curve_fps, [0, 0, 0.25, 0.5, 0.5])
    np.testing.assert_allclose(r4.sensitivities, [0.5, 0.5, 1, 1, 1, 1, 1])


def test_bootstrap_is_deterministic_and_exact_for_identical_scans():
    annotations = [A(s, (0.0, 0.0, 0.0), 4.0) for s in "abcd"]
    results = []
    for s in "abcd":  # Every scan alike: every resample has the same curve.
        results += [(s, 0, 0, 0, 0.6), (s, 30, 0, 0, 0.9), (s, 40, 0, 0, 0.2)]
    r = froc.froc(results, annotations, [], list("abcd"), n_bootstrap=50, seed=1)
    np.testing.assert_allclose(r.ci_low, r.sensitivities)
    np.testing.assert_allclose(r.ci_high, r.sensitivities)
    assert r.cpm_ci == pytest.approx((r.cpm, r.cpm))

    results[0] = ("a", 0, 0, 0, 0.1)  # Scan a now ranks its nodule last: scans differ.
    r1 = froc.froc(results, annotations, [], list("abcd"), n_bootstrap=100, seed=1)
    r2 = froc.froc(results, annotations, [], list("abcd"), n_bootstrap=100, seed=1)
    np.testing.assert_array_equal(r1.ci_low, r2.ci_low)
    assert np.all(r1.ci_low <= r1.ci_high) and np.any(r1.ci_low < r1.ci_high)
    assert r1.cpm_ci[0] <= r1.cpm <= r1.cpm_ci[1]


def test_perfect_classifier_on_synthetic_data(luna_root, tmp_path):
    cands = csvs.read_candidates(csvs.candidates_path(luna_root))
    rows = [(c.seriesuid, *c.xyz, float(c.label)) for c in cands]
    path = tmp_path / "results.csv"
    froc.write_results_csv(path, rows)
    assert path.read_text().splitlines()[0] == "seriesuid,coordX,coordY,coordZ,probability"
    back = froc.read_results_csv(path)
    assert [r[0] for r in back] == [r[0] for r in rows]
    np.testing.assert_allclose([r[1:] for r in back], [r[1:] for r in rows], atol=1e-6)
    r = froc.froc(
        back,
        csvs.read_annotations(luna_root / "annotations.csv"),
        csvs.read_annotations(luna_root / "annotations_excluded.csv"),
        sorted(csvs.find_scans(luna_root)),
    )
    assert r.cpm == pytest.approx(1.0) and r.n_detected == r.n_nodules > 0
    reversed_rows = [(*row[:4], 1.0 - row[4]) for row in rows]  # Worst ranking.
    worst = froc.froc(
        reversed_rows,
        csvs.read_annotations(luna_root / "annotations.csv"),
        [],
        sorted(csvs.find_scans(luna_root)),
    )
    assert worst.cpm < 0.5


def test_plot_png(tmp_path):
    results, annotations, excluded = _case_a()
    r = froc.froc(results, annotations, excluded, ["a", "b"], n_bootstrap=20)
    image = froc.froc_plot_png(r, path=tmp_path / "froc.png", size=(240, 320))
    assert image.shape == (240, 320, 3) and image.dtype == np.uint8
    png = Image.open(io.BytesIO((tmp_path / "froc.png").read_bytes()))
    np.testing.assert_array_equal(np.asarray(png.convert("RGB")), image)
    assert np.any(np.all(image == (30, 80, 200), axis=-1))  # The curve is drawn.
    other = froc.froc(results[:1], annotations, excluded, ["a", "b"])
    assert not np.array_equal(froc.froc_plot_png(other, size=(240, 320)), image)
