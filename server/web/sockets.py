"""WebSocket endpoints: ``/ws/node`` (control, pushed to workers) and ``/ws/dashboard`` (events)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import weakref

import structlog
from aiohttp import WSCloseCode, WSMessage, WSMsgType, web

from node.shared.errors import ProtocolError
from node.shared.protocol import (
    ID_TAKEN,
    MAX_FRAME_BYTES,
    Error,
    Evaluation,
    Hello,
    Left,
    OwnData,
    Progress,
    decode,
    decode_as,
    encode,
)
from server import jsonsafe
from server.errors import IdTaken
from server.federation import Federation
from server.registry import FrameBudget, NodeSession
from server.web.auth import check_node_join

log = structlog.get_logger(__name__)

FEDERATION = web.AppKey("federation", Federation)
OPEN_SOCKETS: web.AppKey[weakref.WeakSet[web.WebSocketResponse]] = web.AppKey("open_sockets")
HELLO_TIMEOUT_S = 15.0
SNAPSHOT_NODES = 5000  # a dashboard snapshot's node rows: connected first, then newest offline
CLOSE_TIMEOUT_S = 5.0


async def node_socket(request: web.Request) -> web.WebSocketResponse:
    fed = request.app[FEDERATION]
    check_node_join(request, fed.settings)
    # Pings and pongs come to the read loop (autoping off), so the heartbeat's pongs say the
    # node is alive (last_seen) and pings count against the frame budget like any frame.
    ws = web.WebSocketResponse(
        heartbeat=fed.settings.heartbeat_s,
        autoping=False,
        max_msg_size=MAX_FRAME_BYTES,
        timeout=CLOSE_TIMEOUT_S,
    )
    await ws.prepare(request)
    request.app[OPEN_SOCKETS].add(ws)
    hello = await _receive_hello(ws)
    if hello is None:
        return ws
    structlog.contextvars.bind_contextvars(node_id=hello.node_id)  # this socket's task only
    try:
        session = fed.node_joined(hello)
    except IdTaken as exc:
        await ws.send_str(encode(Error(code=ID_TAKEN, message=str(exc))))
        await ws.close(code=WSCloseCode.POLICY_VIOLATION)
        return ws
    log.info("node_connected", name=hello.name, device=hello.device, capacity=hello.capacity)
    writer = asyncio.create_task(_drain_outbox(ws, session), name=f"writer-{session.node_id}")
    reason = "disconnected"
    try:
        reason = await _read_frames(ws, fed, session)
    finally:
        # Book the departure before the first await: aiohttp may cancel this handler once
        # the peer hangs up (handler_cancellation), and a cancelled await skips the rest.
        session.close()
        fed.node_left(session, reason)
        log.info("node_disconnected", reason=reason)
        await writer
    return ws


async def _receive_hello(ws: web.WebSocketResponse) -> Hello | None:
    """The node's first frame, its hello; None when it sent none (answered, then closed)."""
    try:
        msg = await asyncio.wait_for(_first_message(ws), HELLO_TIMEOUT_S)
        if msg.type is not WSMsgType.TEXT:
            raise ProtocolError("the first frame must be a 'hello' text frame")
        return decode_as(msg.data, Hello)
    except (TimeoutError, ProtocolError) as exc:
        reason = str(exc) or "no hello within 15 s"
        if not ws.closed:  # an oversized frame has already closed it (1009)
            await ws.send_str(json.dumps({"type": "error", "code": "protocol", "message": reason}))
            await ws.close(code=WSCloseCode.POLICY_VIOLATION)
        return None


async def _first_message(ws: web.WebSocketResponse) -> WSMessage:
    """The first message that is not a heartbeat's ping or pong (pings are answered)."""
    while True:
        msg = await ws.receive()
        if msg.type is WSMsgType.PING:
            await _pong(ws, msg)
        elif msg.type is not WSMsgType.PONG:
            return msg


async def _pong(ws: web.WebSocketResponse, ping: WSMessage) -> None:
    with contextlib.suppress(ConnectionError):  # closing: the read loop ends next
        await ws.pong(ping.data)


async def _read_frames(ws: web.WebSocketResponse, fed: Federation, session: NodeSession) -> str:
    """Apply a joined node's frames until it leaves or is cut off; returns why it ended."""
    budget = FrameBudget(fed.settings.node_frame_rate, time.monotonic())
    reason = "disconnected"
    async for msg in ws:
        # Counted before it is decoded: a flood must cost as little as possible.
        if not budget.allow(time.monotonic()):
            if _cut_if_flooding(fed, session, budget):
                reason = "flooding"
                break
            continue
        session.last_seen = fed.clock()  # any frame, a heartbeat's pong too
        if msg.type is WSMsgType.PING:
            await _pong(ws, msg)
            continue
        if msg.type is WSMsgType.PONG:
            continue
        ended = _apply_frame(fed, session, msg)
        if ended is not None:
            reason = ended
            break
    if ws.exception() is not None:
        reason = f"socket error: {ws.exception()}"
    return reason


def _cut_if_flooding(fed: Federation, session: NodeSession, budget: FrameBudget) -> bool:
    """Count a frame over the budget as dropped; True when the socket is closed for flooding."""
    fed.metrics.frames_dropped.labels(reason="rate").inc()
    if not budget.flooding:
        return False
    log.warning("node_flooding", dropped=budget.dropped)
    fed.metrics.sockets_cut.labels(reason="flood").inc()
    limit = fed.settings.node_frame_rate
    session.send(Error(code="flood", message=f"more than {limit:g} frames/s: closing"))
    session.close(WSCloseCode.POLICY_VIOLATION)
    return True


def _apply_frame(fed: Federation, session: NodeSession, msg: WSMessage) -> str | None:
    """Decode and apply one frame; the reason the socket ends, or None to read on."""
    try:
        if msg.type is not WSMsgType.TEXT:
            raise ProtocolError(f"only JSON text frames are spoken here, not {msg.type.name}")
        frame = decode(msg.data)
    except ProtocolError as exc:
        log.warning("node_frame_refused", error=str(exc))
        session.send(Error(code="protocol", message=str(exc)))
        session.close(WSCloseCode.POLICY_VIOLATION)
        return "protocol error"
    if isinstance(frame, Progress):
        fed.node_progress(session, frame)
    elif isinstance(frame, Evaluation):
        fed.node_evaluation(session, frame)
    elif isinstance(frame, OwnData):
        # Replaced whole on every send (after each welcome): the node's data as it is now.
        session.own_data = frame.datasets
        log.info("node_own_data", datasets=[d.name for d in frame.datasets])
    elif isinstance(frame, Left):
        return frame.reason or "left"
    else:
        session.send(Error(code="protocol", message=f"a {frame.type!r} frame is not expected now"))
    return None


async def _drain_outbox(ws: web.WebSocketResponse, session: NodeSession) -> None:
    """The one writer of a node socket: frames in queue order, then close when asked."""
    try:
        while True:
            text = await session.outbox.get()
            if text is None or ws.closed:
                break
            await ws.send_str(text)
            if not session.connected and session.outbox.empty():
                break  # closed while the queue was full: everything queued is now sent
    except (ConnectionError, RuntimeError) as exc:
        log.info("node_send_failed", node_id=session.node_id, error=str(exc))
    finally:
        if not ws.closed:
            await ws.close(code=session.close_code)


async def dashboard_socket(request: web.Request) -> web.WebSocketResponse:
    fed = request.app[FEDERATION]
    # The heartbeat also catches a browser that stopped reading: it never answers the ping.
    ws = web.WebSocketResponse(
        heartbeat=fed.settings.heartbeat_s, max_msg_size=4096, timeout=CLOSE_TIMEOUT_S
    )
    await ws.prepare(request)
    request.app[OPEN_SOCKETS].add(ws)
    # Subscribe and take the snapshot with no await between: no event can fall in the gap.
    sub = fed.bus.subscribe()
    snapshot = jsonsafe.dumps(
        {
            "type": "snapshot",
            "status": fed.status(),
            "nodes": fed.nodes(limit=SNAPSHOT_NODES)[0],
            "timeline": fed.store.events(limit=50),
        }
    )
    sender = asyncio.create_task(_send_events(ws, snapshot, sub.queue))
    dropped = asyncio.create_task(sub.dropped.wait())
    reader = asyncio.create_task(_read_until_closed(ws))
    try:
        await asyncio.wait({sender, dropped, reader}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        fed.bus.unsubscribe(sub)
        for task in (sender, dropped, reader):
            task.cancel()
        results = await asyncio.gather(sender, reader, return_exceptions=True)
        if sub.dropped.is_set():
            reason = "too slow: its event queue filled up"
        elif ws.exception() is not None:
            reason = f"socket error: {ws.exception()!r}"
        else:
            errors = [r for r in results if isinstance(r, Exception)]
            reason = f"send failed: {errors[0]!r}" if errors else "closed by the client"
        log.info("dashboard_closed", reason=reason, close_code=ws.close_code)
        await _close_or_abort(request, ws, WSCloseCode.TRY_AGAIN_LATER)
    return ws


async def _close_or_abort(request: web.Request, ws: web.WebSocketResponse, code: int) -> None:
    """Close politely, but never wait on a peer that has stopped reading."""
    if ws.closed:
        return
    try:
        await asyncio.wait_for(ws.close(code=code), CLOSE_TIMEOUT_S)
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()


async def _send_events(ws: web.WebSocketResponse, snapshot: str, queue: asyncio.Queue[str]) -> None:
    await ws.send_str(snapshot)
    while True:
        await ws.send_str(await queue.get())


async def _read_until_closed(ws: web.WebSocketResponse) -> None:
    async for _ in ws:
        pass  # dashboards only listen; reading keeps pings/pongs and close frames flowing
