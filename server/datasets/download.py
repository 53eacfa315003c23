"""Source 2: torchvision's download, bounded in time, leaving no partial file behind.

torchvision only fetches; the package's own readers parse what it wrote, with their checks.
"""

from __future__ import annotations

import socket
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Final

import structlog

from server.datasets.catalog import CatalogEntry

log = structlog.get_logger(__name__)

DOWNLOAD_TIMEOUT_S: Final = 20.0  # per socket operation: an unreachable mirror fails, not hangs
_FAILURES = (
    ImportError,
    OSError,
    RuntimeError,
    ValueError,
    EOFError,
    zlib.error,
    tarfile.TarError,
    zipfile.BadZipFile,
)


def download(entry: CatalogEntry, datasets_dir: Path, tried: list[str]) -> bool:
    """Fetch the entry's files into ``datasets_dir`` as torchvision lays them out; False (with
    the reason in ``tried``) when that fails."""
    watched = [datasets_dir / path for path in entry.download_paths]
    before = _files(watched)
    previous_timeout = socket.getdefaulttimeout()
    # urllib inside torchvision takes no timeout; the process-wide default is the only knob.
    # asyncio sockets are non-blocking and unaffected, so the event loop does not notice.
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        _fetch(entry, datasets_dir)
    except _FAILURES as exc:
        reason = f"{type(exc).__name__}: {exc}".strip()
        log.warning("dataset_download_failed", dataset=entry.dataset_id, reason=reason)
        tried.append(f"download: failed ({reason.splitlines()[0]})")
        for leftover in _files(watched) - before:  # a partial file would poison source 1
            leftover.unlink(missing_ok=True)
        return False
    finally:
        socket.setdefaulttimeout(previous_timeout)
    return True


def _fetch(entry: CatalogEntry, root: Path) -> None:
    from torchvision import datasets  # heavy import, paid only when downloading

    cls = getattr(datasets, entry.torchvision_class)
    if entry.layout == "cifar":
        # Not CIFAR10(download=True): its constructor would unpickle the batches freely.
        from torchvision.datasets.utils import download_and_extract_archive

        # The archive's md5 is checked before it is extracted.
        download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
    elif entry.torchvision_split is not None:
        cls(root=str(root), split=entry.torchvision_split, train=True, download=True)
    else:
        cls(root=str(root), train=True, download=True)  # fetches all four files


def _files(paths: list[Path]) -> set[Path]:
    """Every file at or under ``paths``."""
    found = set()
    for path in paths:
        if path.is_file():
            found.add(path)
        elif path.is_dir():
            found.update(p for p in path.rglob("*") if p.is_file())
    return found
