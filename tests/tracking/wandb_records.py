"""A reader of W&B's offline ``run-<id>.wandb`` files, written from the format (not wandb's code).

The file is a 7-byte header (``:W&B``, magic 0xBEE1, version) then LevelDB-log records in 32 KiB
blocks: 4-byte CRC, 2-byte little-endian length, 1-byte type (1 full, 2 first, 3 middle,
4 last), each holding one serialized ``wandb_internal_pb2.Record``.
"""

import json
import struct

from wandb.proto import wandb_internal_pb2

_BLOCK = 32768


def _chunks(data: bytes):
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # block trailer / padding
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk


def _items(items) -> dict:
    # A key with "/" is stored as its parts in ``nested_key``.
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}


def read_run(path: str) -> tuple[list[dict], dict, dict]:
    """``(history rows, final summary, config)`` of one offline run file."""
    data = open(path, "rb").read()
    assert data[:4] == b":W&B", path
    history, summary, config = [], {}, {}
    for raw in _chunks(data):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            history.append(_items(rec.history.item))
        elif kind == "summary":
            summary.update(_items(rec.summary.update))
        elif kind in ("run", "config"):  # the run record carries the initial config
            updates = rec.run.config.update if kind == "run" else rec.config.update
            config.update(_items(updates))
    return history, summary, config
