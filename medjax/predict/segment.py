"""One segmentation case: preprocess with the recorded plan, predict, invert, post-process.

``predict_case`` is the per-case unit a batch runner (``predict.runner`` or an evaluation
runner) calls. It is the evaluation path on new data: ``preprocess_case`` with the run's
resolved spec, ``sliding_window_predict`` (Gaussian blending; one window when the case is the
patch), the label map from the logits (sigmoid > 0.5 / argmax), ``invert_prediction`` back to
the input's grid and geometry. An ensemble averages the members' probabilities on the input's
grid (each member preprocessed by its own plan) and labels the mean.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from medjax import errors
from medjax.data.io import volume as volume_lib
from medjax.predict import model as model_lib


@dataclasses.dataclass
class CaseResult:
    """A case's prediction on its original grid.

    Attributes:
      labels: ``Volume`` of ``uint8[*spatial]`` label values, the input's geometry.
      probabilities: ``Volume`` of ``float32[*spatial, K]`` (None unless asked for or ensembling).
      max_probability: the highest foreground probability anywhere in the case.
    """

    labels: volume_lib.Volume
    probabilities: volume_lib.Volume | None
    max_probability: float


def check_input(image: volume_lib.Volume, plan: Mapping[str, Any], where: str) -> None:
    """Raises DataError when ``image`` cannot go through ``plan``'s model (dims, channels)."""
    n = len(plan["patch_size"])
    if image.ndim_spatial != n:
        raise errors.DataError(
            f"{where}: a {image.ndim_spatial}D image given to a {n}D model "
            f"(shape {tuple(image.array.shape)})."
        )


def _preprocess(
    member: model_lib.Member, image: volume_lib.Volume, where: str
) -> tuple[np.ndarray, dict[str, Any]]:
    """``float32[*S, C]`` in ``member``'s preprocessed space, and the props to invert."""
    from medjax.data.preprocess import pipeline as pp

    plan = member.plan
    check_input(image, plan, where)
    array, _, props = pp.preprocess_case(image, None, plan["spec"])
    if plan.get("channels") is not None and array.shape[-1] != plan["channels"]:
        raise errors.DataError(
            f"{where}: {array.shape[-1]} channel(s) after preprocessing but the model "
            f"({member.workdir}) was trained on {plan['channels']}."
        )
    return array, props


def _logits(
    member: model_lib.Member, array: np.ndarray, mirror_axes: Sequence[int] | None
) -> np.ndarray:
    """Sliding-window logits ``float32[*S, K]`` of a preprocessed array."""
    from medjax.evaluate import sliding_window

    plan = member.plan
    inference = plan["inference"]
    axes = inference["mirror_axes"] if mirror_axes is None else mirror_axes
    return sliding_window.sliding_window_predict(
        member.logits,
        array,
        tile_size=tuple(plan["patch_size"]),
        num_classes=int(plan["num_classes"]),
        step_fraction=inference["step_fraction"],
        batch_size=inference["batch_size"],
        mirror_axes=tuple(int(a) for a in axes),
        mesh=member.mesh,
        blend=inference["blend"],  # "auto": host blending for large volumes on a CPU backend
    )


def labels_from_logits(logits: np.ndarray, regions: Sequence[Sequence[int]] = ()) -> np.ndarray:
    """``[*S, K]`` logits -> ``uint8[*S]`` (logit > 0 for K == 1, else argmax; a region run's
    sigmoids painted as ``metrics.regions``), as evaluation."""
    from medjax.metrics import regions as region_lib

    return region_lib.labels_from_logits(logits, _regions(regions)).astype(np.uint8)


def labels_from_probabilities(
    probs: np.ndarray, regions: Sequence[Sequence[int]] = ()
) -> np.ndarray:
    """``[*S, K]`` probabilities -> ``uint8[*S]`` (p > 0.5 for K == 1 and per region, else
    argmax): ``labels_from_logits`` of ``p - 0.5``, whose sign is the logit's."""
    return labels_from_logits(np.asarray(probs) - np.float32(0.5), regions)


def _regions(regions: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(v) for v in r) for r in regions)


def _max_foreground(probs: np.ndarray, regions: Sequence[Sequence[int]] = ()) -> float:
    if regions:  # one sigmoid per region, no background channel
        return float(probs.max()) if probs.size else 0.0
    fg = probs[..., 0] if probs.shape[-1] == 1 else probs[..., 1:]
    return float(fg.max()) if fg.size else 0.0


def max_foreground_from_logits(logits: np.ndarray, regions: Sequence[Sequence[int]] = ()) -> float:
    """The highest foreground probability of ``[*S, K]`` logits, without a probability map:
    sigmoid of the largest logit for K == 1 or regions (monotone), else softmax slab by slab."""
    if logits.size == 0:
        return 0.0
    if logits.shape[-1] == 1 or regions:
        return float(model_lib.probabilities(np.asarray([logits.max()], np.float32))[0])
    return max(
        _max_foreground(model_lib.probabilities(logits[i : i + 16]))
        for i in range(0, logits.shape[0], 16)
    )


def predict_case(
    members: Sequence[model_lib.Member],
    image: volume_lib.Volume,
    *,
    mirror_axes: Sequence[int] | None = None,
    keep_probabilities: bool = False,
    where: str = "<case>",
) -> CaseResult:
    """Predicts one case with one model or an ensemble (see the module docstring).

    Args:
      members: loaded models (``model.load_member``), checked by ``model.check_ensemble``.
      image: the input ``[*spatial(, C)]`` with its geometry, as ``read_volume`` gives it.
      mirror_axes: mirror TTA axes in the preprocessed array's axes; None: each run's
        ``eval.mirror_axes`` (what its validation used).
      keep_probabilities: also return the probabilities on the original grid.
      where: the case's name for error messages.

    Returns:
      ``CaseResult`` on the input's grid and geometry.

    Raises:
      DataError: the image does not fit the model (dimensionality, channels).
    """
    import json

    from medjax.data.preprocess import pipeline as pp

    # Preprocess once per distinct plan (the folds of one configuration share theirs), then let
    # go of the input: only the preprocessed arrays and the props (geometry) are needed now.
    # (A caller that passes ``read_volume(...)`` inline frees the source array here.)
    inputs: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
    keys = []
    for member in members:
        key = json.dumps([member.plan["spec"], member.plan.get("channels")], sort_keys=True)
        if key not in inputs:
            inputs[key] = _preprocess(member, image, where)
        keys.append(key)
    del image
    regions = members[0].plan.get("regions", [])  # a region run: one sigmoid per region
    sigmoid = bool(regions)
    if len(members) == 1:
        array, props = inputs.pop(keys[0])
        logits = _logits(members[0], array, mirror_axes)
        del array
        labels = pp.invert_prediction(labels_from_logits(logits, regions), props)
        max_p = max_foreground_from_logits(logits, regions)
        prob_vol = None
        if keep_probabilities:
            prob_vol = pp.invert_prediction(model_lib.probabilities(logits, sigmoid), props)
        return CaseResult(labels, prob_vol, max_p)
    total: np.ndarray | None = None
    for member, key in zip(members, keys, strict=True):
        array, props = inputs[key]
        logits = _logits(member, array, mirror_axes)
        vol = pp.invert_prediction(model_lib.probabilities(logits, sigmoid), props)
        del logits
        total = np.asarray(vol.array, np.float32) if total is None else total + vol.array
    mean = total / np.float32(len(members))
    prob_vol = vol.with_array(mean)
    labels = prob_vol.with_array(labels_from_probabilities(mean, regions))
    max_p = _max_foreground(mean, regions)
    return CaseResult(labels, prob_vol if keep_probabilities else None, max_p)


# --- post-processing and statistics ------------------------------------------------------------


def voxel_ml(spacing: Sequence[float]) -> float:
    """Millilitres per voxel (mm^3 / 1000); for 2D, the pixel area in cm^2."""
    return float(math.prod(float(s) for s in spacing)) / 1000.0


def postprocess(
    labels: np.ndarray,
    spacing: Sequence[float],
    *,
    keep_largest: Sequence[int] = (),
    min_size_voxels: int = 0,
    min_size_ml: float = 0.0,
) -> np.ndarray:
    """Connected-component clean-up of a label map, per foreground class.

    For each label value in ``keep_largest`` only its largest connected component is kept
    (``scipy.ndimage.label``, face connectivity; the first in scan order on a tie). Then, for
    every foreground label, components smaller than ``min_size_voxels`` voxels or
    ``min_size_ml`` millilitres (from ``spacing``) are removed. Removed voxels become 0.

    Args:
      labels: ``int[*spatial]`` label values.
      spacing: mm per voxel in array axis order.

    Returns:
      The cleaned label map (a new array; the input is not modified).
    """
    out = np.array(labels, copy=True)
    min_vox = max(int(min_size_voxels), math.ceil(float(min_size_ml) / voxel_ml(spacing) - 1e-9))
    keep = {int(k) for k in keep_largest}
    if not keep and min_vox <= 1:
        return out
    for value in np.unique(out):
        if value == 0 or (int(value) not in keep and min_vox <= 1):
            continue
        components, n = ndimage.label(out == value)
        if n == 0:
            continue
        sizes = np.bincount(components.ravel())[1:]
        drop = np.zeros(n + 1, bool)
        if int(value) in keep and n > 1:
            drop[1:] = True
            drop[1 + int(np.argmax(sizes))] = False
        drop[1:] |= sizes < min_vox
        out[drop[components]] = 0
    return out


def class_stats(
    labels: np.ndarray, spacing: Sequence[float], label_values: Sequence[int]
) -> dict[str, float]:
    """Per foreground label value ``k``: ``class<k>_voxels``, ``class<k>_ml`` and
    ``class<k>_components`` (connected components, face connectivity)."""
    per_voxel = voxel_ml(spacing)
    out: dict[str, float] = {}
    for k in label_values:
        if k == 0:
            continue
        mask = labels == k
        count = int(np.count_nonzero(mask))
        out[f"class{k}_voxels"] = count
        out[f"class{k}_ml"] = round(count * per_voxel, 6)
        out[f"class{k}_components"] = int(ndimage.label(mask)[1]) if count else 0
    return out
