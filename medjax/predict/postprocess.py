"""Which post-processing ``--mode=predict`` applies to a run's label maps, and applying it.

Precedence: ``predict.postprocess.keep_largest`` / ``min_size_voxels`` / ``min_size_ml``, when
any is set, are the user's choice and replace the run's; otherwise, with
``predict.postprocess.auto`` (default True), the run's own ``postprocessing.json`` (chosen on
validation by ``--mode=choose_postprocessing``; found by ``medjax.plan.postprocessing.find``: the
run's, a fold's cross-validation's, or the copy inside a bundle) is applied per class;
otherwise nothing. Label values are class indices (``predict.plan``), so the file's class keys
apply to the label maps as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medjax.plan import postprocessing
from medjax.predict import segment


@dataclasses.dataclass(frozen=True)
class Choice:
    """The post-processing of one predict run.

    Attributes:
      source: ``"predict.postprocess"`` (the user's settings), the path of the applied
        ``postprocessing.json``, or ``""`` (none).
      options: the user's ``keep_largest``, ``min_size_voxels``, ``min_size_ml``.
      doc: the applied ``postprocessing.json`` document (None unless ``source`` is its path).
    """

    source: str
    options: Mapping[str, Any]
    doc: Mapping[str, Any] | None = None

    def apply(self, labels: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """``labels int[*spatial]`` post-processed (a new array); ``spacing`` in mm for
        ``min_size_ml``."""
        if self.doc is not None:
            return postprocessing.apply(labels, self.doc)
        return segment.postprocess(labels, spacing, **self.options)

    def describe(self) -> str:
        """One line for the user, e.g. ``class 1: keep largest (from <path>)``."""
        if self.doc is not None:
            return f"{postprocessing.summary(self.doc)} (from {self.source})"
        if self.source:
            return ", ".join(f"{k}={v}" for k, v in self.options.items()) + f" ({self.source})"
        return "none"


def choose(run_dir: str, post: Any) -> Choice:
    """The post-processing for predictions of the run (or bundle) at ``run_dir``.

    Args:
      run_dir: the first model's folder (the ``--workdir``; a fold of a cross-validation; a
        bundle).
      post: the ``predict.postprocess`` section (see the module docstring).

    Raises:
      DataError: the run's ``postprocessing.json`` is unreadable (names the file).
    """
    options = {
        "keep_largest": tuple(int(k) for k in post.keep_largest),
        "min_size_voxels": int(post.min_size_voxels),
        "min_size_ml": float(post.min_size_ml),
    }
    if options["keep_largest"] or options["min_size_voxels"] > 0 or options["min_size_ml"] > 0:
        return Choice("predict.postprocess", options)
    path = postprocessing.find(run_dir) if post.auto else None
    if path is None:
        return Choice("", options)
    return Choice(path, options, postprocessing.load_path(path))
