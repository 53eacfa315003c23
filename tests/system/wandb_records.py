"""Read the history back out of an offline W&B run file (``run-*.wandb``).

wandb 0.31 ships no Python reader, so this follows the format its Go core writes: a 7-byte
header (``:W&B``, magic, version), then LevelDB-log records in 32 KiB blocks, each a
``wandb_internal_pb2.Record`` protobuf.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

HEADER = 7
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[Any]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, pending, pos = [], b"", HEADER
    while pos + 7 <= len(data):
        room = BLOCK - (pos % BLOCK) if pos >= BLOCK else BLOCK - pos
        if room < 7:  # the block's tail is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()  # type: ignore[attr-defined]  # generated
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def history(path: Path) -> list[dict[str, Any]]:
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return rows


def run_info(path: Path) -> dict[str, str]:
    for record in records(path):
        if record.WhichOneof("record_type") == "run":
            return {
                "group": record.run.run_group,
                "job_type": record.run.job_type,
                "name": record.run.display_name,
            }
    return {}


def run_config(path: Path) -> dict[str, Any]:
    """The run's config, as ``wandb.init(config=...)`` set it and later updates changed it."""
    config: dict[str, Any] = {}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        items = record.run.config.update if kind == "run" else None
        if kind == "config":
            items = record.config.update
        for item in items or ():
            config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return config
