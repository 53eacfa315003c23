"""Connection limits: caps on open sockets, in total and per peer, and a deadline for the
first request head.

A connection is *pending* from accept until its first request head is complete. A pending
connection costs a socket and proves nothing about its peer, so pending connections are
capped per peer address and in total, and closed when their head has not arrived within
``FEDAVG_HEADER_TIMEOUT`` (aiohttp's keep-alive timeout, set to the same value, bounds the
wait for every later head on the connection). All connections together stay below the
file-descriptor limit, so a flood is refused at the door instead of starving the accept
loop (EMFILE) and SQLite of descriptors. A node's WebSocket completes its head at once, so
it soon stops counting as pending; the machine's own address (127.0.0.1) has no per-peer cap.

A refused connection is closed before aiohttp sees it, and counted by reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any

from aiohttp import web
from yarl import URL

from server.settings import Settings

# Descriptors kept back from the connection cap for SQLite, datasets, models, the log and
# the event loop's own.
FD_HEADROOM = 64
MIN_CONNECTIONS = 16
# The address this machine's own programs connect from (nodes, the demo, the benchmark's
# thousands of sockets). A burst of connects is all pending at once, so a per-peer cap
# would refuse them; the total caps and the head deadline still bound them.
OWN_MACHINE = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})

CONNECTIONS: web.AppKey[ConnectionLimiter] = web.AppKey("connections")


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit, as servers do at start-up
    (the soft default of 1,024 is there for old select() users); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < target:
        # A container may forbid it: then keep what we have, and the cap follows it.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass(slots=True)
class _Connection:
    peer: str
    deadline: asyncio.TimerHandle
    pending: bool = True


class ConnectionLimiter:
    """Admits, tracks and releases the server's connections; refusals go to ``on_refused``."""

    def __init__(
        self, *, max_total: int, max_pending_per_peer: int, header_timeout_s: float
    ) -> None:
        self.max_total = max_total
        self.max_pending = max(1, max_total // 2)  # half the sockets stay for proven peers
        self.max_pending_per_peer = max_pending_per_peer
        self.header_timeout_s = header_timeout_s
        self.on_refused: Callable[[str], None] = lambda reason: None
        self._open: dict[asyncio.BaseTransport, _Connection] = {}
        self._pending_by_peer: Counter[str] = Counter()
        self._pending = 0

    @classmethod
    def from_settings(cls, settings: Settings, fd_limit: int | None = None) -> ConnectionLimiter:
        if fd_limit is None:
            fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        derived = max(MIN_CONNECTIONS, fd_limit - FD_HEADROOM)
        return cls(
            max_total=settings.max_connections or derived,
            max_pending_per_peer=settings.max_pending_per_peer,
            header_timeout_s=settings.header_timeout_s,
        )

    @property
    def open_count(self) -> int:
        return len(self._open)

    @property
    def pending_count(self) -> int:
        return self._pending

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        peer = str((transport.get_extra_info("peername") or ("?",))[0])
        if len(self._open) >= self.max_total:
            reason = "total"
        elif self._pending >= self.max_pending:
            reason = "pending"
        elif peer not in OWN_MACHINE and self._pending_by_peer[peer] >= self.max_pending_per_peer:
            reason = "pending_per_peer"
        else:
            deadline = asyncio.get_running_loop().call_later(
                self.header_timeout_s, self._head_overdue, transport
            )
            self._open[transport] = _Connection(peer, deadline)
            self._pending += 1
            self._pending_by_peer[peer] += 1
            return True
        self.on_refused(reason)
        return False

    def established(self, transport: asyncio.BaseTransport) -> None:
        """The connection delivered a whole request head: no longer pending."""
        conn = self._open.get(transport)
        if conn is not None and conn.pending:
            self._settle(conn)

    def closed(self, transport: asyncio.BaseTransport) -> None:
        conn = self._open.pop(transport, None)
        if conn is not None and conn.pending:
            # aiohttp's own keep-alive timer (3.14+) may cut it first, at the same moment.
            if conn.deadline.when() <= asyncio.get_running_loop().time():
                self.on_refused("head_timeout")
            self._settle(conn)

    def _settle(self, conn: _Connection) -> None:
        conn.pending = False
        conn.deadline.cancel()
        self._pending -= 1
        self._pending_by_peer[conn.peer] -= 1
        if self._pending_by_peer[conn.peer] <= 0:
            del self._pending_by_peer[conn.peer]

    def _head_overdue(self, transport: asyncio.BaseTransport) -> None:
        conn = self._open.get(transport)
        if conn is not None and conn.pending:
            self._settle(conn)
            self.on_refused("head_timeout")
            # abort, not close: a TLS close would wait for a peer that is not answering.
            transport.abort()  # type: ignore[attr-defined]


class _Door(asyncio.Protocol):
    """Stands before one aiohttp request handler: refuses the connection when a cap is
    reached, else hands it every event."""

    __slots__ = ("_handler", "_limiter", "_transport")

    def __init__(self, limiter: ConnectionLimiter, handler: asyncio.Protocol) -> None:
        self._limiter = limiter
        self._handler = handler
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._limiter.admit(transport):
            transport.abort()  # type: ignore[attr-defined]
            return
        self._transport = transport
        self._handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._limiter.closed(self._transport)
            self._handler.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._transport is not None:
            self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received() if self._transport is not None else None

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()


class LimitedSite(web.BaseSite):
    """A TCP site whose every new connection passes a ``ConnectionLimiter`` first."""

    __slots__ = ("_bound_port", "_host", "_limiter", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        limiter: ConnectionLimiter,
        *,
        ssl_context: SSLContext | None = None,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host, self._port, self._limiter = host, port, limiter
        self._bound_port: int | None = None

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return str(URL.build(scheme=scheme, host=self._host, port=self._bound_port or self._port))

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        limiter = self._limiter

        def door() -> asyncio.Protocol:
            return _Door(limiter, server())

        tls: dict[str, Any] = {}
        if self._ssl_context is not None:  # a stalled TLS handshake is a stalled head too
            tls = {"ssl": self._ssl_context, "ssl_handshake_timeout": limiter.header_timeout_s}
        self._server = await asyncio.get_running_loop().create_server(
            door, self._host, self._port, backlog=self._backlog, **tls
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]


@web.middleware
async def track_requests(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Marks the connection as past its first request head (no longer pending)."""
    if request.transport is not None:
        request.app[CONNECTIONS].established(request.transport)
    return await handler(request)
