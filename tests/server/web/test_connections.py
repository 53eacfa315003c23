"""The connection limiter's books (server/connections.py), with stand-in transports; the real
sockets are in tests/system/test_connection_limits.py."""

from __future__ import annotations

import asyncio
from typing import Any

from server.settings import Settings
from server.web.connections import FD_HEADROOM, ConnectionLimiter


class FakeTransport(asyncio.Transport):
    def __init__(self, peer: str) -> None:
        super().__init__()
        self.peer = peer
        self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.peer, 40000) if name == "peername" else default

    def abort(self) -> None:
        self.aborted = True


def limiter(refused: list[str], **caps: Any) -> ConnectionLimiter:
    values = {"max_total": 8, "max_pending_per_peer": 2, "header_timeout_s": 60.0, **caps}
    limits = ConnectionLimiter(**values)
    limits.on_refused = refused.append
    return limits


async def test_pending_connections_are_capped_per_peer_and_freed_by_a_request_head() -> None:
    refused: list[str] = []
    limits = limiter(refused)
    a1, a2, a3, b1 = (FakeTransport(p) for p in ("10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.2"))
    assert limits.admit(a1) and limits.admit(a2)
    assert not limits.admit(a3) and refused == ["pending_per_peer"]
    assert limits.admit(b1)  # another address has its own allowance
    limits.established(a1)  # a1 sent a whole head: a1's peer may have one more pending
    assert limits.admit(a3)
    assert (limits.open_count, limits.pending_count) == (4, 3)
    for transport in (a1, a2, a3, b1):
        limits.closed(transport)
    assert (limits.open_count, limits.pending_count) == (0, 0)


async def test_the_machines_own_address_has_no_per_peer_cap() -> None:
    refused: list[str] = []
    limits = limiter(refused, max_total=100)
    # The benchmark's thousands of node sockets all come from 127.0.0.1, all at once.
    assert all(limits.admit(FakeTransport("127.0.0.1")) for _ in range(20))
    # Any other address, loopback or not, is capped (here at 2).
    assert [limits.admit(FakeTransport("127.0.0.2")) for _ in range(3)] == [True, True, False]
    assert refused == ["pending_per_peer"]


async def test_half_the_sockets_at_most_are_pending_and_all_are_capped() -> None:
    refused: list[str] = []
    limits = limiter(refused, max_total=4, max_pending_per_peer=100)
    first = [FakeTransport(f"10.0.0.{i}") for i in range(3)]
    assert [limits.admit(t) for t in first] == [True, True, False]
    assert refused == ["pending"]
    for transport in first[:2]:
        limits.established(transport)
    more = [FakeTransport(f"10.0.1.{i}") for i in range(3)]
    assert [limits.admit(t) for t in more] == [True, True, False]
    assert refused == ["pending", "total"]


async def test_a_head_that_does_not_come_in_time_is_cut() -> None:
    refused: list[str] = []
    limits = limiter(refused, header_timeout_s=0.01)
    slow, quick = FakeTransport("10.0.0.1"), FakeTransport("10.0.0.1")
    assert limits.admit(slow) and limits.admit(quick)
    limits.established(quick)
    for _ in range(200):  # a bounded wait for the timer
        if slow.aborted:
            break
        await asyncio.sleep(0.01)
    assert slow.aborted and not quick.aborted
    assert refused == ["head_timeout"]
    limits.closed(slow)
    assert refused == ["head_timeout"]  # counted once, whoever closed it
    assert limits.pending_count == 0


def test_the_cap_follows_the_descriptor_limit_unless_set() -> None:
    auto = ConnectionLimiter.from_settings(Settings(), fd_limit=1024)
    assert auto.max_total == 1024 - FD_HEADROOM and auto.max_pending == auto.max_total // 2
    fixed = ConnectionLimiter.from_settings(Settings(max_connections=100), fd_limit=1024)
    assert fixed.max_total == 100 and fixed.max_pending_per_peer == 64
