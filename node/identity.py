"""A node's identity: its id and the secret that proves it owns the id, kept in its cache dir.

The orchestrator binds a node id to the first secret it sees, so the secret must outlive the
process: a restarted node reads it back and keeps its id (and its shard, and its place in a
running job). The file is written atomically with mode 0600; nothing else on the node reads
it, and the secret never appears in a log line.

* No explicit id: ``<cache_dir>/identity.json`` names the id, so the default id is stable
  across restarts (generated once, as ``<name>-<6 hex>``).
* An explicit id (``--node-id``/``NODE_ID``): its secret is kept per id, in
  ``<cache_dir>/identities/<sha256(id)[:32]>.json``, so several nodes with their own ids can
  share one cache dir (as the local demo's nodes do) without racing on one file.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from node.shared.atomic import atomic_write_bytes
from node.shared.errors import FedavgError
from node.shared.protocol import MAX_SECRET, MIN_SECRET

DEFAULT_FILE = "identity.json"
PER_ID_FOLDER = "identities"


class IdentityError(FedavgError):
    """The identity file exists but cannot be used; raised at start-up."""


@dataclass(frozen=True, slots=True)
class Identity:
    node_id: str
    secret: str = field(repr=False)


def identity_path(cache_dir: Path, node_id: str | None) -> Path:
    if node_id is None:
        return cache_dir / DEFAULT_FILE
    digest = hashlib.sha256(node_id.encode()).hexdigest()[:32]  # any id is a safe file name
    return cache_dir / PER_ID_FOLDER / f"{digest}.json"


def load_or_create(cache_dir: Path, node_id: str | None, generated_id: str) -> Identity:
    """The identity for ``node_id`` (None: the default one), created and saved if new.

    ``generated_id`` is the id a node without one takes the first time it starts.
    """
    path = identity_path(cache_dir, node_id)
    if path.is_file():
        identity = _read(path)
        if node_id is not None and identity.node_id != node_id:
            raise IdentityError(f"{path} holds the secret of {identity.node_id!r}, not {node_id!r}")
        return identity
    identity = Identity(node_id or generated_id, secrets.token_urlsafe(32))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    body = json.dumps({"node_id": identity.node_id, "secret": identity.secret}).encode()
    atomic_write_bytes(path, body)  # mkstemp makes the temp file 0600, and rename keeps that
    os.chmod(path, 0o600)  # say it here too: the mode is the point, not a side effect
    return identity


def _read(path: Path) -> Identity:
    try:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, 0o600)  # copied in with looser rights: only this user may read it
        data = json.loads(path.read_bytes())
        node_id, secret = data["node_id"], data["secret"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IdentityError(f"identity file {path} is unreadable: {exc}") from exc
    if not isinstance(node_id, str) or not 1 <= len(node_id) <= 128:
        raise IdentityError(f"identity file {path}: node_id must be 1..128 characters")
    if not isinstance(secret, str) or not MIN_SECRET <= len(secret) <= MAX_SECRET:
        raise IdentityError(f"identity file {path}: secret must be {MIN_SECRET}..{MAX_SECRET}")
    return Identity(node_id, secret)
