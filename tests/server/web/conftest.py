"""The API tests' one fake node: a WebSocket that says a real ``hello``, and its helpers.

Shared by ``test_api.py`` and ``test_bad_input.py``. The node is hand-driven, so a test
decides every frame and upload; the server behind it is the real app (``create_app``) on a
real socket (pytest-aiohttp's test client).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import ClientResponse, ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient

from node.shared.model import ModelSpec
from node.shared.protocol import Frame, Hello, Welcome, decode, decode_as, encode

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
