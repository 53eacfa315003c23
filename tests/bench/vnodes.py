"""Virtual nodes: many real protocol clients (WebSocket + HTTP) packed into one process.

``python -m tests.bench.vnodes --url U --count N --prefix P --out F.jsonl`` connects N
nodes that speak the real protocol (``hello`` -> ``welcome``; on ``train`` or
``weights_ready``: GET the weights, verify their sha256, optionally "train" for
``--compute-s``, POST them back) but train nothing, so hundreds fit in a few processes. Each
step is one JSON line with ``time.time()`` stamps. The process exits once every node has
seen ``--jobs`` ``done`` frames, or on SIGTERM.

Uploads are the downloaded global weights themselves: a valid update of the right layout,
so the server does all its real work (decode, validate, fold). Identical downloads are kept
once per process (by sha256) so the pack's own memory stays small.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import secrets
import signal
import sys
import time
from typing import Any
from urllib.parse import urlencode

import aiohttp

from node.shared import __version__
from node.shared.protocol import (
    MAX_FRAME_BYTES,
    Done,
    Error,
    Hello,
    Train,
    WeightsReady,
    Welcome,
    decode,
    decode_as,
    encode,
)

CHUNK = 1 << 20


class Pack:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = open(args.out, "a", buffering=1)  # noqa: SIM115 (line-buffered: read while running)
        self.bodies: dict[str, bytes] = {}
        self.jobs_done: dict[str, int] = {}
        self.all_done = asyncio.Event()
        self.stopping = asyncio.Event()

    def log(self, node: str, ev: str, **info: Any) -> None:
        self.out.write(json.dumps({"node": node, "ev": ev, **info}) + "\n")

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            names = [f"{self.args.prefix}{i:04d}" for i in range(self.args.count)]
            tasks = [asyncio.create_task(self.node(http, name)) for name in names]
            stop = asyncio.create_task(self.stopping.wait())
            done = asyncio.create_task(self.all_done.wait())
            await asyncio.wait([stop, done, *tasks], return_when=asyncio.FIRST_COMPLETED)
            if not self.all_done.is_set() and not self.stopping.is_set():
                await asyncio.wait([stop, done], return_when=asyncio.FIRST_COMPLETED)
            for task in (*tasks, stop, done):
                task.cancel()
            await asyncio.gather(*tasks, stop, done, return_exceptions=True)
        self.out.close()

    async def node(self, http: aiohttp.ClientSession, name: str) -> None:
        t0 = time.time()
        try:
            ws = await http.ws_connect(
                self.args.url + "/ws/node", heartbeat=30.0, max_msg_size=MAX_FRAME_BYTES
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.log(name, "connect_failed", t0=t0, t1=time.time(), error=repr(exc))
            return
        work: set[asyncio.Task[None]] = set()
        job: tuple[str, int] = ("", 0)
        try:
            hello = Hello(
                node_id=name,
                name=name,
                capacity=1000.0,
                device="cpu",
                version=__version__,
                secret=secrets.token_urlsafe(32),  # each virtual node owns its id
            )
            await ws.send_str(encode(hello))
            msg = await ws.receive(timeout=60)
            welcome: Welcome = decode_as(msg.data, Welcome)
            self.log(name, "connected", t0=t0, t1=time.time())
            token = welcome.session_token
            async for msg in ws:
                now = time.time()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                frame = decode(msg.data)
                if isinstance(frame, Train):
                    self.log(name, "frame", t=now, frame="train", round=frame.round)
                    if frame.round == 1:
                        self._spawn(work, self.shard(http, name, token, frame.shard_url))
                    job = (frame.job_id, frame.rounds)
                    self._spawn(
                        work,
                        self.round(
                            http,
                            name,
                            token,
                            job,
                            frame.round,
                            frame.weights_url,
                            frame.weights_sha256,
                        ),
                    )
                elif isinstance(frame, WeightsReady):
                    self.log(name, "frame", t=now, frame="weights_ready", round=frame.round + 1)
                    if frame.round < job[1]:
                        self._spawn(
                            work,
                            self.round(
                                http, name, token, job, frame.round + 1, frame.url, frame.sha256
                            ),
                        )
                elif isinstance(frame, Done):
                    self.log(name, "frame", t=now, frame="done", status=frame.status)
                    self.jobs_done[name] = self.jobs_done.get(name, 0) + 1
                    if (
                        len(self.jobs_done) == self.args.count
                        and min(self.jobs_done.values()) >= self.args.jobs
                    ):
                        self.all_done.set()
                elif isinstance(frame, Error):
                    self.log(name, "server_error", t=now, code=frame.code, message=frame.message)
            self.log(name, "socket_closed", t=time.time(), code=ws.close_code)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.log(name, "socket_failed", t=time.time(), error=repr(exc))
        finally:
            for task in work:
                task.cancel()
            with contextlib.suppress(Exception):
                await ws.close()

    def _spawn(self, work: set[asyncio.Task[None]], coro: Any) -> None:
        task = asyncio.create_task(coro)
        work.add(task)
        task.add_done_callback(work.discard)

    async def shard(self, http: aiohttp.ClientSession, name: str, token: str, url: str) -> None:
        t0 = time.time()
        try:
            body = await self._get(http, token, url)
            self.log(name, "shard", t0=t0, t1=time.time(), bytes=len(body))
        except (aiohttp.ClientError, OSError, TimeoutError, RuntimeError) as exc:
            self.log(name, "http_failed", t0=t0, t1=time.time(), what="shard", error=repr(exc))

    async def round(
        self,
        http: aiohttp.ClientSession,
        name: str,
        token: str,
        job: tuple[str, int],
        round_: int,
        url: str,
        sha256: str,
    ) -> None:
        t0 = time.time()
        try:
            body = await self._get(http, token, url)
            t1 = time.time()
            if hashlib.sha256(body).hexdigest() != sha256:
                raise RuntimeError("sha256 mismatch")
            body = self.bodies.setdefault(sha256, body)  # one copy per distinct file
            while len(self.bodies) > 2:
                del self.bodies[next(iter(self.bodies))]
            self.log(name, "download", round=round_, t0=t0, t1=t1, t2=time.time(), bytes=len(body))
            if self.args.compute_s > 0:
                await asyncio.sleep(self.args.compute_s)
            query = urlencode(
                {"job": job[0], "round": round_, "samples": 1, "seconds": self.args.compute_s}
            )
            t3 = time.time()
            async with http.post(
                f"{self.args.url}/sync/weights?{query}",
                data=body,
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/octet-stream",
                },
            ) as resp:
                answer = await resp.read()
                status = resp.status
            self.log(
                name,
                "upload",
                round=round_,
                t0=t3,
                t1=time.time(),
                status=status,
                answer=answer[:200].decode(errors="replace") if status != 200 else None,
            )
        except (aiohttp.ClientError, OSError, TimeoutError, RuntimeError) as exc:
            self.log(
                name,
                "http_failed",
                round=round_,
                t0=t0,
                t1=time.time(),
                what="round",
                error=repr(exc),
            )

    async def _get(self, http: aiohttp.ClientSession, token: str, url: str) -> bytes:
        async with http.get(
            self.args.url + url, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            if resp.status != 200:
                raise RuntimeError(f"GET {url}: {resp.status}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(CHUNK):
                body += chunk
            return bytes(body)


async def amain(args: argparse.Namespace) -> None:
    pack = Pack(args)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, pack.stopping.set)
    await pack.run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.vnodes")
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", default="v")
    parser.add_argument("--out", required=True)
    parser.add_argument("--jobs", type=int, default=1, help="exit after this many done frames")
    parser.add_argument("--compute-s", type=float, default=0.0, help="simulated training time")
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
