"""A node's identity file: created once (0600, atomically), read back on every start, per id
when the id is explicit, and refused clearly when it cannot be used."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from node.identity import (
    DEFAULT_FILE,
    IdentityError,
    identity_path,
    load_or_create,
)
from node.shared.protocol import MAX_SECRET, MIN_SECRET


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_default_identity_is_generated_once_and_kept(tmp_path: Path) -> None:
    first = load_or_create(tmp_path, None, generated_id="alpha-abc123")
    assert first.node_id == "alpha-abc123"
    assert MIN_SECRET <= len(first.secret) <= MAX_SECRET
    path = tmp_path / DEFAULT_FILE
    assert json.loads(path.read_text()) == {"node_id": first.node_id, "secret": first.secret}
    assert mode(path) == 0o600
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temp file, renamed
    # A restart generates another candidate id; the file's id and secret win.
    again = load_or_create(tmp_path, None, generated_id="alpha-def456")
    assert again == first and again.secret == first.secret


def test_an_explicit_id_keeps_its_own_secret_beside_others(tmp_path: Path) -> None:
    one = load_or_create(tmp_path, "node-1", generated_id="x-1")
    two = load_or_create(tmp_path, "node-2", generated_id="x-2")
    assert (one.node_id, two.node_id) == ("node-1", "node-2")
    assert one.secret != two.secret
    assert load_or_create(tmp_path, "node-1", generated_id="x-3").secret == one.secret
    assert identity_path(tmp_path, "node-1") != identity_path(tmp_path, "node-2")
    assert mode(identity_path(tmp_path, "node-1")) == 0o600
    assert not (tmp_path / DEFAULT_FILE).exists()  # the default identity is untouched


def test_an_id_with_path_characters_is_a_safe_file_name(tmp_path: Path) -> None:
    identity = load_or_create(tmp_path, "../../etc/passwd", generated_id="x")
    path = identity_path(tmp_path, "../../etc/passwd")
    assert path.parent.parent == tmp_path and path.is_file()
    assert identity.node_id == "../../etc/passwd"


def test_a_file_with_loose_rights_is_tightened(tmp_path: Path) -> None:
    load_or_create(tmp_path, None, generated_id="alpha-1")
    path = tmp_path / DEFAULT_FILE
    path.chmod(0o644)
    load_or_create(tmp_path, None, generated_id="alpha-2")
    assert mode(path) == 0o600


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"node_id": "a"}',
        '{"node_id": "a", "secret": "short"}',
        '{"node_id": "", "secret": "' + "s" * 43 + '"}',
        '{"node_id": 7, "secret": "' + "s" * 43 + '"}',
    ],
)
def test_an_unusable_file_is_a_clear_start_up_error(tmp_path: Path, content: str) -> None:
    (tmp_path / DEFAULT_FILE).write_text(content)
    with pytest.raises(IdentityError, match="identity file"):
        load_or_create(tmp_path, None, generated_id="alpha-1")


def test_a_file_naming_another_id_is_refused(tmp_path: Path) -> None:
    path = identity_path(tmp_path, "node-1")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"node_id": "node-9", "secret": "s" * 43}))
    with pytest.raises(IdentityError, match="node-9"):
        load_or_create(tmp_path, "node-1", generated_id="x")
