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


def _reference_froc(results, annotations, excluded, uids, max_marks, rates=froc.DEFAULT_FP_RATES):
    """An independent, loop-by-loop reading of the official noduleCADEvaluationLUNA16 rules.

    Cap per scan (keep marks strictly above the ``max_marks + 1``-th highest probability), then
    per finding: included nodules take their best hit, hits on excluded findings are dropped,
    the rest are FPs. The curve is brute force: one point per distinct probability threshold t
    with ``fps = #FP >= t / scans`` and ``sens = #nodules whose best hit >= t / nodules``.
    """
    nodule_probs, fp_probs = [], []
    for uid in uids:
        marks = [r for r in results if r[0] == uid]
        if max_marks and len(marks) > max_marks:
            cut = sorted((m[4] for m in marks), reverse=True)[max_marks]
            marks = [m for m in marks if m[4] > cut]
        left = dict(enumerate(marks))
        findings = [(a, True) for a in annotations if a.seriesuid == uid]
        findings += [(a, False) for a in excluded if a.seriesuid == uid]
        for a, included in findings:
            radius = (a.diameter_mm if a.diameter_mm >= 0 else 10.0) / 2
            hit_ids = [
                i
                for i, m in enumerate(marks)
                if sum((m[1 + k] - a.xyz[k]) ** 2 for k in range(3)) < radius**2
            ]
            if included:
                nodule_probs.append(max((marks[i][4] for i in hit_ids), default=None))
            for i in hit_ids:
                left.pop(i, None)
        fp_probs += [m[4] for m in left.values()]
    thresholds = sorted({p for p in nodule_probs + fp_probs if p is not None}, reverse=True)
    xs, ys = [0.0], [0.0]
    for t in thresholds:
        xs.append(sum(p >= t for p in fp_probs) / len(uids))
        ys.append(sum(p is not None and p >= t for p in nodule_probs) / len(nodule_probs))
    sens = np.interp(np.asarray(rates), np.asarray(xs), np.asarray(ys))
    return float(np.mean(sens)), sens


def test_mark_cap_issue_case():
    # 13 scans with one nodule each; scan 0 has 101 FPs ranked above its only hit. The official
    # cap (100 marks) drops the hit and the lowest FP: sensitivity 12/13 at every rate.
    annotations = [A(f"s{i}", (0.0, 0.0, 0.0), 10.0) for i in range(13)]
    results = [(f"s{i}", 0.0, 0.0, 1.0, 0.99) for i in range(1, 13)]
    results += [("s0", 100.0 + i, 0.0, 0.0, 0.9 - i * 1e-3) for i in range(101)]
    results += [("s0", 0.0, 0.0, 0.0, 0.5)]
    uids = [f"s{i}" for i in range(13)]
    capped = froc.froc(results, annotations, [], uids)
    assert capped.cpm == pytest.approx(12 / 13) and round(capped.cpm, 4) == 0.9231
    assert capped.n_dropped_cap == 2 and capped.n_false_positives == 100
    uncapped = froc.froc(results, annotations, [], uids, max_marks=0)
    assert round(uncapped.cpm, 4) == 0.9341 and uncapped.n_dropped_cap == 0
    assert froc.froc(results, annotations, [], uids, max_marks=None).cpm == uncapped.cpm
    for max_marks in (100, 0):
        ref_cpm, _ = _reference_froc(results, annotations, [], uids, max_marks)
        got = capped if max_marks else uncapped
        assert got.cpm == pytest.approx(ref_cpm, abs=1e-12)


@pytest.mark.parametrize("max_marks", [100, 7, 0])
def test_mark_cap_matches_reference_on_random_sets(max_marks):
    # Scans with 0..140 marks, probabilities on a coarse grid (ties at the cap threshold),
    # nodules, excluded findings and marks on both.
    rng = np.random.default_rng(max_marks)
    uids = [f"u{i}" for i in range(6)]
    annotations, excluded, results = [], [], []
    for uid in uids:
        centres = rng.uniform(-100, 100, size=(4, 3))
        for c in centres[:3]:
            annotations.append(A(uid, tuple(c), float(rng.choice([-1.0, 6.0, 12.0]))))
        excluded.append(A(uid, tuple(centres[3]), 8.0))
        n = int(rng.integers(0, 141))
        xyz = rng.uniform(-100, 100, size=(n, 3))
        near = rng.random(n) < 0.3  # Marks placed on a finding.
        xyz[near] = centres[rng.integers(0, 4, near.sum())] + rng.normal(0, 2, (near.sum(), 3))
        probs = np.round(rng.random(n), 1)
        results += [(uid, *map(float, p), float(q)) for p, q in zip(xyz, probs, strict=True)]
    got = froc.froc(results, annotations, excluded, uids, max_marks=max_marks)
    ref_cpm, ref_sens = _reference_froc(results, annotations, excluded, uids, max_marks)
    np.testing.assert_allclose(got.sensitivities, ref_sens, rtol=0, atol=1e-12)
    assert got.cpm == pytest.approx(ref_cpm, abs=1e-12)
    assert (got.n_dropped_cap > 0) == (max_marks in (100, 7))
