"""A node that speaks the real protocol but does what the test says: the attacker in the
hostile-participant tests. It lies in ``hello``, uploads what it is given, floods frames,
and reads the server's pushes, over real sockets to a real server process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from typing import Any
from urllib.parse import urlencode

import aiohttp

from node.shared import __version__
from node.shared.protocol import Frame, Hello, Train, WeightsReady, Welcome, decode, encode


class FakeNode:
    """One protocol client: ``await join()``, then read pushes and upload at will."""

    def __init__(
        self,
        url: str,
        node_id: str,
        *,
        capacity: float = 100.0,
        join_token: str | None = None,
        secret: str | None = None,
        **hello: Any,
    ) -> None:
        self.url = url
        self.node_id = node_id
        # Its own secret unless the test lies with another's (or none: the typed hello needs one).
        self.secret = secret if secret is not None else secrets.token_urlsafe(32)
        self.capacity = capacity
        self.join_token = join_token
        self.hello_extra = hello  # extra Hello fields (a secret, say)
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.session_token: str | None = None
        self.train: Train | None = None

    async def __aenter__(self) -> FakeNode:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def hello(self) -> Hello:
        fields = {f.name for f in dataclasses.fields(Hello)}
        extra = {k: v for k, v in self.hello_extra.items() if k in fields}
        extra.setdefault("secret", self.secret)
        return Hello(
            node_id=self.node_id,
            name=self.node_id,
            capacity=self.capacity,
            device="cpu",
            version=__version__,
            **extra,
        )

    async def join(self, hello_text: str | None = None) -> Frame:
        """Connect and say hello; returns the server's first answer (``welcome`` or an
        ``error``). ``hello_text`` sends that raw text instead of the typed hello (a lie the
        typed frame refuses to build, such as a capacity of 1e300... which it can build)."""
        headers = {"Authorization": f"Bearer {self.join_token}"} if self.join_token else {}
        self.ws = await self.http.ws_connect(self.url + "/ws/node", headers=headers)
        await self.ws.send_str(hello_text if hello_text is not None else encode(self.hello()))
        first = await self.receive()
        if isinstance(first, Welcome):
            self.session_token = first.session_token
        return first

    async def receive(self, within: float = 30.0) -> Frame:
        assert self.ws is not None
        msg = await asyncio.wait_for(self.ws.receive(), within)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"socket closed: {msg.type.name} {self.ws.close_code}")
        frame = decode(msg.data)
        if isinstance(frame, Train):
            self.train = frame
        return frame

    async def wait_for(self, kind: type[Any], within: float = 60.0) -> Any:
        """The next pushed frame of ``kind`` (others are read and dropped)."""
        async with asyncio.timeout(within):
            while True:
                frame = await self.receive(within)
                if isinstance(frame, kind):
                    return frame

    async def next_round(self, within: float = 60.0) -> tuple[int, str]:
        """Wait for the next round to train: its number and the weights URL to start from."""
        frame = await self.wait_for(Train | WeightsReady, within)  # type: ignore[arg-type]
        if isinstance(frame, Train):
            return frame.round, frame.weights_url
        return frame.round + 1, frame.url

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.session_token}"} if self.session_token else {}

    async def get(self, path: str) -> tuple[int, bytes]:
        async with self.http.get(self.url + path, headers=self.auth()) as resp:
            return resp.status, await resp.read()

    async def upload(
        self,
        job_id: str,
        round_: int,
        samples: int,
        body: Any,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """POST ``body`` (bytes, or an async iterator of bytes) as this node's upload."""
        query = urlencode({"job": job_id, "round": round_, "samples": samples})
        async with self.http.post(
            f"{self.url}/sync/weights?{query}",
            data=body,
            headers={**self.auth(), "Content-Type": "application/octet-stream", **(headers or {})},
        ) as resp:
            text = await resp.text()
            try:
                return resp.status, await resp.json(content_type=None)
            except ValueError:
                return resp.status, text

    async def send_text(self, text: str) -> None:
        assert self.ws is not None
        await self.ws.send_str(text)

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        await self.http.close()
