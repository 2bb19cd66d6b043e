"""What identifies a case's inputs, and the small file helpers the store and its caches share.

``source_signature`` keys every cache (a store case, a fingerprint part) on the paths, sizes and
mtimes of a case's files; ``write_json`` writes atomically; ``problem`` is the record of a case
that could not be read, as ``report.json`` lists it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any


def spec_hash(spec: Any) -> str:
    """A short stable hash of a preprocessing spec (and anything else JSON-able)."""
    return hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def case_paths(case: Mapping[str, Any], key: str) -> list[str]:
    """The file paths under ``case[key]`` (a path, a list of paths, or absent)."""
    value = case.get(key)
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def source_signature(case: Mapping[str, Any], spec_id: str) -> str:
    """Identifies a case's inputs: paths, sizes and mtimes of its files plus the spec hash."""
    parts = [spec_id]
    for path in case_paths(case, "image") + case_paths(case, "label"):
        try:
            st = os.stat(path)
            parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{path}:missing")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()


def write_json(path: str, obj: Any) -> None:
    """Writes ``obj`` as JSON to ``path`` atomically (a temporary file renamed into place)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)


def problem(case: Mapping[str, Any], e: Exception) -> dict[str, Any]:
    """The report record of a case that failed: ``{id, files, reason}``."""
    files = case_paths(case, "image") + case_paths(case, "label")
    return {"id": case["id"], "files": files, "reason": f"{type(e).__name__}: {e}"}
