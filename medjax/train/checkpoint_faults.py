"""What goes wrong with checkpoints on disk, in words: damaged steps, other models, full disks.

``Checkpointer`` (``medjax/train/checkpoint.py``) uses these to skip a damaged step (hidden from
orbax by ``SkipSteps``), to tell damage from a different model (``shape_differences``), and to
turn a full or read-only disk into one ``CheckpointError`` naming the folder (``disk_error``).
"""

from __future__ import annotations

import errno
import json
import os
import re
from typing import Any

import jax
import orbax.checkpoint as ocp

from medjax import errors

# Errors of the file system that a user fixes (space, permissions), not bugs.
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


class SkipSteps:
    """An orbax step NameFormat that hides the given steps (damaged ones) from the manager."""

    def __init__(self, base: Any, skip: dict[int, str]):
        self._base, self._skip = base, skip

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)

    def build_name(self, step: int) -> str:
        return self._base.build_name(step)

    def find_all(self, base_path: Any):
        return (m for m in self._base.find_all(base_path) if m.step not in self._skip)

    def find_step(self, base_path: Any, step: int):
        if step in self._skip:
            raise ValueError(f"Step {step} under {base_path} is damaged: {self._skip[step]}.")
        return self._base.find_step(base_path, step)


def scan_damaged(directory: str) -> dict[int, str]:
    """Finished steps under ``directory`` whose metadata files are missing or do not parse.

    Cheap (a few small JSON files per step); a truncated array chunk is only found at restore.
    """
    damaged = {}
    if not os.path.isdir(directory):
        return damaged
    for name in os.listdir(directory):
        step_dir = os.path.join(directory, name)
        if not (name.isdigit() and os.path.isdir(step_dir)):
            continue  # tmp folders of unfinished saves, orbax's own files
        if not os.path.isdir(os.path.join(step_dir, "state")):
            damaged[int(name)] = "state/ is missing"
            continue
        for rel in ("state/_METADATA", "data/metadata", "metrics/metrics"):
            f = os.path.join(step_dir, rel)
            if rel != "state/_METADATA" and not os.path.exists(f):
                continue  # optional items
            try:
                with open(f) as fh:
                    json.load(fh)
            except (OSError, ValueError) as e:
                damaged[int(name)] = f"{rel}: {type(e).__name__}: {first_line(e)}"
                break
    return damaged


def shape_differences(state_dir: str, abstract_state: Any, limit: int = 3) -> str:
    """'' when the saved tree has the shapes of ``abstract_state`` (or cannot be read)."""
    try:
        meta = ocp.StandardCheckpointer().metadata(state_dir)
    except Exception:  # unreadable metadata: damage, not a different model
        return ""
    tree = getattr(meta, "item_metadata", meta)
    saved = _shapes(getattr(tree, "tree", tree))
    if not saved:  # orbax reads an unreadable tree as empty: damage, not a different model
        return ""
    wanted = _shapes(abstract_state)
    diffs = [f"{k}: missing in checkpoint" for k in wanted if k not in saved]
    diffs += [f"{k}: not in this model" for k in saved if k not in wanted]
    diffs += [
        f"{k}: saved {saved[k]}, model {wanted[k]}"
        for k in wanted
        if k in saved and saved[k] != wanted[k]
    ]
    more = f" (+{len(diffs) - limit} more)" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more


def _shapes(tree: Any) -> dict[str, tuple]:
    def key(path) -> str:
        parts = []
        for k in path:
            for attr in ("name", "key", "idx"):
                if hasattr(k, attr):
                    parts.append(str(getattr(k, attr)))
                    break
        return "/".join(parts)

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {key(p): tuple(getattr(leaf, "shape", ())) for p, leaf in leaves}


def read_failure(e: BaseException) -> str:
    """What failed to read, in a few words: TensorStore names the array in a long spec."""
    text = str(e)
    arrays = re.findall(r"'path': '([^']*?)/?'", text) if "TensorStore" in text else []
    arrays += re.findall(r'Error reading "([^"/]+)[^"]*" in OCDBT', text)
    if arrays:
        return f"state array {arrays[-1]} cannot be read (a truncated or corrupt file)"
    return f"{type(e).__name__}: {first_line(e)}"


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def disk_error(e: BaseException, path: str) -> BaseException:
    """A CheckpointError naming ``path`` for a full/read-only disk; ``e`` itself otherwise."""
    code, cause = None, e
    while cause is not None and code is None:
        if isinstance(cause, OSError):
            code = cause.errno
        elif found := re.search(r"os_error_code='(\d+)'", str(cause)):  # TensorStore's report
            code = int(found.group(1))
        cause = cause.__cause__ or cause.__context__
    if code not in _DISK_ERRNOS:
        return e
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded"}.get(
        code, "the folder is not writable"
    )
    return errors.CheckpointError(
        f"Cannot write checkpoint {path}: {what} ({os.strerror(code)}). Free space or choose "
        f"another --workdir; the last completed checkpoint is kept."
    )
