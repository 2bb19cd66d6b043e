"""Crawlers: find the cases of a dataset on disk and return a case list.

A crawler is registered as ``"crawlers.<name>"``; its factory ``get_<name>(**params)`` returns
``crawl(root: str) -> list[dict]``. Each case is a dict of plain values::

    {"id": str, "image": str | list[str], "label": str | None, "split": str, ...}

``image`` is a path (a list of per-channel paths for multi-channel cases); ``label`` is a mask
path (``None`` when the case has no mask); a classification case has ``label=None`` and its
class in ``class_index`` (int) instead. ``split`` is present only when the folder layout names
one. Ids are safe file names (``case_ids.safe_case_id``; the data's id is kept as ``source_id``
when it had to change), unique within one crawl, and cases come sorted by (split, id), so a
crawl is deterministic. Crawlers only look at names: they never open an image (that is the
reader's job, at preprocessing time).

A crawl returns a ``CaseList``: a list of cases whose ``skipped_files`` attribute lists the files
it passed over (``{"file", "reason"}``: not an image, DICOM without pixels such as RTSTRUCT or
SR), which the store writes to ``report.json``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from medjax import errors, registry
from medjax.data import crawlers_volume  # noqa: F401 - registers nifti_volume, dicom_series
from medjax.data import io as io_lib

# CaseList re-exported: what a crawl returns.
from medjax.data.crawl_files import (  # noqa: F401
    Case,
    CaseList,
    Crawl,
    check_root,
    check_unique,
    image_files,
)

SPLITS = ("train", "val", "test")
# Every extension read_volume reads, except DICOM (handled by the dicom_series crawler).
IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".bmp",
    ".nii",
    ".nii.gz",
    ".mhd",
    ".mha",
    ".nrrd",
    ".nhdr",
)


# --- segmentation_file -------------------------------------------------------------------------


@registry.register("crawlers.segmentation_file")
def get_segmentation_file(
    image_dir: str = "images",
    mask_dir: str = "masks",
    splits: Sequence[str] = SPLITS,
    mask_suffixes: Sequence[str] = ("", "_mask", "_seg", "_label"),
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    allow_unlabeled: bool = False,
    id_with_split: bool = False,
) -> Crawl:
    """Paired image / mask files, one case per image.

    Layouts (tried in this order): ``root/<split>/<image_dir>/<id>.<ext>`` with masks in
    ``root/<split>/<mask_dir>/``, for each split folder in ``splits`` that exists; else the flat
    ``root/<image_dir>`` + ``root/<mask_dir>``. A mask matches an image when its stem is the
    image stem plus one of ``mask_suffixes`` (``""`` first: identical stems); its format may
    differ from the image's.

    Args:
      image_dir: folder name of the images.
      mask_dir: folder name of the masks.
      splits: split folder names to look for under ``root``.
      mask_suffixes: accepted mask stem suffixes, tried in order.
      extensions: image/mask file extensions to consider.
      allow_unlabeled: an image without a mask becomes a case with ``label=None`` instead of an
        error (e.g. an unlabelled test split).
      id_with_split: prefix ids with ``"<split>_"`` (when the same stem occurs in two splits).

    Returns:
      ``crawl(root) -> list[case]`` with ``id`` (the image stem), ``image``, ``label`` (mask path
      or None) and ``split`` (split layout only).
    """

    def pair(
        image_folder: str, mask_folder: str, split: str | None, skipped: list[dict]
    ) -> list[Case]:
        masks: dict[str, str] = {}
        if os.path.isdir(mask_folder):
            for path in image_files(mask_folder, extensions, skipped):
                stem = io_lib.strip_extension(path)
                if stem in masks:
                    raise errors.DataError(f"{path}: two masks share the stem {stem!r}.")
                masks[stem] = path
        cases = []
        for image in image_files(image_folder, extensions, skipped):
            stem = io_lib.strip_extension(image)
            label = next((masks[stem + s] for s in mask_suffixes if stem + s in masks), None)
            if label is None and not allow_unlabeled:
                raise errors.DataError(
                    f"{image}: no mask for this image in {mask_folder} (looked for stems "
                    f"{[stem + s for s in mask_suffixes]})."
                )
            case: Case = {"id": stem, "image": image, "label": label}
            if split is not None:
                case["split"] = split
                if id_with_split:
                    case["id"] = f"{split}_{stem}"
            cases.append(case)
        return cases

    def crawl(root: str) -> list[Case]:
        root = check_root(root)
        split_roots = [s for s in splits if os.path.isdir(os.path.join(root, s, image_dir))]
        skipped: list[dict] = []
        if split_roots:
            cases = []
            for split in split_roots:
                base = os.path.join(root, split)
                images, masks = os.path.join(base, image_dir), os.path.join(base, mask_dir)
                cases += pair(images, masks, split, skipped)
        elif os.path.isdir(os.path.join(root, image_dir)):
            images, masks = os.path.join(root, image_dir), os.path.join(root, mask_dir)
            cases = pair(images, masks, None, skipped)
        else:
            raise errors.DataError(
                f"{root}: found neither {root}/<split>/{image_dir} (splits {list(splits)}) nor "
                f"{root}/{image_dir}."
            )
        if not cases:
            raise errors.DataError(f"{root}: no image files with extensions {list(extensions)}.")
        return check_unique(cases, root, "set id_with_split=True or rename the files.", skipped)

    return crawl


# --- classification_folder ---------------------------------------------------------------------


@registry.register("crawlers.classification_folder")
def get_classification_folder(
    splits: Sequence[str] = SPLITS,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    class_names: Sequence[str] | None = None,
) -> Crawl:
    """One class per sub-folder: ``root/<class>/<file>`` or ``root/<split>/<class>/<file>``.

    The split layout is used when every sub-folder of ``root`` is a split name. Labels are class
    indices in the sorted order of the class folder names (over all splits), unless
    ``class_names`` fixes the order.

    Args:
      splits: split folder names.
      extensions: image file extensions.
      class_names: explicit class order; a class folder outside it is an error.

    Returns:
      ``crawl(root) -> list[case]`` with ``id`` (``"<class>_<stem>"``), ``image``, ``label``
      (None: no mask), ``class_index`` (int), ``class_name``, ``class_names`` (the full list)
      and ``split`` (split layout only).
    """

    def crawl(root: str) -> list[Case]:
        root = check_root(root)
        subdirs = sorted(
            d
            for d in os.listdir(root)
            if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")
        )
        if subdirs and all(d in splits for d in subdirs):
            parts = [(s, os.path.join(root, s)) for s in subdirs]
        else:
            parts = [(None, root)]
        found: list[tuple[str | None, str, str]] = []  # (split, class, file)
        skipped: list[dict] = []
        for split, base in parts:
            for cls in sorted(os.listdir(base)):
                folder = os.path.join(base, cls)
                if cls.startswith(".") or not os.path.isdir(folder):
                    continue
                found += [(split, cls, f) for f in image_files(folder, extensions, skipped)]
        names = list(class_names) if class_names else sorted({c for _, c, _ in found})
        cases = []
        for split, cls, path in found:
            if cls not in names:
                raise errors.DataError(f"{path}: class folder {cls!r} is not in {names}.")
            case: Case = {
                "id": f"{cls}_{io_lib.strip_extension(path)}",
                "image": path,
                "label": None,
                "class_index": names.index(cls),
                "class_name": cls,
                "class_names": names,
            }
            if split is not None:
                case["split"] = split
            cases.append(case)
        if not cases:
            raise errors.DataError(f"{root}: no <class>/<image> files found.")
        return check_unique(cases, root, "file stems must be unique within a class.", skipped)

    return crawl


# --- nifti_volume (Medical Segmentation Decathlon / nnU-Net raw) --------------------------------


# --- dicom_series ------------------------------------------------------------------------------
