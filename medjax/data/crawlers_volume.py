"""Crawlers of volume datasets: a Medical Segmentation Decathlon style NIfTI folder
(``nifti_volume``: dataset.json, multi-channel cases, imagesTs) and DICOM trees
(``dicom_series``: one case per series, a SEG or mask folder as the label). They return the
rows documented in ``medjax/data/crawlers.py``, which imports this module so they register.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from medjax import errors, registry
from medjax.data import io as io_lib
from medjax.data.crawl_files import (
    Case,
    Crawl,
    check_root,
    check_unique,
    image_files,
)

_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def dataset_json(root: str) -> dict[str, Any]:
    path = os.path.join(root, "dataset.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise errors.DataError(f"{path}: cannot parse dataset.json ({e}).") from e


def declared_labels(root: str) -> dict[int, str]:
    """Label value -> name from ``root``'s dataset.json (``{}`` without one or on region lists).

    Reads the Decathlon form (``"labels": {"0": "background", "1": "PZ", ...}``) and nnU-Net
    v2's (``"labels": {"background": 0, "PZ": 1, ...}``); names are made safe for metric keys
    (characters other than letters, digits, ``_ . -`` and spaces become ``_``; leading and
    trailing dots and spaces go, so no name is ``..``).
    """
    labels = dataset_json(root).get("labels")
    if not isinstance(labels, dict):
        return {}
    by_value: dict[int, str] = {}
    for key, value in labels.items():
        name, number = (value, key) if isinstance(value, str) else (key, value)
        try:
            by_value[int(number)] = re.sub(r"[^A-Za-z0-9_. -]", "_", str(name)).strip(" .")
        except (TypeError, ValueError):
            return {}  # region lists (nnU-Net v2 "whole tumor": [1, 2, 3]) are not classes
    return by_value


def label_names(root: str, num_classes: int) -> tuple[str, ...]:
    """Names of the foreground labels ``1..num_classes-1`` from ``root``'s dataset.json
    (``class_names(declared_labels(root), num_classes)``)."""
    return class_names(declared_labels(root), num_classes)


def class_names(by_value: Mapping[int, str], num_classes: int) -> tuple[str, ...]:
    """``by_value``'s names of labels ``1..num_classes-1``; ``()`` for a binary run, when a
    label is unnamed, or when two names collide (the label values then name the classes)."""
    if num_classes <= 2 or not by_value:
        return ()
    names = tuple(by_value.get(c, "") for c in range(1, num_classes))
    if not all(names) or len(set(names)) != len(names):
        return ()
    return names


def group_channels(files: list[str]) -> dict[str, list[str]]:
    """nnU-Net names channels ``<case>_0000``; returns case -> channel files sorted by index."""
    groups: dict[str, dict[int, str]] = {}
    for path in files:
        stem = io_lib.strip_extension(path)
        match = _CHANNEL_SUFFIX.match(stem)
        case, channel = (match["case"], int(match["channel"])) if match else (stem, 0)
        if channel in groups.setdefault(case, {}):
            raise errors.DataError(f"{path}: duplicate channel {channel} for case {case!r}.")
        groups[case][channel] = path
    out = {}
    for case, channels in groups.items():
        if sorted(channels) != list(range(len(channels))):
            raise errors.DataError(
                f"case {case!r}: channel files {sorted(channels)} are not 0..{len(channels) - 1} "
                f"({sorted(channels.values())})."
            )
        out[case] = [channels[i] for i in range(len(channels))]
    return out


@registry.register("crawlers.nifti_volume")
def get_nifti_volume(
    images_dir: str = "imagesTr",
    labels_dir: str = "labelsTr",
    test_dir: str | None = "imagesTs",
    extensions: Sequence[str] = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"),
) -> Crawl:
    """Decathlon / nnU-Net raw datasets: ``imagesTr``, ``labelsTr``, ``imagesTs``, dataset.json.

    Channels split over files as ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz`` (nnU-Net) are
    grouped into one case whose ``image`` is the list of channel paths; a single file (also a 4D
    Decathlon file) gives a path. When dataset.json has a Decathlon ``"training"`` list, that list
    is authoritative (its ``./imagesTr/x.nii.gz`` paths are relative to ``root``).

    Args:
      images_dir: training image folder.
      labels_dir: training label folder; the label of case ``c`` is ``<labels_dir>/c<ext>``.
      test_dir: unlabelled test folder (split ``"test"``), or None to skip it.
      extensions: image extensions.

    Returns:
      ``crawl(root) -> list[case]`` with ``id``, ``image`` (path or list of channel paths),
      ``label`` (path or None), ``split`` (``"train"`` / ``"test"``), and, from dataset.json when
      present, ``label_names`` ``{int: name}`` and ``channel_names`` ``{int: name}``.
    """

    def meta_of(info: dict[str, Any]) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        labels = info.get("labels")
        if isinstance(labels, dict) and labels:
            # Decathlon: {"0": "background"}; nnU-Net v2: {"background": 0}.
            if all(str(k).lstrip("-").isdigit() for k in labels):
                meta["label_names"] = {int(k): v for k, v in labels.items()}
            else:
                meta["label_names"] = {int(v): k for k, v in labels.items() if isinstance(v, int)}
        channels = info.get("channel_names") or info.get("modality")
        if isinstance(channels, dict):
            meta["channel_names"] = {int(k): v for k, v in channels.items()}
        return meta

    def crawl(root: str) -> list[Case]:
        root = check_root(root)
        info = dataset_json(root)
        meta = meta_of(info)
        cases: list[Case] = []
        skipped: list[dict] = []
        if isinstance(info.get("training"), list) and info["training"]:
            # A "validation" list (same entry form) becomes the "val" split.
            listed = [("train", e) for e in info["training"]]
            listed += [("val", e) for e in info.get("validation") or [] if isinstance(e, dict)]
            for split, entry in listed:
                image = os.path.normpath(os.path.join(root, entry["image"]))
                label = os.path.normpath(os.path.join(root, entry["label"]))
                for path in (image, label):
                    if not os.path.isfile(path):
                        raise errors.DataError(f"{path}: listed in dataset.json but missing.")
                cid = io_lib.strip_extension(image)
                cases.append({"id": cid, "image": image, "label": label, "split": split})
        else:
            folder = os.path.join(root, images_dir)
            if not os.path.isdir(folder):
                raise errors.DataError(f"{root}: no {images_dir} folder and no dataset.json list.")
            labels = (
                {
                    io_lib.strip_extension(p): p
                    for p in image_files(os.path.join(root, labels_dir), extensions, skipped)
                }
                if os.path.isdir(os.path.join(root, labels_dir))
                else {}
            )
            files = image_files(folder, extensions, skipped)
            for cid, channels in sorted(group_channels(files).items()):
                if cid not in labels:
                    raise errors.DataError(
                        f"{channels[0]}: no label {cid}<ext> in {os.path.join(root, labels_dir)}."
                    )
                image = channels if len(channels) > 1 else channels[0]
                cases.append({"id": cid, "image": image, "label": labels[cid], "split": "train"})
        test_folder = os.path.join(root, test_dir) if test_dir else None
        if test_folder and os.path.isdir(test_folder):
            # Test labels, when a dataset ships them, sit in labelsTs/<id><ext>.
            test_labels_dir = os.path.join(root, "labelsTs")
            test_labels = (
                {
                    io_lib.strip_extension(p): p
                    for p in image_files(test_labels_dir, extensions, skipped)
                }
                if os.path.isdir(test_labels_dir)
                else {}
            )
            test_files = image_files(test_folder, extensions, skipped)
            for cid, channels in sorted(group_channels(test_files).items()):
                image = channels if len(channels) > 1 else channels[0]
                label = test_labels.get(cid)
                cases.append({"id": cid, "image": image, "label": label, "split": "test"})
        if not cases:
            raise errors.DataError(f"{root}: no cases found.")
        for case in cases:
            case.update(meta)
        hint = "case ids must be unique across imagesTr and imagesTs."
        return check_unique(cases, root, hint, skipped)

    return crawl


@registry.register("crawlers.dicom_series")
def get_dicom_series(
    mask_root: str | None = None,
    mask_extensions: Sequence[str] = (".nii.gz", ".nii", ".nrrd", ".mha"),
    allow_unlabeled: bool = True,
) -> Crawl:
    """One case per DICOM series (SeriesInstanceUID) found anywhere under ``root``.

    Series are found by ``medjax.data.io.dicom.find_series``. A mask matches a series when its
    stem (under ``mask_root``, not recursive) equals the series uid or the name of the folder
    holding the series.

    Args:
      mask_root: folder of masks (NIfTI etc.), or None for no masks.
      mask_extensions: mask file extensions.
      allow_unlabeled: a series without a mask gets ``label=None``; when False it is an error.

    Returns:
      ``crawl(root) -> list[case]`` with ``id`` (the series uid), ``image`` (the folder holding
      the series; a single-file series gives the file), ``files`` (all of its files, sorted),
      ``series_uid`` and ``label``. When one folder holds several series, ``image`` is still that
      folder and ``files`` tells them apart.
    """

    def crawl(root: str) -> list[Case]:
        root = check_root(root)
        # Imported here: the DICOM module is optional for users of the other crawlers.
        from medjax.data.io import dicom

        scan = dicom.scan_series(root)
        series = scan.series
        # README files, RTSTRUCT / SR objects (DICOM without pixels), corrupt files.
        skipped = [{"file": f, "reason": r} for f, r in scan.skipped.items()]
        masks: dict[str, str] = {}
        if mask_root is not None:
            if not os.path.isdir(mask_root):
                raise errors.DataError(f"{mask_root}: mask folder does not exist.")
            masks = {io_lib.strip_extension(p): p for p in image_files(mask_root, mask_extensions)}
        cases = []
        for uid, files in sorted(series.items()):
            files = sorted(os.fspath(f) for f in files)
            folders = {os.path.dirname(f) for f in files}
            folder = folders.pop() if len(folders) == 1 else os.path.commonpath(files)
            image = files[0] if len(files) == 1 else folder
            label = masks.get(uid) or masks.get(os.path.basename(folder))
            if label is None and mask_root is not None and not allow_unlabeled:
                raise errors.DataError(
                    f"{folder}: series {uid} has no mask named {uid} or "
                    f"{os.path.basename(folder)} in {mask_root}."
                )
            cases.append(
                {"id": uid, "image": image, "files": files, "series_uid": uid, "label": label}
            )
        if not cases:
            raise errors.DataError(f"{root}: no DICOM series found.")
        return check_unique(cases, root, "series uids must be unique.", skipped)

    return crawl
