"""Case ids that are safe file names, and a guard that keeps writes inside their folder.

A case id comes from data (a DICOM SeriesInstanceUID, a file stem, a dataset.json entry, a LUNA
``seriesuid`` column) and is joined into store, workdir and output paths. Data can be hostile: a
crafted DICOM file whose uid is ``../../x`` or ``/abs`` made the store delete and write folders
outside itself. So every id is passed through ``safe_case_id`` before it names a file, the
original is kept beside it (``source_id``; the store manifest maps one to the other), and every
delete, rename and write in the store first checks its path with ``ensure_inside``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from medjax import errors

# Long enough for DICOM UIDs (at most 64 characters) and nnU-Net stems; short enough that
# "<id>.seg.dcm" or ".tmp-<id>-<pid>" stays far below the usual 255-byte name limit.
MAX_LENGTH = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_DIGEST_CHARS = 8


def safe_case_id(raw: Any) -> str:
    """A file-name-safe id for ``raw``, unchanged when ``raw`` is already one.

    Safe means: only ``[A-Za-z0-9._-]``, no leading dot (so never ``.``, ``..`` or a hidden
    name), not empty, at most ``MAX_LENGTH`` characters. Other characters become ``_``. When
    anything had to change, ``-<8 hex digits of sha1(raw)>`` is appended, so two different raw
    ids never map to one safe id (``a/b`` and ``a_b`` differ). Idempotent:
    ``safe_case_id(safe_case_id(x)) == safe_case_id(x)``.

    Args:
      raw: the id as the data gives it (converted with ``str``).

    Returns:
      The safe id.
    """
    raw = str(raw)
    safe = _UNSAFE.sub("_", raw).lstrip(".")
    if safe == raw and 0 < len(safe) <= MAX_LENGTH:
        return safe
    digest = hashlib.sha1(raw.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_CHARS]
    stem = safe[: MAX_LENGTH - _DIGEST_CHARS - 1] or "case"
    return f"{stem}-{digest}"


def sanitise_cases(cases: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Crawler cases with ``id`` made safe; a changed id keeps its original as ``source_id``.

    A case that already has ``source_id`` keeps it (sanitising twice changes nothing).
    """
    out = []
    for case in cases:
        case = dict(case)
        safe = safe_case_id(case["id"])
        if safe != case["id"]:
            case.setdefault("source_id", str(case["id"]))
            case["id"] = safe
        out.append(case)
    return out


def source_id(case: Mapping[str, Any]) -> str:
    """The id the data gave a case (its ``source_id`` when sanitising changed it)."""
    return str(case.get("source_id", case["id"]))


def ensure_inside(base: str | os.PathLike, path: str | os.PathLike) -> str:
    """``path`` when it lies inside ``base`` (symlinks resolved), else a DataError.

    Called before every delete, rename and write that a case id helped name: with ids from
    ``safe_case_id`` it never fires, and if it does, nothing outside ``base`` is touched.

    Args:
      base: the folder that must contain ``path`` (store, workdir or output folder).
      path: the path about to be deleted, renamed or written.

    Returns:
      ``path`` unchanged.

    Raises:
      DataError: ``path`` is ``base`` itself or resolves to somewhere outside it.
    """
    real_base = os.path.realpath(base)
    real = os.path.realpath(path)
    if real == real_base or os.path.commonpath([real_base, real]) != real_base:
        raise errors.DataError(
            f"Refusing to touch {os.fspath(path)!r}: it resolves to {real!r}, outside "
            f"{real_base!r}. A case id from the data must not name a path; report this input."
        )
    return os.fspath(path)
