"""The node's HTTP transport against a real aiohttp server on loopback: downloads land in
one (reused) buffer checked by sha256; uploads stream their parts with a Content-Length."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from node.transport import HttpTransport, TransferError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB: several socket reads
OTHER = PAYLOAD[::-1]


async def _server(aiohttp_server: AiohttpServer, seen: dict[str, Any]) -> TestServer:
    async def blob(request: web.Request) -> web.Response:
        return web.Response(body=OTHER if request.query.get("which") == "other" else PAYLOAD)

    async def short(request: web.Request) -> web.Response:
        return web.Response(body=PAYLOAD[:1000])

    async def receive(request: web.Request) -> web.Response:
        seen["length"] = request.headers.get("Content-Length")
        seen["chunked"] = "chunked" in request.headers.get("Transfer-Encoding", "")
        seen["body"] = await request.read()
        return web.json_response({"accepted": True})

    app = web.Application(client_max_size=4 * len(PAYLOAD))
    app.router.add_get("/blob", blob)
    app.router.add_get("/short", short)
    app.router.add_post("/up", receive)
    return await aiohttp_server(app)


def _transport(server: TestServer) -> HttpTransport:
    return HttpTransport(
        str(server.make_url("/")).rstrip("/"), join_token=None, ca_cert=None, idle_timeout_s=10
    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_a_download_refills_a_buffer_of_the_right_size(aiohttp_server: AiohttpServer) -> None:
    transport = _transport(await _server(aiohttp_server, {}))
    try:
        first = await transport.download("/blob", _sha(PAYLOAD))
        assert first == PAYLOAD
        again = await transport.download("/blob?which=other", _sha(OTHER), into=first)
        assert again is first and again == OTHER  # same memory, new content
        other_size = await transport.download("/short", _sha(PAYLOAD[:1000]), into=first)
        assert other_size is not first and other_size == PAYLOAD[:1000]
    finally:
        await transport.close()


async def test_a_download_that_does_not_match_its_sha256_is_refused(
    aiohttp_server: AiohttpServer,
) -> None:
    transport = _transport(await _server(aiohttp_server, {}))
    try:
        with pytest.raises(TransferError, match="sha256 mismatch"):
            await transport.download("/blob", _sha(OTHER))
    finally:
        await transport.close()


async def test_an_upload_streams_its_parts_with_a_content_length(
    aiohttp_server: AiohttpServer,
) -> None:
    seen: dict[str, Any] = {}
    transport = _transport(await _server(aiohttp_server, seen))
    parts = [memoryview(b"header--"), memoryview(PAYLOAD), memoryview(bytearray(b"tail"))]
    try:
        assert await transport.upload_weights("/up", parts) == {"accepted": True}
    finally:
        await transport.close()
    assert seen["body"] == b"header--" + PAYLOAD + b"tail"
    assert seen["length"] == str(len(seen["body"])) and not seen["chunked"]


async def test_a_refusal_that_is_not_json_still_says_why(aiohttp_server: AiohttpServer) -> None:
    async def read(request: web.Request) -> web.Response:
        await request.read()
        return web.Response()

    app = web.Application()  # aiohttp's own 1 MiB body limit answers 413 in plain text
    app.router.add_post("/up", read)
    transport = _transport(await aiohttp_server(app))
    try:
        with pytest.raises(TransferError, match="413") as refused:
            await transport.upload_weights("/up", [memoryview(PAYLOAD), memoryview(b"!")])
        assert refused.value.status == 413
    finally:
        await transport.close()
