"""The saved-model catalogue: the models under FEDAVG_HOME/models, listed and served.

A finished job saves two: its final model (``kind`` "final") and its best round's
(``kind`` "best", with ``best_round``, ``best_metric`` and ``best_value``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from node.shared.errors import WeightsError
from node.shared.weights import read_metadata, sha256_hex
from server.errors import NotFound

log = structlog.get_logger(__name__)


class ModelCatalog:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._entries: dict[tuple[str, int, int], dict[str, Any] | None] = {}

    def models(self) -> list[dict[str, Any]]:
        """Saved models, newest first. Each file is read and hashed once per version (name,
        size, mtime): the showcase and dashboards ask every few seconds."""
        folder = self.folder
        entries, seen = [], set()
        for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
            stat = path.stat()
            key = (path.name, stat.st_size, stat.st_mtime_ns)
            seen.add(key)
            if key not in self._entries:
                self._entries[key] = _model_entry(path)
            entry = self._entries[key]
            if entry is not None:
                entries.append(entry)
        for stale in set(self._entries) - seen:
            del self._entries[stale]
        # Newest first; of one job's pair (written together), the final model first.
        return sorted(
            entries, key=lambda e: (str(e["created"]), e["kind"] == "final"), reverse=True
        )

    def model_path(self, name: str) -> Path:
        if not _safe_name(name) or not name.endswith(".safetensors"):
            raise NotFound(f"no model named {name!r}")
        path = self.folder / name
        if not path.is_file():
            raise NotFound(f"no model named {name!r}")
        return path


def _safe_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def _model_entry(path: Path) -> dict[str, Any] | None:
    try:
        data = path.read_bytes()
        meta: Mapping[str, str] = read_metadata(data)
        spec = json.loads(meta.get("model_spec", "{}"))
    except (OSError, WeightsError, ValueError):
        log.warning("model_file_unreadable", path=str(path))
        return None
    stat = path.stat()
    created = meta.get("created") or datetime.fromtimestamp(stat.st_mtime, UTC).isoformat()
    entry: dict[str, Any] = {
        "name": path.name,
        "url": f"/models/{path.name}",
        "size": stat.st_size,
        "sha256": sha256_hex(data),
        "created": created,
        "kind": "best" if meta.get("kind") == "best" else "final",  # older files: final
        "metadata": {**meta, "model_spec": spec},
    }
    if entry["kind"] == "best":
        try:
            entry["best_round"] = int(meta["best_round"])
            entry["best_metric"] = meta["best_metric"]
            entry["best_value"] = float(meta["best_value"])
        except (KeyError, ValueError):
            log.warning("model_file_unreadable", path=str(path), reason="best_round")
            return None
    return entry
