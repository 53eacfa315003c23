"""The node's only door to the network: one aiohttp ClientSession per orchestrator connection.

The agent's round pipeline calls :class:`HttpTransport`. Transfers use idle timeouts (no bytes
for ``idle_timeout_s``), never wall-clock ones, so a big model on a slow link is not cut off
while it is still moving.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urljoin

import aiohttp

from node.shared.errors import FedavgError
from node.shared.protocol import MAX_FRAME_BYTES

MAX_DOWNLOAD_BYTES = 4 << 30
SEND_CHUNK = 1 << 20


class TransferError(FedavgError):
    """A download or upload that failed; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class HttpTransport:
    def __init__(
        self,
        base_url: str,
        *,
        join_token: str | None,
        ca_cert: str | None,
        idle_timeout_s: float,
        heartbeat_s: float = 10.0,
    ) -> None:
        self.base_url = base_url
        self.session_token: str | None = None
        self._join_token = join_token
        self._heartbeat_s = heartbeat_s
        self._ssl: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=ca_cert) if ca_cert else True
        )
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=idle_timeout_s)
        )

    async def close(self) -> None:
        await self._http.close()

    async def connect(self) -> aiohttp.ClientWebSocketResponse:
        headers = {"Authorization": f"Bearer {self._join_token}"} if self._join_token else {}
        ws_url = urljoin(self.base_url + "/", "ws/node")
        return await self._http.ws_connect(
            ws_url,
            headers=headers,
            heartbeat=self._heartbeat_s,
            max_msg_size=MAX_FRAME_BYTES,
            ssl=self._ssl,
            timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
        )

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.session_token}"} if self.session_token else {}

    async def download(self, path: str, sha256: str, into: bytearray | None = None) -> bytearray:
        """GET ``path`` and check the body against ``sha256`` before anyone uses it.

        The body lands in one buffer sized from Content-Length and is hashed as it arrives;
        the decoders view that buffer, so a download is never copied after it lands. The
        buffer is ``into`` when that has exactly the right size (the caller's previous
        download, which it no longer reads: warm pages cost no page faults), else a new one.
        """
        url = urljoin(self.base_url + "/", path.lstrip("/"))
        try:
            async with self._http.get(url, headers=self._auth(), ssl=self._ssl) as resp:
                if resp.status != 200:
                    raise TransferError(
                        f"GET {path}: {resp.status} {await resp.text()}", resp.status
                    )
                if (resp.content_length or 0) > MAX_DOWNLOAD_BYTES:
                    raise TransferError(f"GET {path}: {resp.content_length} bytes is too large")
                size = resp.content_length or 0
                body = into if into is not None and len(into) == size else bytearray(size)
                digest, filled = hashlib.sha256(), 0
                async for chunk in resp.content.iter_any():  # as received: no re-joining
                    end = filled + len(chunk)
                    if end > MAX_DOWNLOAD_BYTES:
                        raise TransferError(f"GET {path}: body too large")
                    if end > len(body):
                        body.extend(bytes(end - len(body)))
                    memoryview(body)[filled:end] = chunk
                    digest.update(chunk)
                    filled = end
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransferError(f"GET {path}: {exc!r}") from exc
        if filled != len(body) or digest.hexdigest() != sha256:
            raise TransferError(f"GET {path}: sha256 mismatch (corrupt or changed on the server)")
        return body

    async def upload_weights(
        self, path: str, parts: Sequence[bytes | memoryview]
    ) -> dict[str, Any]:
        """POST a file given as its parts (a weights header, then each tensor's bytes),
        streamed in slices straight from where they lie: sending a model copies none of it
        in this process, and the declared length lets the server refuse it before reading.
        """
        url = urljoin(self.base_url + "/", path.lstrip("/"))
        views = [memoryview(part).cast("B") for part in parts]
        headers = {
            **self._auth(),
            "Content-Type": "application/octet-stream",
            "Content-Length": str(sum(len(view) for view in views)),
        }

        async def body() -> AsyncIterator[memoryview]:
            for view in views:
                for start in range(0, len(view), SEND_CHUNK):
                    yield view[start : start + SEND_CHUNK]

        try:
            async with self._http.post(url, data=body(), headers=headers, ssl=self._ssl) as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransferError(f"POST {path}: {exc!r}") from exc
        try:
            answer = json.loads(text)
        except ValueError:  # not our server's JSON: a proxy's error page, say
            answer = None
        if not isinstance(answer, dict):
            answer = {"error": {"message": text[:200]}}
        if resp.status != 200:
            error = answer.get("error")
            message = error.get("message") if isinstance(error, dict) else str(answer)
            raise TransferError(f"upload refused: {resp.status} {message}", resp.status)
        return answer


def unreachable_reason(exc: BaseException) -> str:
    """Why an attempt to reach the orchestrator failed, in words ("connection refused"), for
    the one log line a retry gets instead of ``ClientConnectorError(ConnectionKey(...))``."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"its TLS certificate is not trusted ({exc.certificate_error}; see --ca-cert)"
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = exc.os_error
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve {exc.host!r} ({cause.strerror})"
        if cause.errno:
            return f"{os.strerror(cause.errno).lower()} at {exc.host}:{exc.port}"
        return str(cause) or type(cause).__name__
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"HTTP {exc.status} to the WebSocket upgrade ({exc.message})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
