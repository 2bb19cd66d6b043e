"""What every crawler shares: listing image files (and what is passed over), unique safe ids,
and the ``CaseList`` a crawl returns."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from medjax import errors
from medjax.data import case_ids

Case = dict[str, Any]
Crawl = Callable[[str], list[Case]]  # returns a CaseList


def check_root(root: str) -> str:
    """``root`` as a string path; a DataError when it is not a folder."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise errors.DataError(f"{root}: dataset root does not exist or is not a folder.")
    return root


class CaseList(list):
    """A crawl's cases (a plain list of case dicts) and the files it passed over.

    Attributes:
      skipped_files: ``[{"file": path, "reason": why}]``, for the store's ``report.json``.
    """

    def __init__(self, cases: Sequence[Case] = (), skipped_files: Sequence[dict] = ()):
        super().__init__(cases)
        self.skipped_files = list(skipped_files)


def image_files(
    folder: str, extensions: Sequence[str], skipped: list[dict] | None = None
) -> list[str]:
    """Sorted image files of ``folder`` (not recursive), skipping hidden and macOS ``._`` files.

    Other files (a README, notes, a spreadsheet) are appended to ``skipped`` with the reason.
    """
    lower_ext = tuple(e.lower() for e in extensions)
    found = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or not os.path.isfile(path):
            continue
        if name.lower().endswith(lower_ext):
            found.append(path)
        elif skipped is not None:
            skipped.append({"file": path, "reason": f"not an image file ({', '.join(lower_ext)})"})
    return found


def check_unique(
    cases: list[Case], root: str, hint: str, skipped_files: Sequence[dict] = ()
) -> CaseList:
    """``cases`` with safe ids, checked unique (``hint`` says how to fix a clash), sorted by
    (split, id), as a ``CaseList`` carrying ``skipped_files``."""
    # Ids name files downstream: made safe here (the original stays as "source_id").
    cases = case_ids.sanitise_cases(cases)
    seen: dict[str, Any] = {}
    for case in cases:
        if case["id"] in seen:
            raise errors.DataError(
                f"{root}: case id {case['id']!r} occurs twice ({seen[case['id']]} and "
                f"{case['image']}); {hint}"
            )
        seen[case["id"]] = case["image"]
    ordered = sorted(cases, key=lambda c: (c.get("split", ""), c["id"]))
    return CaseList(ordered, sorted(skipped_files, key=lambda f: f["file"]))
