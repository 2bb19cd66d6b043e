"""One case through offline preprocessing, and a prediction back to the original grid.

``preprocess_case(image, label, spec)`` runs, in this order (nnU-Net's order):

1. channel axis added (``[*spatial, C]``); ``grayscale``: RGB(A) -> luminance;
2. label checked against the image (shape and geometry) and mapped (``label_mode``);
3. ``reorient`` (3D): axes permuted/flipped to the closest canonical ``"RAS"`` / ``"LPS"`` order;
4. ``crop_foreground``: crop to the bounding box of the nonzero body mask;
5. ``normalization`` (statistics of the cropped image, optionally inside the body mask);
6. ``target_spacing_mm``: resample (image spline ``image_order``, label ``label_resampling``);
7. ``target_size``: resize to a fixed shape (2D use; also works in 3D).

Every step records what it did in ``props`` (JSON-able), and ``invert_prediction(pred, props)``
undoes steps 7..3 on a label map or class probabilities, returning a ``Volume`` on the original
grid with the original geometry, ready for ``write_volume``.

"RAS" canonical means array axes ``(D, H, W)`` point to (S, A, R) i.e. the ``W`` axis runs
toward patient right, as nibabel's ``as_closest_canonical`` after our axis reversal; "LPS" means
``(D, H, W)`` -> (S, P, L), ITK's identity direction.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np

from medjax import errors
from medjax.data.io import volume as volume_lib
from medjax.data.preprocess import crop as crop_lib
from medjax.data.preprocess import normalize as normalize_lib
from medjax.data.preprocess import orientation
from medjax.data.preprocess import resample as resample_lib
from medjax.data.preprocess.load import load_case  # noqa: F401 - re-exported: pp.load_case

# A spec value chosen from the dataset fingerprint when the store is built
# (``fingerprint.resolve_auto``).
AUTO = "auto"

DEFAULT_SPEC: dict[str, Any] = {
    # RGB(A) -> one luminance channel (ITU-R 601-2 weights, as Pillow's "L"); gray+alpha -> gray.
    "grayscale": False,
    # Fixed output spatial shape, e.g. (64, 64), applied last; None keeps the shape.
    "target_size": None,
    # None, "RAS" or "LPS": canonical axis order/orientation of 3D volumes.
    "reorient": None,
    # mm per voxel in array axis order, e.g. (2.5, 0.8, 0.8); None keeps the spacing; "auto":
    # nnU-Net's rule on the dataset fingerprint (median, or 10th percentile of a thick axis).
    "target_spacing_mm": None,
    # Crop to the bounding box of the nonzero (any channel) body mask with holes filled.
    "crop_foreground": False,
    # {"name": "zscore"|"ct"|"percentile"|"minmax"|"none", ...}: see preprocess.normalize;
    # {"name": "auto"}: chosen from the fingerprint by ``modality`` (CT window or z-score).
    "normalization": {"name": "zscore"},
    # "CT", "MR", ... (or None): only read to resolve normalization "auto".
    "modality": None,
    # "binary": label > 0 -> 1; "keep": label values as they are (0..255).
    "label_mode": "keep",
    # Spline order for the image when resampling.
    "image_order": 3,
    # "linear_per_label" (nnU-Net) or "nearest" for labels when resampling.
    "label_resampling": "linear_per_label",
}

_LUMA = np.array([0.299, 0.587, 0.114])
_GEOMETRY_TOL = {"spacing": 1e-3, "origin": 1e-3, "direction": 1e-4}


def unset_none_tuples(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` with ``target_size`` / ``target_spacing_mm`` of ``(None,)`` set to None.

    ``--config.data.preprocess.target_size=None`` on a tuple placeholder parses as ``(None,)``;
    it means "unset". Normalised before the store's hash, so both spellings share a store.
    """
    out = dict(spec)
    for key in ("target_size", "target_spacing_mm"):
        if isinstance(out.get(key), (list, tuple)) and list(out[key]) == [None]:
            out[key] = None
    return out


def resolve_spec(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """``DEFAULT_SPEC`` updated by ``spec``, validated, with tuples as lists (JSON-able).

    Raises:
      ConfigError: an unknown key or an invalid value (the message names the allowed values).
    """
    spec = unset_none_tuples(spec or {})
    unknown = set(spec) - set(DEFAULT_SPEC)
    if unknown:
        raise errors.ConfigError(
            f"Unknown preprocessing spec keys {sorted(unknown)}; allowed: {sorted(DEFAULT_SPEC)}."
        )
    out = copy.deepcopy(DEFAULT_SPEC)
    out.update(spec)
    if out["reorient"] not in (None, *orientation.CANONICAL):
        raise errors.ConfigError(f"reorient={out['reorient']!r}; allowed: None, 'RAS', 'LPS'.")
    if out["label_mode"] not in ("binary", "keep"):
        raise errors.ConfigError(f"label_mode={out['label_mode']!r}; allowed: 'binary', 'keep'.")
    if out["label_resampling"] not in resample_lib.LABEL_MODES:
        raise errors.ConfigError(
            f"label_resampling={out['label_resampling']!r}; allowed: {resample_lib.LABEL_MODES}."
        )
    if out["modality"] is not None and not isinstance(out["modality"], str):
        raise errors.ConfigError(f"modality={out['modality']!r}; allowed: a string such as 'CT'.")
    for key in ("target_size", "target_spacing_mm"):
        if key == "target_spacing_mm" and out[key] == AUTO:
            continue
        if isinstance(out[key], str):
            raise errors.ConfigError(
                f"{key}={out[key]!r}; allowed: None, a tuple of numbers"
                + (", or 'auto'." if key == "target_spacing_mm" else ".")
            )
        if out[key] is not None:
            try:
                out[key] = [int(v) if key == "target_size" else float(v) for v in out[key]]
            except (TypeError, ValueError) as e:
                raise errors.ConfigError(f"{key}={out[key]!r} is not a tuple of numbers.") from e
            if any(v <= 0 for v in out[key]):
                raise errors.ConfigError(f"{key}={out[key]} must be positive.")
    out["normalization"] = dict(out["normalization"])
    if out["normalization"].get("name") == AUTO:
        if set(out["normalization"]) != {"name"}:
            raise errors.ConfigError(
                f"normalization={out['normalization']}: 'auto' takes no other keys."
            )
        if not out["modality"]:
            # Checked here, before the fingerprint pass reads every case.
            raise errors.ConfigError(
                "normalization.name='auto' needs data.preprocess.modality: 'CT' (dataset-wide "
                "window + z-score) or another modality such as 'MR' (per-image z-score)."
            )
    else:
        normalize_lib.check_params(out["normalization"])  # fail at spec time, not at a case
    return out


# --- checks ------------------------------------------------------------------------------------


def _describe(volume: volume_lib.Volume) -> str:
    return str(volume.meta.get("path", "<in-memory volume>"))


def _check_label(image: volume_lib.Volume, label: volume_lib.Volume) -> np.ndarray:
    """Returns the label as int64 ``[*spatial]`` after checking it against the image."""
    where = f"label {_describe(label)} vs image {_describe(image)}"
    array = np.asarray(label.array)
    n = image.ndim_spatial
    if label.ndim_spatial != n:
        raise errors.DataError(f"{where}: {label.ndim_spatial}D label for a {n}D image.")
    if array.ndim == n + 1:
        if not np.all(array == array[..., :1]):
            raise errors.DataError(f"{where}: label has {array.shape[-1]} differing channels.")
        array = array[..., 0]
    if array.shape != image.spatial_shape:
        raise errors.DataError(
            f"{where}: shape {array.shape} differs from image shape {image.spatial_shape}."
        )
    checks = (
        ("spacing", np.asarray(label.spacing), np.asarray(image.spacing)),
        ("origin", np.asarray(label.origin), np.asarray(image.origin)),
        ("direction", label.direction, image.direction),
    )
    for name, got, want in checks:
        if not np.allclose(got, want, rtol=0, atol=_GEOMETRY_TOL[name]):
            raise errors.DataError(
                f"{where}: {name} differs: label {np.round(got, 6).tolist()} vs image "
                f"{np.round(want, 6).tolist()}."
            )
    if not np.issubdtype(array.dtype, np.integer):
        if np.issubdtype(array.dtype, np.bool_):
            array = array.astype(np.uint8)
        elif not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise errors.DataError(f"{where}: label values are not integers ({array.dtype}).")
    array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise errors.DataError(f"{where}: negative label value {array.min()}.")
    return array


# --- reorientation ------------------------------------------------------------------------------


# --- forward -------------------------------------------------------------------------------------


def _to_channels(image: volume_lib.Volume, grayscale: bool) -> np.ndarray:
    array = np.asarray(image.array)
    if array.ndim == image.ndim_spatial:
        array = array[..., None]
    if grayscale and array.shape[-1] > 1:
        channels = array.shape[-1]
        if channels in (3, 4):
            array = (array[..., :3].astype(np.float64) @ _LUMA)[..., None]
        elif channels == 2:
            array = array[..., :1]
        else:
            raise errors.DataError(
                f"{_describe(image)}: grayscale needs 1-4 channels, got {channels}."
            )
    return array


def preprocess_case(
    image: volume_lib.Volume, label: volume_lib.Volume | None, spec: Mapping[str, Any] | None
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Preprocesses one case (see the module docstring for the order of steps).

    Args:
      image: ``[*spatial]`` or ``[*spatial, C]`` volume (2D or 3D).
      label: integer label map on the same grid (``[*spatial]``), or None.
      spec: keys of ``DEFAULT_SPEC`` (missing keys take the defaults).

    Returns:
      ``(image float32[*new_spatial, C], label uint8[*new_spatial] | None, props)``; ``props``
      holds the final geometry (``spacing_mm``, ``origin``, ``direction``, ``shape``, in array
      axis order), the original geometry (``original``), each step's parameters and the
      normalisation statistics, all JSON-able.

    Raises:
      DataError: the label disagrees with the image (shape, spacing, origin, direction: the
        message gives both values), or label values are not 0..255 integers.
      ConfigError: an invalid spec.
    """
    spec = resolve_spec(spec)
    if spec["target_spacing_mm"] == AUTO or spec["normalization"]["name"] == AUTO:
        raise errors.ConfigError(
            "The spec still holds 'auto' values; resolve them from the dataset fingerprint "
            "first (fingerprint.resolve_auto, as store.build_store does)."
        )
    n = image.ndim_spatial
    array = _to_channels(image, spec["grayscale"])
    lab = None if label is None else _check_label(image, label)
    if lab is not None:
        if spec["label_mode"] == "binary":
            lab = (lab > 0).astype(np.uint8)
        elif lab.size and lab.max() > 255:
            raise errors.DataError(
                f"label {_describe(label)}: value {lab.max()} does not fit uint8; remap labels."
            )
        lab = lab.astype(np.uint8)
    spacing, origin, direction = image.spacing, image.origin, image.direction.copy()
    props: dict[str, Any] = {
        "original": image.geometry(),
        "source": image.meta.get("path"),
        "spec": spec,
        "reorient": None,
        "crop_box": None,
        "shape_before_crop": None,
        "resize_steps": [],
    }

    if spec["reorient"] is not None:
        if n != 3:
            raise errors.ConfigError(f"reorient={spec['reorient']!r} applies to 3D, got {n}D.")
        perm, flip = orientation.orientation(direction, spec["reorient"])
        old_index = [(array.shape[perm[b]] - 1) if flip[b] else 0 for b in range(n)]
        corner = np.zeros(n)
        corner[perm] = old_index
        origin = tuple((np.asarray(origin) + direction @ (np.asarray(spacing) * corner)).tolist())
        signs = np.where(flip, -1.0, 1.0)
        direction = direction[:, perm] * signs[None, :]
        spacing = tuple(spacing[p] for p in perm)
        array = orientation.apply_orientation(array, perm, flip)
        lab = None if lab is None else orientation.apply_orientation(lab, perm, flip)
        props["reorient"] = {"perm": perm, "flip": flip}

    mask = None
    if spec["crop_foreground"]:
        mask = crop_lib.nonzero_mask(array, n)
        box = crop_lib.bbox(mask)
        props["shape_before_crop"] = list(array.shape[:n])
        props["crop_box"] = [list(b) for b in box]
        origin = crop_lib.cropped_origin(origin, spacing, direction, box)
        array, mask = crop_lib.crop(array, box), crop_lib.crop(mask, box)
        lab = None if lab is None else crop_lib.crop(lab, box)
    elif spec["normalization"].get("use_mask"):
        mask = crop_lib.nonzero_mask(array, n)

    array, props["normalization"] = normalize_lib.normalize(array, spec["normalization"], mask)

    targets = []
    if spec["target_spacing_mm"] is not None:
        if len(spec["target_spacing_mm"]) != n:
            raise errors.ConfigError(f"target_spacing_mm={spec['target_spacing_mm']} is not {n}D.")
        targets.append(
            resample_lib.shape_for_spacing(array.shape[:n], spacing, spec["target_spacing_mm"])
        )
    if spec["target_size"] is not None:
        if len(spec["target_size"]) != n:
            raise errors.ConfigError(f"target_size={spec['target_size']} is not {n}D.")
        targets.append(tuple(spec["target_size"]))
    for new_shape in targets:
        old_shape = tuple(array.shape[:n])
        if new_shape == old_shape:
            continue
        spacing, origin = resample_lib.resampled_geometry(
            old_shape, spacing, origin, direction, new_shape
        )
        array = resample_lib.resample_image(array, None, None, spec["image_order"], shape=new_shape)
        if lab is not None:
            lab = resample_lib.resample_label(
                lab, None, None, spec["label_resampling"], shape=new_shape
            )
        props["resize_steps"].append([list(old_shape), list(new_shape)])

    props.update(
        spacing_mm=list(spacing),
        origin=list(origin),
        direction=np.asarray(direction).tolist(),
        shape=list(array.shape[:n]),
        channels=int(array.shape[-1]),
    )
    if lab is not None:
        props["label_values"] = np.unique(lab).astype(int).tolist()
    return np.ascontiguousarray(array, np.float32), lab, props


# --- inverse -------------------------------------------------------------------------------------


def invert_prediction(pred: np.ndarray, props: Mapping[str, Any]) -> volume_lib.Volume:
    """Maps a prediction in preprocessed space back onto the original image grid.

    Args:
      pred: a label map ``int[*shape]`` or probabilities ``float[*shape, K]`` where ``shape``
        is ``props["shape"]``. Label maps are resampled with the spec's ``label_resampling``,
        probabilities linearly per class; outside the foreground crop a label map gets 0 and
        probabilities get class 0 (for ``K == 1``, a sigmoid foreground probability, 0).
      props: the ``props`` returned by ``preprocess_case`` (also after a JSON round trip).

    Returns:
      ``Volume`` on the original grid (``props["original"]``), array ``[*orig_shape]`` (label
      dtype kept) or float32 ``[*orig_shape, K]``.

    Raises:
      DataError: ``pred``'s spatial shape is not ``props["shape"]``.
    """
    shape = tuple(props["shape"])
    n = len(shape)
    pred = np.asarray(pred)
    probs = pred.ndim == n + 1
    if tuple(pred.shape[:n]) != shape or pred.ndim not in (n, n + 1):
        raise errors.DataError(
            f"prediction of shape {pred.shape} does not fit preprocessed shape {list(shape)} "
            f"(case {props.get('source')})."
        )
    spec = props["spec"]
    for old_shape, _ in reversed(props["resize_steps"]):
        if probs:
            pred = resample_lib.resample_image(pred, None, None, 1, shape=old_shape)
        else:
            pred = resample_lib.resample_label(
                pred, None, None, spec["label_resampling"], shape=old_shape
            )
    if props["crop_box"] is not None:
        fill: float | np.ndarray = 0
        if probs and pred.shape[-1] > 1:
            fill = np.zeros(pred.shape[-1], pred.dtype)
            fill[0] = 1
        pred = crop_lib.uncrop(pred, props["crop_box"], props["shape_before_crop"], fill)
    if props["reorient"] is not None:
        pred = orientation.undo_orientation(
            pred, props["reorient"]["perm"], props["reorient"]["flip"]
        )
    original = props["original"]
    if tuple(pred.shape[:n]) != tuple(original["shape"]):
        raise errors.DataError(
            f"inverted prediction shape {pred.shape[:n]} != original {original['shape']} "
            f"(case {props.get('source')}): props are inconsistent."
        )
    meta = {"path": props.get("source")} if props.get("source") else {}
    return volume_lib.Volume(
        np.ascontiguousarray(pred),
        original["spacing_mm"],
        original["origin"],
        np.asarray(original["direction"]),
        meta,
    )
