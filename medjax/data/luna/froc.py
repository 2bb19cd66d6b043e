"""The LUNA16 evaluation: FROC curve, sensitivities at 1/8..8 FPs per scan, CPM, bootstrap CI.

Follows the official ``noduleCADEvaluationLUNA16.py``:

* a result (``seriesuid, coordX, coordY, coordZ, probability``) is a hit on a finding when it
  lies strictly closer than ``diameter / 2`` to the finding's centre (an unknown diameter of
  -1 counts as 10 mm);
* each included nodule counts once, with the probability of its best hit; its other hits are
  ignored (neither true nor false positives); a nodule without a hit counts as missed;
* hits on excluded findings (``annotations_excluded.csv``) are ignored;
* every other result is a false positive of its scan;
* at most ``max_marks`` (the official ``maxNumberOfCADMarks=100``) results count per scan: when a
  scan has more, only those with a probability strictly above its ``max_marks + 1``-th highest
  are kept (so marks tied with that one are all dropped), before any matching.

The curve is ``FPs per scan = cumulative FPs / number of scans`` against ``sensitivity =
cumulative detected nodules / all nodules``, with one point per distinct probability threshold
(as sklearn's ``roc_curve`` gives). Sensitivities at the operating points come from the same
``np.interp`` of that curve as the official script, evaluated exactly at each rate rather than at
the nearest of its 10001 plot samples. CPM is their mean. The bootstrap resamples scans with
replacement, as the official ``computeFROC_bootstrap`` does.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from medjax.data.luna import csvs

DEFAULT_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
RESULT_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "probability")
_UNKNOWN_DIAMETER_MM = 10.0
DEFAULT_MAX_MARKS = 100  # The official script's maxNumberOfCADMarks.
_PLOT_X = (0.125, 8.0)


@dataclasses.dataclass
class FrocResult:
    """The outcome of ``froc``.

    Attributes:
      fp_rates: ``float[R]`` false positives per scan of the operating points.
      sensitivities: ``float[R]`` sensitivity at each operating point.
      cpm: mean of ``sensitivities`` (the competition performance metric).
      curve_fps: ``float[P]`` FPs per scan of the FROC curve (non-decreasing).
      curve_sens: ``float[P]`` sensitivity of the FROC curve.
      thresholds: ``float[P]`` probability thresholds of the curve points (first is +inf).
      n_scans, n_nodules, n_detected, n_false_positives: counts.
      n_ignored_double: extra hits on already-hit nodules (ignored).
      n_ignored_excluded: results on excluded findings (ignored).
      n_dropped_cap: results dropped by the per-scan cap on marks (``max_marks``).
      ci_low, ci_high: ``float[R]`` bootstrap confidence bounds (None without bootstrap).
      cpm_ci: ``(low, high)`` bootstrap bounds of the CPM (None without bootstrap).
      band_fps, band_low, band_high: ``float[G]`` bootstrap band on a log-spaced FP grid.
    """

    fp_rates: np.ndarray
    sensitivities: np.ndarray
    cpm: float
    curve_fps: np.ndarray
    curve_sens: np.ndarray
    thresholds: np.ndarray
    n_scans: int
    n_nodules: int
    n_detected: int
    n_false_positives: int
    n_ignored_double: int
    n_ignored_excluded: int
    n_dropped_cap: int = 0
    ci_low: np.ndarray | None = None
    ci_high: np.ndarray | None = None
    cpm_ci: tuple[float, float] | None = None
    band_fps: np.ndarray | None = None
    band_low: np.ndarray | None = None
    band_high: np.ndarray | None = None

    def to_dict(self) -> dict[str, float]:
        """Flat scalars for a metric writer: ``froc/sens@0.125``, ..., ``froc/cpm``."""
        pairs = zip(self.fp_rates, self.sensitivities, strict=True)
        out = {f"froc/sens@{r:g}": float(s) for r, s in pairs}
        out["froc/cpm"] = float(self.cpm)
        if self.cpm_ci is not None:
            out["froc/cpm_ci_low"], out["froc/cpm_ci_high"] = map(float, self.cpm_ci)
        return out


def _result_tuple(row: Any) -> tuple[str, np.ndarray, float]:
    if isinstance(row, Mapping):
        return (
            str(row["seriesuid"]),
            np.array([float(row[c]) for c in ("coordX", "coordY", "coordZ")]),
            float(row["probability"]),
        )
    uid, x, y, z, p = row
    return str(uid), np.array([float(x), float(y), float(z)]), float(p)


def _cap_marks(prob: np.ndarray, max_marks: int | None) -> np.ndarray:
    """``bool[N]`` marks kept under the official per-scan cap (``maxNumberOfCADMarks``).

    With more than ``max_marks`` marks, only those strictly above the ``max_marks + 1``-th highest
    probability are kept: the official script's rule, which drops every mark tied with it.
    """
    if not max_marks or max_marks <= 0 or prob.size <= max_marks:
        return np.ones(prob.shape, dtype=bool)
    threshold = np.sort(prob)[::-1][max_marks]
    return prob > threshold


def _entries(results, annotations, excluded, seriesuids, max_marks):
    """Per-scan FROC entries ``(is_nodule, probability, missed)`` and the ignore counts."""
    results_by = {}
    for row in results:
        uid, xyz, p = _result_tuple(row)
        results_by.setdefault(uid, []).append((xyz, p))
    findings = {}
    for a, included in [(a, True) for a in annotations] + [(a, False) for a in excluded]:
        findings.setdefault(a.seriesuid, []).append((a, included))
    per_scan, n_double, n_excluded, n_capped = [], 0, 0, 0
    for uid in seriesuids:
        rows = results_by.get(uid, [])
        keep = _cap_marks(np.array([r[1] for r in rows], dtype=np.float64), max_marks)
        n_capped += int((~keep).sum())
        rows = [r for r, k in zip(rows, keep, strict=True) if k]
        xyz = np.array([r[0] for r in rows]).reshape(-1, 3)
        prob = np.array([r[1] for r in rows], dtype=np.float64)
        remaining = np.ones(len(rows), dtype=bool)  # Not yet claimed by a finding.
        gt, probs, missed = [], [], []
        for a, included in findings.get(uid, []):
            diameter = a.diameter_mm if a.diameter_mm >= 0 else _UNKNOWN_DIAMETER_MM
            hits = np.sum((xyz - np.asarray(a.xyz)) ** 2, axis=-1) < (diameter / 2) ** 2
            if included:
                # A result may hit two overlapping nodules: it then counts for both.
                n_double += max(int(hits.sum()) - 1, 0)
                gt.append(1.0)
                probs.append(float(prob[hits].max()) if hits.any() else -np.inf)
                missed.append(not hits.any())
            else:
                n_excluded += int((hits & remaining).sum())
            remaining &= ~hits
        gt += [0.0] * int(remaining.sum())
        probs += prob[remaining].tolist()
        missed += [False] * int(remaining.sum())
        per_scan.append((np.array(gt), np.array(probs), np.array(missed, dtype=bool)))
    return per_scan, n_double, n_excluded, n_capped


def _curve(gt: np.ndarray, prob: np.ndarray, missed: np.ndarray, n_scans: int):
    """``(fps, sens, thresholds)`` of the FROC curve, as the official computeFROC."""
    n_nodules = float(gt.sum())
    keep = ~missed
    gt, prob = gt[keep], prob[keep]
    order = np.argsort(-prob, kind="stable")
    gt, prob = gt[order], prob[order]
    # One point per distinct threshold: the last index of each run of equal probabilities.
    last = np.flatnonzero(np.r_[prob[1:] != prob[:-1], True]) if prob.size else np.zeros(0, int)
    tps = np.r_[0.0, np.cumsum(gt)[last]]
    fps = np.r_[0.0, np.cumsum(1.0 - gt)[last]]
    thresholds = np.r_[np.inf, prob[last]]
    sens = tps / n_nodules if n_nodules > 0 else np.zeros_like(tps)
    return fps / max(n_scans, 1), sens, thresholds


def _at_rates(fps, sens, rates) -> np.ndarray:
    return np.interp(np.asarray(rates, dtype=np.float64), fps, sens)


def froc(
    results: Sequence[Any],
    annotations: Sequence[csvs.Annotation],
    excluded: Sequence[csvs.Annotation],
    seriesuids: Sequence[str],
    *,
    fps: Sequence[float] = DEFAULT_FP_RATES,
    n_bootstrap: int = 0,
    seed: int = 0,
    confidence: float = 0.95,
    max_marks: int | None = DEFAULT_MAX_MARKS,
) -> FrocResult:
    """LUNA16 FROC analysis of a results list.

    Args:
      results: rows ``(seriesuid, x, y, z, probability)`` or mappings with LUNA's result columns
        (``RESULT_COLUMNS``); coordinates in LPS mm like the annotations.
      annotations: included nodules (``annotations.csv``), only those of ``seriesuids`` count.
      excluded: findings whose hits are ignored (``annotations_excluded.csv``).
      seriesuids: the evaluated scans (the FP-per-scan divisor); results of other scans are
        ignored.
      fps: operating points in false positives per scan.
      n_bootstrap: bootstrap resamples of the scans (0: no confidence interval).
      seed: bootstrap seed.
      confidence: width of the bootstrap interval.
      max_marks: per-scan cap on the counted results, as the official evaluation (100); with
        more, only results strictly above the ``max_marks + 1``-th highest probability of the
        scan count. ``0`` or ``None``: every result counts.

    Returns:
      A ``FrocResult``.
    """
    seriesuids = list(dict.fromkeys(seriesuids))
    per_scan, n_double, n_excluded, n_capped = _entries(
        results, annotations, excluded, seriesuids, max_marks
    )
    gt = np.concatenate([s[0] for s in per_scan]) if per_scan else np.zeros(0)
    prob = np.concatenate([s[1] for s in per_scan]) if per_scan else np.zeros(0)
    missed = np.concatenate([s[2] for s in per_scan]) if per_scan else np.zeros(0, bool)
    curve_fps, curve_sens, thresholds = _curve(gt, prob, missed, len(seriesuids))
    rates = np.asarray(fps, dtype=np.float64)
    sens = _at_rates(curve_fps, curve_sens, rates)
    out = FrocResult(
        fp_rates=rates,
        sensitivities=sens,
        cpm=float(sens.mean()),
        curve_fps=curve_fps,
        curve_sens=curve_sens,
        thresholds=thresholds,
        n_scans=len(seriesuids),
        n_nodules=int(gt.sum()),
        n_detected=int((gt[~missed]).sum()),
        n_false_positives=int((gt == 0).sum()),
        n_ignored_double=n_double,
        n_ignored_excluded=n_excluded,
        n_dropped_cap=n_capped,
    )
    if n_bootstrap > 0 and per_scan:
        rng = np.random.default_rng(seed)
        band_fps = np.exp2(np.linspace(np.log2(_PLOT_X[0]), np.log2(_PLOT_X[1]), 200))
        at_rates = np.zeros((n_bootstrap, len(rates)))
        band = np.zeros((n_bootstrap, len(band_fps)))
        for b in range(n_bootstrap):
            pick = rng.integers(0, len(per_scan), size=len(per_scan))
            parts = [per_scan[i] for i in pick]
            f, s, _ = _curve(*(np.concatenate([p[k] for p in parts]) for k in range(3)), len(pick))
            at_rates[b] = _at_rates(f, s, rates)
            band[b] = _at_rates(f, s, band_fps)
        # Order statistics at floor(n * q), like the official script's percentile bounds.
        lo_i = int(math.floor(n_bootstrap * (1 - confidence) / 2))
        hi_i = min(int(math.floor(n_bootstrap * (1 + confidence) / 2)), n_bootstrap - 1)
        cpms = np.sort(at_rates.mean(axis=1))
        at_rates.sort(axis=0)
        band.sort(axis=0)
        out.ci_low, out.ci_high = at_rates[lo_i], at_rates[hi_i]
        out.cpm_ci = (float(cpms[lo_i]), float(cpms[hi_i]))
        out.band_fps, out.band_low, out.band_high = band_fps, band[lo_i], band[hi_i]
    return out


def write_results_csv(path: str | os.PathLike, rows: Sequence[Any]) -> None:
    """Writes a LUNA16 results file (``seriesuid,coordX,coordY,coordZ,probability``) atomically.

    Args:
      path: destination ``.csv``.
      rows: tuples ``(seriesuid, x, y, z, probability)`` or mappings with those column names.
    """
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RESULT_COLUMNS)
        for row in rows:
            uid, xyz, p = _result_tuple(row)
            writer.writerow([uid, *(f"{v:.6f}" for v in xyz), f"{p:.9g}"])
    os.replace(tmp, path)


def read_results_csv(path: str | os.PathLike) -> list[tuple[str, float, float, float, float]]:
    """Reads a LUNA16 results file into ``(seriesuid, x, y, z, probability)`` tuples.

    Raises:
      DataError: missing column or bad value (names file and line).
    """
    out = []
    for line, row in csvs.read_table(path, RESULT_COLUMNS):
        values = [csvs.parse_float(path, line, row, c) for c in RESULT_COLUMNS[1:]]
        out.append((row["seriesuid"].strip(), *values))
    return out


def froc_plot_png(
    result: FrocResult,
    *,
    path: str | os.PathLike | None = None,
    size: tuple[int, int] = (480, 640),
    title: str = "FROC",
) -> np.ndarray:
    """Draws the FROC curve (log2 FP axis from 1/8 to 8) with PIL; no matplotlib needed.

    Args:
      result: from ``froc``; the bootstrap band is drawn when present.
      path: if given, the image is also written there as PNG.
      size: ``(height, width)`` in pixels.
      title: text above the plot (the CPM is appended).

    Returns:
      ``uint8[H, W, 3]`` RGB image (e.g. for TensorBoard).
    """
    height, width = size
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 60, width - 20, 30, height - 45
    lx0, lx1 = math.log2(_PLOT_X[0]), math.log2(_PLOT_X[1])

    def px(fp: np.ndarray) -> np.ndarray:
        t = (np.log2(np.clip(fp, *_PLOT_X)) - lx0) / (lx1 - lx0)
        return left + t * (right - left)

    def py(s: np.ndarray) -> np.ndarray:
        return bottom - np.clip(s, 0, 1) * (bottom - top)

    for rate in DEFAULT_FP_RATES:
        x = float(px(np.array(rate)))
        draw.line([(x, top), (x, bottom)], fill=(220, 220, 220))
        draw.text((x - 12, bottom + 6), f"{rate:g}", fill="black", font=font)
    for s in np.linspace(0, 1, 6):
        y = float(py(np.array(s)))
        draw.line([(left, y), (right, y)], fill=(220, 220, 220))
        draw.text((left - 30, y - 6), f"{s:.1f}", fill="black", font=font)
    if result.band_fps is not None:
        upper = list(zip(px(result.band_fps), py(result.band_high), strict=True))
        lower = list(zip(px(result.band_fps), py(result.band_low), strict=True))
        draw.polygon(upper + lower[::-1], fill=(200, 215, 245))
    grid = np.exp2(np.linspace(lx0, lx1, max(right - left, 2)))
    sens = _at_rates(result.curve_fps, result.curve_sens, grid)
    draw.line(list(zip(px(grid), py(sens), strict=True)), fill=(30, 80, 200), width=2)
    for rate, s in zip(result.fp_rates, result.sensitivities, strict=True):
        x, y = float(px(np.array(rate))), float(py(np.array(s)))
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], outline=(200, 30, 30), width=2)
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((left, 8), f"{title}  CPM {result.cpm:.3f}", fill="black", font=font)
    draw.text((left + (right - left) // 2 - 80, height - 20), "FPs per scan", fill="black")
    draw.text((4, top - 20), "sensitivity", fill="black", font=font)
    if path is not None:
        buffer = io.BytesIO()
        img.save(buffer, format="PNG")
        pathlib.Path(path).write_bytes(buffer.getvalue())
    return np.asarray(img, dtype=np.uint8)
