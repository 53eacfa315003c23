"""The request guard (server/guard.py) on a real socket: Host names, Origins, body types and
encodings, refused with the one error shape before any handler (or WebSocket upgrade) runs."""

from __future__ import annotations

import gzip
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, WSServerHandshakeError
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient

from node.shared.model import ModelSpec
from server.settings import Settings, SettingsError
from server.web.app import create_app

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]
UPLOAD = "/sync/weights?job=x&round=1&samples=1"
CONTROL_POSTS = (
    "/datasets/prepare-mnist",
    "/train/mnist/prepare",
    "/train/mnist?epochs=1000",
    "/jobs/stop",
    UPLOAD,
)
EVIL = "http://evil.example"


@pytest.fixture
def make_client(aiohttp_client: AiohttpClient, tmp_path: Path) -> MakeClient:
    async def make(runner_kwargs: dict[str, Any] | None = None, **changes: Any) -> Client:
        values: dict[str, Any] = {
            "home": tmp_path,
            "mnist_download": False,
            "model_spec": ModelSpec(hidden=(8,), dropout=()),
            **changes,
        }
        server = TestServer(create_app(Settings(**values)))
        await server.start_server(**(runner_kwargs or {}))
        client: Client = await aiohttp_client(server)
        return client

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


def own_origin(client: Client) -> str:
    return f"http://127.0.0.1:{client.port}"


async def error_of(resp: ClientResponse, status: int) -> dict[str, str]:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body["error"]) == {"code", "message"}
    error: dict[str, str] = body["error"]
    return error


# -- DNS rebinding: the Host must be ours --------------------------------------------------------


async def test_a_foreign_host_name_is_misdirected_and_our_own_is_served(client: Client) -> None:
    error = await error_of(await client.get("/health", headers={"Host": "evil.example"}), 421)
    assert error["code"] == "misdirected_request" and "FEDAVG_ALLOWED_HOSTS" in error["message"]
    for path in ("/sync/status", "/", "/static/js/api.js"):
        await error_of(await client.get(path, headers={"Host": "evil.example:80"}), 421)
    await error_of(await client.post("/jobs/stop", headers={"Host": "evil.example"}), 421)

    for host in (f"127.0.0.1:{client.port}", "localhost", "[::1]:1", "127.8.9.10", "LOCALHOST."):
        resp = await client.get("/health", headers={"Host": host})
        assert resp.status == 200, host


async def test_allowed_hosts_add_names_and_a_star_allows_any(make_client: MakeClient) -> None:
    client = await make_client(allowed_hosts=("orchestrator.lan",))
    assert (await client.get("/health", headers={"Host": "orchestrator.lan:11999"})).status == 200
    assert (await client.get("/health", headers={"Host": "ORCHESTRATOR.LAN"})).status == 200
    assert (await client.get("/health", headers={"Host": "evil.example"})).status == 421
    # An IP literal cannot be rebound: a page at that address is this server's own.
    assert (await client.get("/health", headers={"Host": "10.1.2.3:11999"})).status == 200

    anything = await make_client(allowed_hosts=("*",))
    assert (await anything.get("/health", headers={"Host": "evil.example"})).status == 200


async def test_the_bind_host_name_is_allowed(make_client: MakeClient) -> None:
    client = await make_client(host="fedavg.internal", insecure=True)
    assert (await client.get("/health", headers={"Host": "fedavg.internal:1"})).status == 200


# -- cross-origin pages: no Origin, or our own ---------------------------------------------------


@pytest.mark.parametrize("path", CONTROL_POSTS)
async def test_a_foreign_origin_cannot_post_anything(client: Client, path: str) -> None:
    for origin in (
        EVIL,
        "null",
        f"http://localhost:{client.port}",
        f"https://127.0.0.1:{client.port}",
    ):
        error = await error_of(await client.post(path, headers={"Origin": origin}), 403)
        assert error["code"] == "forbidden" and "FEDAVG_ALLOWED_ORIGINS" in error["message"]
    assert (await client.get("/sync/status")).status == 200
    assert (await (await client.get("/datasets")).json())["datasets"] == []


async def test_no_origin_or_our_own_origin_may_post(client: Client) -> None:
    resp = await client.post("/datasets/prepare-mnist", headers={"Origin": own_origin(client)})
    assert resp.status == 200, await resp.text()
    assert (await client.post("/jobs/stop")).status == 409  # no Origin: a program; no job
    resp = await client.post("/jobs/stop", headers={"Origin": own_origin(client) + "/"})
    assert resp.status == 409


async def test_allowed_origins_may_post(make_client: MakeClient) -> None:
    client = await make_client(allowed_origins=("https://dash.example:8443",))
    resp = await client.post("/jobs/stop", headers={"Origin": "https://dash.example:8443"})
    assert resp.status == 409
    await error_of(await client.post("/jobs/stop", headers={"Origin": "https://dash.example"}), 403)


@pytest.mark.parametrize("path", ["/ws/node", "/ws/dashboard"])
@pytest.mark.parametrize("tokens", [False, True], ids=["no-tokens", "tokens"])
async def test_a_foreign_origin_cannot_open_a_socket(
    make_client: MakeClient, path: str, tokens: bool
) -> None:
    changes = {"admin_token": "a" * 16, "node_token": "n" * 16} if tokens else {}
    client = await make_client(**changes)
    auth = {"Authorization": f"Bearer {'n' * 16}"} if tokens else {}
    with pytest.raises(WSServerHandshakeError) as refused:
        await client.ws_connect(path, headers={"Origin": EVIL, **auth})
    assert refused.value.status == 403
    # The same upgrade without an Origin (a node) or from our own page is accepted.
    for headers in ({}, {"Origin": own_origin(client)}):
        ws = await client.ws_connect(path, headers={**headers, **auth})
        await ws.close()


# -- bodies a form can send, and compressed bodies -----------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/plain;charset=UTF-8",
    ],
)
@pytest.mark.parametrize("path", CONTROL_POSTS)
async def test_form_and_text_bodies_are_refused(
    client: Client, path: str, content_type: str
) -> None:
    resp = await client.post(path, data=b"a=1", headers={"Content-Type": content_type})
    error = await error_of(resp, 415)
    assert error["code"] == "unsupported_media_type"
    assert (await (await client.get("/datasets")).json())["datasets"] == []


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "GZIP", "identity, gzip"])
async def test_compressed_bodies_are_refused_before_a_byte_is_read(
    make_client: MakeClient, encoding: str
) -> None:
    # As fedavg-server runs it (server/cli.py): the parser never inflates anything either.
    client = await make_client(runner_kwargs={"auto_decompress": False})
    headers = {"Content-Encoding": encoding, "Content-Type": "application/octet-stream"}
    resp = await client.post(UPLOAD, data=gzip.compress(b"\0" * (16 << 20)), headers=headers)
    assert (await error_of(resp, 415))["code"] == "unsupported_media_type"
    await error_of(await client.post("/jobs/stop", headers={"Content-Encoding": encoding}), 415)
    resp = await client.post("/jobs/stop", headers={"Content-Encoding": "identity"})
    assert resp.status == 409


async def test_a_compressed_body_is_refused_on_a_default_aiohttp_runner_too(client: Client) -> None:
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"}
    resp = await client.post(UPLOAD, data=gzip.compress(b"\0" * (16 << 20)), headers=headers)
    assert (await error_of(resp, 415))["code"] == "unsupported_media_type"


# -- settings ------------------------------------------------------------------------------------


def test_the_new_settings_are_read_and_checked() -> None:
    settings = Settings.from_env(
        {
            "FEDAVG_ALLOWED_HOSTS": "a.example, b",
            "FEDAVG_ALLOWED_ORIGINS": "https://dash.example:8443",
            "FEDAVG_HEADER_TIMEOUT": "2.5",
            "FEDAVG_MAX_CONNECTIONS": "500",
            "FEDAVG_MAX_PENDING_PER_PEER": "8",
        }
    )
    assert settings.allowed_hosts == ("a.example", "b")
    assert settings.allowed_origins == ("https://dash.example:8443",)
    assert (settings.header_timeout_s, settings.max_connections) == (2.5, 500)
    assert settings.max_pending_per_peer == 8
    assert Settings.from_env({"FEDAVG_MAX_CONNECTIONS": "auto"}).max_connections == 0
    for name, value, words in (
        ("FEDAVG_ALLOWED_HOSTS", "http://a.example", "not a host name"),
        ("FEDAVG_ALLOWED_ORIGINS", "https://dash.example/path", "not an origin"),
        ("FEDAVG_ALLOWED_ORIGINS", "null", "not an origin"),
        ("FEDAVG_HEADER_TIMEOUT", "0", "FEDAVG_HEADER_TIMEOUT"),
        ("FEDAVG_HEADER_TIMEOUT", "nan", "FEDAVG_HEADER_TIMEOUT"),
        ("FEDAVG_MAX_CONNECTIONS", "-1", "FEDAVG_MAX_CONNECTIONS"),
        ("FEDAVG_MAX_CONNECTIONS", "many", "FEDAVG_MAX_CONNECTIONS"),
        ("FEDAVG_MAX_PENDING_PER_PEER", "0", "FEDAVG_MAX_PENDING_PER_PEER"),
    ):
        with pytest.raises(SettingsError, match=words):
            Settings.from_env({name: value})
