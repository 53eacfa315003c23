"""The API tests' one fake node: a WebSocket that says a real ``hello``, and its helpers.

Shared by ``test_api.py`` and ``test_bad_input.py``. The node is hand-driven, so a test
decides every frame and upload; the server behind it is the real app (``create_app``) on a
real socket (pytest-aiohttp's test client).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from node.shared.model import ModelSpec
from node.shared.protocol import Frame, Hello, Welcome, decode, decode_as, encode
from server.settings import Settings
from server.web.app import create_app

SPEC = ModelSpec(hidden=(8,), dropout=())  # ~6k parameters: a weights file is ~26 KB
RECEIVE_S = 20.0
Client = TestClient[Any, Any]


@dataclass
class FakeNode:
    """A hand-made node: one WebSocket and the session token its Welcome carried."""

    node_id: str
    ws: ClientWebSocketResponse
    welcome: Welcome

    @property
    def token(self) -> str:
        return self.welcome.session_token

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def frame(self) -> Frame:
        msg = await self.ws.receive(timeout=RECEIVE_S)
        assert msg.type is WSMsgType.TEXT, msg
        return decode(msg.data)

    async def expect(self, kind: type[Any]) -> Any:
        frame = await self.frame()
        assert isinstance(frame, kind), frame
        return frame


async def connect(
    client: Client,
    node_id: str,
    *,
    capacity: float = 100.0,
    headers: dict[str, str] | None = None,
) -> FakeNode:
    """Join as ``node_id``: the same secret per id, so a reconnect is that node again."""
    ws = await client.ws_connect("/ws/node", headers=headers)
    hello = Hello(
        node_id=node_id,
        name=f"name-{node_id}",
        capacity=capacity,
        device="cpu",
        version="t",
        secret=f"secret-of-{node_id}-0123456789",
    )
    await ws.send_str(encode(hello))
    msg = await ws.receive(timeout=RECEIVE_S)
    welcome: Welcome = decode_as(msg.data, Welcome)
    assert welcome.node_id == node_id
    assert welcome.session_token
    return FakeNode(node_id, ws, welcome)


async def error_of(resp: ClientResponse, status: int) -> dict[str, str]:
    """Assert the status and the one error shape; return the error object."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    return dict(body["error"])


async def job_spec(client: Client, dataset: str = "mnist") -> ModelSpec:
    """The spec a job on ``dataset`` trains by default: the settings' (SPEC) with the
    dataset's own normalisation, as ``/datasets`` reports it."""
    listed = (await (await client.get("/datasets")).json())["datasets"]
    (info,) = [d for d in listed if d["dataset_id"] == dataset]
    return replace(SPEC, norm_mean=tuple(info["norm_mean"]), norm_std=tuple(info["norm_std"]))


MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_client(aiohttp_client: AiohttpClient, tmp_path: Path) -> MakeClient:
    """A client on a fresh app; keyword arguments change the test Settings."""

    async def make(**changes: Any) -> Client:
        values: dict[str, Any] = {
            "home": tmp_path,
            "mnist_download": False,
            "model_spec": SPEC,
            "heartbeat_s": 30.0,
            # Hand-made updates move this tiny model far more than an epoch would; the
            # update bound is tested on its own (test_aggregation, test_hostile_jobs).
            "max_update_ratio": 0.0,
        }
        values.update(changes)
        client: Client = await aiohttp_client(create_app(Settings(**values)))
        return client

    return make


async def prepare_mnist(client: Client, headers: dict[str, str] | None = None) -> dict[str, Any]:
    resp = await client.post("/datasets/prepare-mnist", headers=headers)
    assert resp.status == 200, await resp.text()
    info: dict[str, Any] = await resp.json()
    return info
