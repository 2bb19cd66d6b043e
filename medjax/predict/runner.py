"""``--mode=predict``: every case under ``predict.input`` -> a prediction in ``predict.output``.

Per case (``segment.predict_case``) the output is written in the input's format family and on
its grid: NIfTI -> ``.nii.gz``, NRRD / MetaImage -> the same, PNG / TIFF -> PNG (binary masks
0/255 like the training masks), a DICOM series -> ``.nii.gz`` plus a DICOM SEG referencing the
series (``<id>.seg.dcm``, with highdicom). ``predictions.csv`` lists every case with its status;
a case that cannot be read or does not fit the model is skipped with its reason, and the rest
are predicted.
"""

from __future__ import annotations

import csv
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from medjax import errors
from medjax.data import splits
from medjax.predict import inputs as inputs_lib
from medjax.predict import model as model_lib
from medjax.predict import postprocess, segment

CSV_FILE = "predictions.csv"


def check_output(output: str, overwrite: bool) -> str:
    """The absolute output folder (not created here); refuses a non-empty one unless ``overwrite``.

    Raises:
      ConfigError: ``predict.output`` is empty, a file, or a non-empty folder without
        ``predict.overwrite=True``.
    """
    if not output:
        raise errors.ConfigError("predict.output is empty; give the folder to write into.")
    output = os.path.abspath(os.path.expanduser(output))
    if os.path.isfile(output):
        raise errors.ConfigError(f"predict.output={output!r} is a file; give a folder.")
    if os.path.isdir(output) and os.listdir(output) and not overwrite:
        raise errors.ConfigError(
            f"predict.output={output!r} is not empty; choose an empty folder or pass "
            "--config.predict.overwrite=True to replace its predictions."
        )
    return output


def default_options() -> ml_collections.ConfigDict:
    """The ``predict`` section of the base config (its defaults), unlocked."""
    from configs import common

    return ml_collections.ConfigDict(common.base_config().predict.to_dict())


def load_members(workdir: str, pcfg: ml_collections.ConfigDict) -> list[model_lib.Member]:
    """The run (or bundle) at ``workdir`` plus ``predict.ensemble``'s, checked to agree."""
    from medjax.predict import bundle

    dirs = [os.path.abspath(os.path.expanduser(d)) for d in (workdir, *pcfg.get("ensemble", ()))]
    dirs = list(dict.fromkeys(f for d in dirs if d for f in fold_runs(d)))
    members = [
        bundle.load_bundle(d)
        if bundle.is_bundle(d)
        else model_lib.load_member(d, pcfg.get("checkpoint", "best"))
        for d in dirs
    ]
    model_lib.check_ensemble(members)
    return members


def fold_runs(path: str) -> list[str]:
    """``[path]``, or for a cross-validation folder (``data.fold=all``: ``fold_<k>/`` runs and
    no run of its own) its folds by k, or an ensemble bundle's member bundles: the folds
    predict as one ensemble."""
    import glob

    from medjax.predict import bundle

    members = bundle.ensemble_members(path)
    if members is not None:
        return members
    if os.path.isdir(os.path.join(path, "ckpt")) or os.path.exists(os.path.join(path, "plan.json")):
        return [path]  # a run, or a bundle
    folds = [
        (k, d)
        for d in glob.glob(os.path.join(path, "fold_*"))
        if (k := splits.fold_number(os.path.basename(d))) is not None
        and os.path.exists(os.path.join(d, "config.json"))
    ]
    return [d for _, d in sorted(folds)] or [path]


def read_case(case: inputs_lib.InputCase):
    """The case's image as a ``Volume`` (DICOM: exactly the series' files)."""
    from medjax.data import io as io_lib
    from medjax.data.io import dicom

    if case.problem:
        raise errors.DataError(case.problem)
    if case.fmt == "dicom":
        return dicom.read_dicom_files(case.files)
    return io_lib.read_volume(case.source)


def write_case(
    case: inputs_lib.InputCase,
    result: segment.CaseResult,
    plan: Mapping[str, Any],
    output: str,
    *,
    model_name: str,
    write_dicom_seg: bool,
) -> dict[str, str]:
    """Writes the label map (and probabilities, DICOM SEG) of one case; returns their paths."""
    from medjax.data import io as io_lib
    from medjax.data.io import dicom_seg

    labels = result.labels
    array = np.asarray(labels.array).astype(np.uint8)
    binary = list(plan["label_values"]) == [0, 1]
    if case.fmt == "image2d" and binary:
        array = array * np.uint8(255)  # as the training masks: 0 / 255
    path = os.path.join(output, case.id + case.suffix())
    io_lib.write_volume(labels.with_array(array), path)
    written = {"output": path}
    if result.probabilities is not None:
        suffix = ".nii.gz" if case.fmt in ("image2d", "dicom") else case.suffix()
        prob_path = os.path.join(output, f"{case.id}_probabilities{suffix}")
        io_lib.write_volume(result.probabilities, prob_path)
        written["probabilities"] = prob_path
    if case.fmt == "dicom" and write_dicom_seg and array.any():
        if not dicom_seg.available():
            written["dicom_seg"] = f"not written: highdicom missing ({dicom_seg.INSTALL_HINT})"
        else:
            try:
                written["dicom_seg"] = dicom_seg.write_dicom_seg(
                    labels.with_array(array),
                    case.files,
                    os.path.join(output, f"{case.id}.seg.dcm"),
                    num_classes=max(len(plan["label_values"]), 2),
                    segment_labels=list(plan["label_names"][1:]),
                    model_name=model_name,
                )
            except errors.MedjaxError as e:
                written["dicom_seg"] = f"not written: {e}"
    return written


class _Progress:
    """One stderr line: cases done, seconds per case, ETA (CLI progress)."""

    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.time()

    def update(self, case_id: str) -> None:
        self.done += 1
        now = time.time()
        if self.done < self.total and now - getattr(self, "_last", 0.0) < 0.5:
            return  # at most two lines a second
        self._last = now
        elapsed = now - self.start
        per_case = elapsed / self.done
        eta = per_case * (self.total - self.done)
        end = "\n" if self.done == self.total else ""
        print(
            f"\rpredict: {self.done}/{self.total} cases ({case_id}), {per_case:.1f} s/case, "
            f"ETA {eta:.0f}s   ",
            end=end,
            file=sys.stderr,
            flush=True,
        )

    def say(self, line: str) -> None:
        print(("\n" if 0 < self.done < self.total else "") + line, file=sys.stderr, flush=True)


def _fieldnames(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    names = ["case_id", "source", "status", "reason", "output"]
    for row in rows:
        names += [k for k in row if k not in names]
    tail = ["max_probability", "seconds"]
    return [n for n in names if n not in tail] + tail


def write_report(
    output: str,
    rows: list[dict[str, Any]],
    ignored: Sequence[tuple[str, str]],
    fields: Sequence[str] | None = None,
) -> tuple[str, int]:
    """Writes ``<output>/predictions.csv``: ``rows`` (one per case), then a skipped row per
    ignored file (appended to ``rows``).

    Args:
      output: the output folder (created if missing).
      rows: one dict per case (or scan) with at least ``status`` ("ok" or "skipped").
      ignored: ``(path, reason)`` of each input file that was no case.
      fields: the CSV columns; default: the usual first ones, then every key of ``rows``.

    Returns:
      ``(csv path, number of rows with status "ok")``.
    """
    for path, reason in ignored:
        rows.append({"case_id": "", "source": path, "status": "skipped", "reason": reason})
    os.makedirs(output, exist_ok=True)
    csv_path = os.path.join(output, CSV_FILE)
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields or _fieldnames(rows), restval="")
        writer.writeheader()
        writer.writerows(rows)
    return csv_path, sum(r["status"] == "ok" for r in rows)


def run_segmentation(
    members: Sequence[model_lib.Member], pcfg: ml_collections.ConfigDict, output: str
) -> dict[str, Any]:
    """Predicts every case of ``pcfg.input`` into ``output``; writes ``predictions.csv``."""
    plan = members[0].plan
    cases, ignored = inputs_lib.find_cases(pcfg.input)
    if not cases:
        raise errors.DataError(
            f"predict.input={pcfg.input!r}: no image or DICOM series found"
            + (
                f" ({len(ignored)} file(s) ignored, e.g. {ignored[0][0]}: {ignored[0][1]})"
                if ignored
                else ""
            )
        )
    tta = pcfg.get("tta")
    post = postprocess.choose(members[0].workdir, pcfg.postprocess)
    if post.source:
        print(f"medjax: post-processing {post.describe()}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    progress = _Progress(len(cases))
    for case in cases:
        t0 = time.time()
        row: dict[str, Any] = {"case_id": case.id, "source": case.source}
        try:
            result = segment.predict_case(
                members,
                read_case(case),  # not kept here: predict_case frees it after preprocessing
                mirror_axes=None if tta is None else tuple(tta),
                keep_probabilities=bool(pcfg.save_probabilities),
                where=case.source,
            )
            spacing = result.labels.spacing
            array = post.apply(np.asarray(result.labels.array), spacing)
            result.labels = result.labels.with_array(array)
            written = write_case(
                case,
                result,
                plan,
                output,
                model_name=str(members[0].config.model.name),
                write_dicom_seg=bool(pcfg.get("write_dicom_seg", True)),
            )
            row.update(status="ok", reason="", **written)
            row.update(segment.class_stats(array, spacing, plan["label_values"]))
            row["max_probability"] = round(result.max_probability, 6)
        except Exception as e:  # noqa: BLE001 - one bad case must not stop the batch
            if not isinstance(e, errors.MedjaxError):
                logging.exception("predict: case %s failed", case.source)
            row.update(status="skipped", reason=f"{type(e).__name__}: {e}")
            progress.say(f"medjax: skipped {case.source}: {row['reason']}")
        row["seconds"] = round(time.time() - t0, 3)
        rows.append(row)
        progress.update(case.id)
    csv_path, ok = write_report(output, rows, ignored)
    print(
        f"medjax: predicted {ok} of {len(cases)} case(s) into {output}; "
        f"{len(rows) - ok} skipped (reasons in {csv_path})",
        file=sys.stderr,
    )
    return {
        "output": output,
        "csv": csv_path,
        "ok": ok,
        "rows": rows,
        "postprocessing": post.source,
    }


def predict(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """``--mode=predict`` (see the module docstring); ``config.predict`` holds the options.

    Raises:
      ConfigError: missing input/output, a non-empty output, ensemble members that disagree.
      CheckpointError: a workdir without a checkpoint.
    """
    pcfg = config.predict
    if not pcfg.input:
        raise errors.ConfigError("predict.input is empty; give a file or folder to predict.")
    output = check_output(pcfg.output, bool(pcfg.overwrite))  # before minutes of loading
    members = load_members(workdir, pcfg)
    task = members[0].plan.get("task")
    os.makedirs(output, exist_ok=True)
    if task == "luna":
        from medjax.predict import luna

        return luna.predict(members, pcfg, output)
    if task == "classification":
        from medjax.predict import classify

        return classify.predict(members, pcfg, output)
    if task != "segmentation":
        raise errors.ConfigError(
            f"{workdir}: task={task!r}; --mode=predict handles segmentation, "
            "classification and luna runs."
        )
    return run_segmentation(members, pcfg, output)
