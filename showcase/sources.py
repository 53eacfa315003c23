"""The two places saved models come from: a folder on disk, or the orchestrator's REST API.

Both are listed afresh on every refresh, so a model saved while the app runs shows up
without a restart. Only metadata is read to list a folder (the safetensors header, not the
tensors); only the public REST API is used for an orchestrator (``GET /models`` and
``GET /models/<name>``), never the server's code. A model the showcase cannot serve (a file
that does not decode, an arch this install does not know, an input it has no mode for) is
listed all the same, with ``ModelInfo.problem`` saying why.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from node.shared.errors import WeightsError
from node.shared.weights import WeightsMeta, header_length, read_metadata, sha256_hex
from showcase.errors import InvalidModelError, NoModelError, SourceError
from showcase.models import (
    MAX_MODEL_BYTES,
    SUFFIX,
    ModelInfo,
    api_metadata,
    newest_first,
    parse_created,
    read_listing,
    too_large,
)

log = structlog.get_logger(__name__)

HTTP_TIMEOUT_S = 10.0
MAX_LISTING_BYTES = 4 * 1024 * 1024


class DirectorySource:
    """``*.safetensors`` model files in one folder (the orchestrator's ``models/``)."""

    def __init__(self, path: Path, max_bytes: int = MAX_MODEL_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._reported: set[tuple[str, int]] = set()

    @property
    def description(self) -> str:
        return f"the folder {self.path}"

    def list_models(self) -> list[ModelInfo]:
        if not self.path.is_dir():
            return []
        models = []
        try:
            files = sorted(self.path.glob(f"*{SUFFIX}"))
        except OSError as exc:
            raise SourceError(f"cannot read {self.path}: {exc}") from exc
        for file in files:
            if file.name.startswith(".") or not file.is_file():
                continue
            try:
                info = self._describe(file)
            except OSError as exc:  # gone or unreadable between the glob and now
                self._report_once(file, str(exc))
                continue
            if info.problem is not None:
                self._report_once(file, info.problem)
            models.append(info)
        return newest_first(models)

    def fetch(self, info: ModelInfo) -> bytes:
        file = self._file(info.name)
        try:
            size = file.stat().st_size
            if size > self.max_bytes:
                raise InvalidModelError(
                    f"{info.name} is {size / 2**20:.1f} MiB; at most "
                    f"{self.max_bytes / 2**20:.0f} MiB"
                )
            return file.read_bytes()
        except FileNotFoundError as exc:
            raise NoModelError(f"{info.name} is no longer in {self.path}") from exc
        except OSError as exc:
            raise SourceError(f"cannot read {info.name}: {exc}") from exc

    def _file(self, name: str) -> Path:
        if Path(name).name != name or not name.endswith(SUFFIX) or name.startswith("."):
            raise NoModelError(f"{name!r} is not a model file name")
        return self.path / name

    def _describe(self, file: Path) -> ModelInfo:
        stat = file.stat()
        metadata: Mapping[str, str] = {}
        meta: WeightsMeta | None
        problem: str | None
        try:
            metadata = read_file_metadata(file)
        except InvalidModelError as exc:
            meta, problem = None, f"not a readable model file: {exc}"
        else:
            meta, problem = read_listing(metadata)
        if stat.st_size > self.max_bytes:
            problem = too_large(stat.st_size, self.max_bytes)
        extra = meta.extra if meta is not None else metadata
        created = parse_created(extra.get("created")) or datetime.fromtimestamp(stat.st_mtime, UTC)
        return ModelInfo(
            key=file.name,
            name=file.name,
            origin="folder",
            meta=meta,
            size=stat.st_size,
            created=created,
            problem=problem,
            unparsed={} if meta is not None else metadata,
        )

    def _report_once(self, file: Path, reason: str) -> None:
        """Log an unusable file once per version, not on every refresh."""
        try:
            mark = (file.name, file.stat().st_mtime_ns)
        except OSError:
            mark = (file.name, 0)
        if mark not in self._reported:
            self._reported.add(mark)
            log.warning("model_file_unusable", file=str(file), reason=reason)


def read_file_metadata(file: Path) -> dict[str, str]:
    """A model file's metadata from its header alone, without reading the tensors."""
    try:
        with file.open("rb") as handle:
            head = handle.read(8)
            data = head + handle.read(header_length(head))
        return read_metadata(data)
    except WeightsError as exc:
        raise InvalidModelError(str(exc)) from exc


class OrchestratorSource:
    """Models listed and served by an orchestrator; several URLs are tried in order."""

    def __init__(
        self,
        urls: Sequence[str],
        max_bytes: int = MAX_MODEL_BYTES,
        timeout_s: float = HTTP_TIMEOUT_S,
    ) -> None:
        if not urls:
            raise ValueError("at least one orchestrator URL is needed")
        self.urls = [u.rstrip("/") for u in urls]
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        # The orchestrator is on the operator's own network: go straight there, no proxy.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def description(self) -> str:
        return f"the orchestrator at {self.urls[0]}"

    def list_models(self) -> list[ModelInfo]:
        body = self._get("/models", MAX_LISTING_BYTES, missing_is_gone=False)
        try:
            listing = json.loads(body)
            entries = listing["models"]
            if not isinstance(entries, list):
                raise TypeError("'models' is not a list")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise SourceError(f"the orchestrator's /models answer is not a listing: {exc}") from exc
        models = []
        for entry in entries:
            try:
                models.append(_info_from_entry(entry, self.max_bytes))
            except (KeyError, TypeError, ValueError) as exc:  # no name to list it under
                log.warning("model_entry_skipped", entry=str(entry)[:200], reason=str(exc))
        return newest_first(models)

    def fetch(self, info: ModelInfo) -> bytes:
        path = f"/models/{urllib.parse.quote(info.name, safe='')}"
        data = self._get(path, self.max_bytes, missing_is_gone=True)
        if info.sha256 and sha256_hex(data) != info.sha256:
            raise InvalidModelError(f"{info.name}: download does not match its sha256")
        return data

    def _get(self, path: str, limit: int, *, missing_is_gone: bool) -> bytes:
        """GET from the first orchestrator that answers; a 404 for a model means it is gone."""
        errors = []
        for base in self.urls:
            try:
                return self._get_one(base + path, limit)
            except urllib.error.HTTPError as exc:
                if exc.code == 404 and missing_is_gone:
                    raise NoModelError(f"{path} is not on the orchestrator any more") from exc
                errors.append(f"{base}: HTTP {exc.code}")
            except (urllib.error.URLError, OSError) as exc:
                errors.append(f"{base}: {getattr(exc, 'reason', exc)}")
        raise SourceError("cannot reach the orchestrator (" + "; ".join(errors) + ")")

    def _get_one(self, url: str, limit: int) -> bytes:
        with self._opener.open(url, timeout=self.timeout_s) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > limit:
                raise InvalidModelError(f"{url} is {int(length)} bytes; at most {limit}")
            data: bytes = response.read(limit + 1)
        if len(data) > limit:
            raise InvalidModelError(f"{url} is larger than {limit} bytes")
        return data


def _info_from_entry(entry: Any, max_bytes: int) -> ModelInfo:
    if not isinstance(entry, dict):
        raise TypeError("a model entry is not an object")
    name = entry["name"]
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"bad model name {name!r}")
    metadata = entry.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise TypeError("metadata is not an object")
    flat = api_metadata(metadata)
    meta, problem = read_listing(flat)
    sha = entry.get("sha256")
    size = entry.get("size", 0)
    size = size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else 0
    if size > max_bytes:
        problem = too_large(size, max_bytes)
    created = entry.get("created") or flat.get("created")
    return ModelInfo(
        key=name,
        name=name,
        origin="orchestrator",
        meta=meta,
        size=size,
        created=parse_created(created if isinstance(created, str) else None),
        sha256=sha if isinstance(sha, str) and len(sha) == 64 else None,
        problem=problem,
        unparsed={} if meta is not None else flat,
    )
