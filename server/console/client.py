"""The orchestrator as the ``fedavg`` command reaches it: its public REST and WebSocket API.

Nothing here knows the server's internals: it speaks HTTP and JSON like curl or the
dashboard would, so the command works from any machine that can reach the orchestrator.
Each failure becomes a ``ConsoleError`` whose exit code and message say what to do.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from server.console.errors import ConsoleError, Refused, ServerFailed, Unreachable

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 900.0  # preparing a dataset answers only once it is ready
ANSWER_MAX_BYTES = 64 << 20  # a JSON answer (the node list is paged, the timeline bounded)
MODEL_MAX_BYTES = 2 << 30  # a saved model; FEDAVG_MAX_PARAMS keeps real ones far smaller
EVENT_MAX_BYTES = 16 << 20  # one dashboard frame: the snapshot holds up to 5000 node rows


@dataclass(frozen=True, slots=True)
class Connection:
    """Where the orchestrator is and how to prove we may control it."""

    url: str
    token: str | None = None
    ca_cert: Path | None = None

    def ssl_context(self) -> ssl.SSLContext | bool:
        """Trust ``ca_cert`` for https (the system's CAs without one); True: aiohttp's default."""
        if self.ca_cert is None:
            return True
        try:
            return ssl.create_default_context(cafile=str(self.ca_cert))
        except (OSError, ssl.SSLError) as exc:
            raise ConsoleError(f"cannot read the CA file {self.ca_cert}: {exc}") from None


def error_message(status: int, body: bytes) -> str:
    """The server's ``{"error": {"message"}}``, with what to do for the refusals we know."""
    try:
        message = str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = body.decode(errors="replace").strip()[:300] or f"HTTP {status}"
    hints = {
        401: "set FEDAVG_ADMIN_TOKEN, or pass --token-file with the orchestrator's admin token",
        404: "check the name: `fedavg datasets`, `fedavg models` and `fedavg runs` list them",
    }
    hint = hints.get(status)
    return f"{message} ({hint})" if hint else message


class Orchestrator:
    """One HTTP session to the orchestrator; ``async with Orchestrator(connection) as api``."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.url = connection.url.rstrip("/")
        self._ssl = connection.ssl_context()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Orchestrator:
        token = self.connection.token
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {token}"} if token else {},
            timeout=aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S),
            connector=aiohttp.TCPConnector(ssl=self._ssl),
        )
        return self

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use the Orchestrator as `async with Orchestrator(...) as api`")
        return self._session

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.session.close()

    async def get(self, path: str, query: Mapping[str, str] | None = None) -> Any:
        return _parsed(path, await self._call("GET", path, query, None, ANSWER_MAX_BYTES))

    async def post(
        self,
        path: str,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> Any:
        """``read_timeout_s``: how long the answer may take to start coming (an evaluation
        answers only once the nodes have)."""
        answer = await self._call("POST", path, query, body, ANSWER_MAX_BYTES, read_timeout_s)
        return _parsed(path, answer)

    async def download(self, path: str) -> bytes:
        return await self._call("GET", path, None, None, MODEL_MAX_BYTES)

    async def _call(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None,
        body: Mapping[str, Any] | None,
        limit: int,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> bytes:
        timeout = aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT_S, sock_read=read_timeout_s)
        try:
            async with self.session.request(
                method, self.url + path, params=query, json=body, timeout=timeout
            ) as resp:
                data = await _read_limited(resp, limit, f"{method} {path}")
                _raise_for(resp.status, method, path, data)
                return data
        except aiohttp.ClientError as exc:
            raise self.unreachable(exc) from None

    @asynccontextmanager
    async def events(self) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
        """The dashboard socket: a snapshot first, then every event as it is published."""
        ws_url = "ws" + self.url.removeprefix("http") + "/ws/dashboard"
        try:
            ws = await self.session.ws_connect(ws_url, max_msg_size=EVENT_MAX_BYTES, heartbeat=30)
        except aiohttp.WSServerHandshakeError as exc:
            raise Refused(exc.status, f"the dashboard socket was refused: {exc.message}") from None
        except aiohttp.ClientError as exc:
            raise self.unreachable(exc) from None
        try:
            yield ws
        finally:
            await ws.close()

    def unreachable(self, exc: BaseException) -> Unreachable:
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            return Unreachable(
                f"cannot trust {self.url}: its certificate is not signed by a CA we know "
                "(pass --ca-cert or set FEDAVG_CA_CERT)"
            )
        reason = str(exc)
        if isinstance(exc, aiohttp.ClientConnectorError):
            reason = exc.os_error.strerror or str(exc.os_error)
        return Unreachable(
            f"cannot reach {self.url} ({reason}): is fedavg-server running there? "
            "Set --orchestrator or ORCHESTRATOR_URL"
        )


async def _read_limited(resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The whole body, refused once it passes ``limit`` bytes (announced or not)."""
    too_big = ServerFailed(f"{what}: the answer is over {limit:,} bytes")
    if resp.content_length is not None and resp.content_length > limit:
        raise too_big
    body = bytearray()
    async for chunk in resp.content.iter_chunked(1 << 20):
        body += chunk
        if len(body) > limit:
            raise too_big
    return bytes(body)


def _raise_for(status: int, method: str, path: str, body: bytes) -> None:
    if status < 400:
        return
    message = f"{method} {path} -> {status}: {error_message(status, body)}"
    if status < 500:
        raise Refused(status, message)
    raise ServerFailed(message + " (see the orchestrator's log)")


def _parsed(path: str, data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise ServerFailed(f"{path} answered something that is not JSON: is this fedavg?") from None
