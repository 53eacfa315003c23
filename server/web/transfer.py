"""Bulk transfer over HTTP: bytes served by their sha256 (ETag, 304), and request bodies read
under a size limit, an idle limit and a minimum rate."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from server import failpoints
from server.errors import BadRequest, RequestTimeout, TooLarge
from server.web.sockets import FEDERATION

SEND_CHUNK = 1 << 20
MAX_JSON_BODY = 64 << 10
"""A request's JSON body (a job's settings, an import's path): small by nature."""


async def bytes_with_etag(
    request: web.Request, load: Callable[[], Awaitable[bytes | bytearray]], sha256: str, kind: str
) -> web.StreamResponse:
    """Serve bytes named by their sha256: a client holding them gets 304 and no body.

    Not a ``web.FileResponse``: that one overwrites any ETag with its own mtime-size tag.
    """
    etag = f'"{sha256}"'
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    data = await load()
    request.app[FEDERATION].metrics.bytes_sent.labels(kind=kind).inc(len(data))
    response = web.StreamResponse(
        headers={
            "ETag": etag,
            "X-Content-SHA256": sha256,
            "Content-Type": "application/octet-stream",
        },
    )
    response.content_length = len(data)
    await response.prepare(request)
    # Slices, each awaited: the transport never holds its own copy of a whole model per
    # connection, so serving N nodes costs O(model), not O(N x model).
    view = memoryview(data)
    for start in range(0, len(view), SEND_CHUNK):
        await response.write(view[start : start + SEND_CHUNK])
    await response.write_eof()
    return response


async def read_body(
    request: web.Request,
    limit: int,
    idle_timeout: float,
    into: bytearray | None = None,
    *,
    min_rate: float | None = None,
) -> memoryview:
    """The request body, refusing (413) as soon as it is known to exceed ``limit``, and
    (408) when no byte arrives for ``idle_timeout`` s — an idle limit, so a big model on a
    slow link is not cut off while it is still moving — or, with ``min_rate`` (bytes/s),
    when the whole body takes longer than ``idle_timeout`` plus its size at that rate: a
    body that trickles a byte now and then never goes idle, but cannot last for ever.

    Read into ``into`` when it is large enough for the declared length (a warm buffer from
    the job's pool), else into a fresh one, and returned as a view of exactly the body: the
    safetensors decoder makes tensors that view it, so an upload is never copied after the
    socket's own chunks.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise TooLarge(f"body of {declared} bytes exceeds the {limit}-byte limit")
    size = declared or 0
    buffer = into if into is not None and len(into) >= size else bytearray(size)
    view, filled = memoryview(buffer), 0
    loop = asyncio.get_running_loop()
    end_by = _end_by(loop.time(), idle_timeout, limit if declared is None else declared, min_rate)
    try:
        async with asyncio.timeout(min(loop.time() + idle_timeout, end_by)) as idle:
            while chunk := await request.content.readany():
                idle.reschedule(min(loop.time() + idle_timeout, end_by))
                end = filled + len(chunk)
                if end > limit:
                    raise TooLarge(f"body exceeds the {limit}-byte limit")
                if end > len(view):  # no (or a short) Content-Length: grow a private buffer
                    buffer, view = _grown(buffer, view, filled, end)
                view[filled:end] = chunk
                filled = end
                failpoints.reach("upload.mid_body")
    except TimeoutError:
        if loop.time() >= end_by:
            raise RequestTimeout(
                f"upload too slow: under {min_rate:g} bytes/s on average"
            ) from None
        raise RequestTimeout(f"no upload bytes for {idle_timeout:g} s") from None
    except ConnectionResetError:  # the client went away mid-body: nothing to answer
        raise BadRequest("the connection closed mid-upload", reason="disconnected") from None
    if declared is not None and filled != declared:
        raise BadRequest(f"body ended after {filled} of {declared} declared bytes")
    return view[:filled]


def _end_by(now: float, idle_timeout: float, size: int, min_rate: float | None) -> float:
    """When a body of ``size`` bytes must be in by, at ``min_rate`` (None: never)."""
    return math.inf if min_rate is None else now + idle_timeout + size / min_rate


def _grown(
    buffer: bytearray, view: memoryview, filled: int, end: int
) -> tuple[bytearray, memoryview]:
    """A private buffer holding the ``filled`` bytes so far, room for ``end`` at least."""
    view.release()
    buffer = buffer[:filled] + bytes(max(end - filled, filled))
    return buffer, memoryview(buffer)


async def read_json_object(
    request: web.Request, idle_timeout: float, limit: int = MAX_JSON_BODY
) -> dict[str, Any] | None:
    """The request's JSON object, or None when it has no body (the seed's query-only calls)."""
    if not request.body_exists:
        return None
    body = await read_body(request, limit, idle_timeout)
    if not body:
        return None
    try:
        data = json.loads(bytes(body), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("the body is nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")
