"""The HTTP client's answers: the server's error message with a hint, bounded bodies, TLS files."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from server.console.client import Connection, Orchestrator, error_message
from server.console.errors import ConsoleError, Refused, ServerFailed


def test_an_error_answer_gives_the_server_message_and_what_to_do() -> None:
    body = b'{"error": {"code": "unauthorized", "message": "this endpoint needs the admin token"}}'
    message = error_message(401, body)
    assert message.startswith("this endpoint needs the admin token (set FEDAVG_ADMIN_TOKEN")
    assert error_message(409, b'{"error": {"message": "job x is still running"}}') == (
        "job x is still running"
    )
    assert error_message(502, b"<html>bad gateway</html>") == "<html>bad gateway</html>"


def test_a_ca_file_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConsoleError, match=r"cannot read the CA file .*missing\.pem"):
        Connection("https://x", ca_cert=tmp_path / "missing.pem").ssl_context()


async def test_answers_are_bounded_and_refusals_keep_their_status(
    aiohttp_server: AiohttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain aiohttp app (not ours): one route per kind of answer."""

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked: no Content-Length to refuse it by
        await response.prepare(request)
        for _ in range(3):
            await response.write(b"x" * 1024)
        return response

    async def refused(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "no"}}, status=409)

    app = web.Application()
    app.router.add_get("/huge", huge)
    app.router.add_get("/refused", refused)
    server = await aiohttp_server(app)
    monkeypatch.setattr("server.console.client.ANSWER_MAX_BYTES", 2048)
    async with Orchestrator(Connection(str(server.make_url("/")))) as api:
        with pytest.raises(ServerFailed, match="over"):
            await api.get("/huge")
        with pytest.raises(Refused, match="GET /refused -> 409: no") as refusal:
            await api.get("/refused")
    assert refusal.value.status == 409 and refusal.value.exit_code == 4
