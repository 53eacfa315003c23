"""Bad input from the network: each gets its answer, and the server and the round carry on.

One test per row of ``docs/bad-input.md`` that ``tests/server/test_api.py`` and the node
codec tests do not already prove. Rows about an open round run a real two-node job (hand
driven WebSockets sending real ``Hello`` frames, offline MNIST subset) and finish it with
honest uploads after the bad input, asserting that the round's average is exactly the
sample-weighted mean of the honest updates: nothing refused was folded in.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from aiohttp import ClientResponse, ClientWebSocketResponse, WSCloseCode, WSMsgType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytest_aiohttp import AiohttpClient
from structlog.testing import capture_logs

from node.shared.errors import WeightsError
from node.shared.model import ModelSpec, init_state
from node.shared.protocol import (
    MAX_FRAME_BYTES,
    Error,
    Progress,
    Train,
    WeightsReady,
    decode,
    decode_as,
    encode,
)
from node.shared.shards import decode_xy, encode_xy
from node.shared.weights import WeightsMeta, decode_weights, encode_weights
from server.core.aggregation import AggregationError
from server.errors import http_status
from server.settings import Settings, SettingsError
from server.web.app import create_app
from tests.server.web.conftest import RECEIVE_S, SPEC, Client, FakeNode, connect, error_of

UPLOAD_LIMIT = 64 * 1024
QUIET_S = 1.0  # how long "no answer" is waited for
State = dict[str, torch.Tensor]
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="session")
def datasets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One offline MNIST for the whole session: preparing it is idempotent, not free."""
    return tmp_path_factory.mktemp("datasets")


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, tmp_path: Path, datasets_dir: Path) -> Client:
    settings_ = Settings(
        home=tmp_path,
        datasets_dir=datasets_dir,
        mnist_download=False,
        model_spec=SPEC,
        heartbeat_s=30.0,
        max_upload_bytes=UPLOAD_LIMIT,
        # The hand-made updates here (w + 1, ...) move this tiny model far more than an
        # epoch would: the update bound has tests of its own.
        max_update_ratio=0.0,
    )
    made: Client = await aiohttp_client(create_app(settings_))
    return made


# -- hand-made nodes and a running job -----------------------------------------------------------


@dataclass
class RunningJob:
    """A two-round job with honest nodes ``a`` and ``b``, round 1 open, nothing uploaded."""

    client: Client
    a: FakeNode
    b: FakeNode
    job_id: str
    state0: State
    shard: dict[str, int]  # shard sizes by node id

    def body(self, state: State, round_: int = 1) -> bytes:
        return bytes(
            encode_weights(state, WeightsMeta(spec=SPEC, round=round_, job_id=self.job_id))
        )

    async def upload(
        self,
        node: FakeNode,
        body: bytes | bytearray,
        *,
        samples: int | None = None,
        query: dict[str, str] | None = None,
    ) -> ClientResponse:
        params = {
            "job": self.job_id,
            "round": "1",
            "samples": str(self.shard[node.node_id] if samples is None else samples),
            **(query or {}),
        }
        return await self.client.post("/sync/weights", params=params, data=body, headers=node.auth)

    async def received(self) -> list[str]:
        view = await (await self.client.get("/sync/status")).json()
        assert (view["state"], view["round"], view["round_open"]) == ("running", 1, True)
        return list(view["received"])

    async def finish_round(self) -> None:
        """Honest uploads close round 1 with exactly their sample-weighted mean."""
        update_a = {k: v + 1.0 for k, v in self.state0.items()}
        update_b = {k: v * 0.5 - 2.0 for k, v in self.state0.items()}
        samples_a, samples_b = self.shard["a"], self.shard["b"] // 2
        query = {"extra": "ignored"}  # unknown parameters are ignored
        resp = await self.upload(self.a, self.body(update_a), samples=samples_a, query=query)
        assert resp.status == 200, await resp.text()
        query = {"train_loss": "0.5", "seconds": "2"}
        resp = await self.upload(self.b, self.body(update_b), samples=samples_b, query=query)
        assert resp.status == 200, await resp.text()
        ready_a, ready_b = await self.a.expect(WeightsReady), await self.b.expect(WeightsReady)
        assert ready_a == ready_b
        assert ready_a.round == 1
        resp = await self.client.get(ready_a.url)
        assert resp.status == 200
        state1, _ = decode_weights(await resp.read())
        total = samples_a + samples_b
        for key, value in state1.items():
            expected = (update_a[key] * samples_a + update_b[key] * samples_b) / total
            torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5)
        async with asyncio.timeout(30):  # the round is recorded just after the push
            while True:
                view = await (await self.client.get("/sync/status")).json()
                if view["history"]:
                    break
                await asyncio.sleep(0.02)
        assert view["history"][0]["contributors"] == ["name-a", "name-b"]
        assert (view["history"][0]["samples"], view["history"][0]["partial"]) == (total, False)
        assert (view["state"], view["round"]) == ("running", 2)


@pytest.fixture
async def job(client: Client) -> RunningJob:
    a, b = await connect(client, "a"), await connect(client, "b")
    assert (await client.post("/datasets/prepare-mnist")).status == 200
    resp = await client.post("/train/mnist?epochs=2")
    assert resp.status == 202, await resp.text()
    job_id = (await resp.json())["job_id"]
    train: Train = await a.expect(Train)
    await b.expect(Train)
    state0, _ = decode_weights(await (await client.get(train.weights_url)).read())
    shard = {}
    for node in (a, b):
        resp = await client.get(f"/shards/{job_id}/{node.node_id}", headers=node.auth)
        assert resp.status == 200
        shard[node.node_id] = len(decode_xy(await resp.read())[1])
    return RunningJob(client, a, b, job_id, state0, shard)


async def raw_http(client: Client, data: bytes, *, close_after: float | None = None) -> bytes:
    """Send bytes on a fresh connection; the first answer's status line, headers and body.

    With ``close_after`` the client gives up after that many seconds, as a peer that lied
    about its Content-Length would, and returns what it had (usually nothing). The answer
    is read by its own Content-Length, not to EOF: after refusing a body aiohttp keeps
    the connection lingering for up to 10 s to drain it.
    """
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(data)
        await writer.drain()
        try:
            return await asyncio.wait_for(_read_answer(reader), close_after or RECEIVE_S)
        except TimeoutError:
            if close_after is None:
                raise
            return b""
    finally:
        writer.close()
        await writer.wait_closed()


async def _read_answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


def upload_head(job: RunningJob, node: FakeNode, *, headers: str) -> bytes:
    target = f"/sync/weights?job={job.job_id}&round=1&samples={job.shard[node.node_id]}"
    return (
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {node.token}\r\n"
        f"Connection: close\r\n{headers}\r\n"
    ).encode()


def status_line(answer: bytes) -> bytes:
    return answer.split(b"\r\n", 1)[0]


async def closed_with(ws: ClientWebSocketResponse) -> int | None:
    """Read until the close; the close code the server sent."""
    for _ in range(5):
        msg = await ws.receive(timeout=RECEIVE_S)
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
            break
        assert msg.type is not WSMsgType.TEXT or decode(msg.data).type == "error", msg
    return ws.close_code


# -- weights files that lie -------------------------------------------------------------------


def _replace_length(data: bytes | bytearray, length: int) -> bytes:
    return struct.pack("<Q", length) + data[8:]


def _edit_header(data: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """The same payload behind an edited (and re-measured) header."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    edit(header)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data[8 + length :]


def _first_key(header: dict[str, Any]) -> str:
    return sorted(k for k in header if k != "__metadata__")[0]


def _lie_about_offsets(header: dict[str, Any]) -> None:
    header[_first_key(header)]["data_offsets"][1] += 4_000_000


def _lie_about_dtype(header: dict[str, Any]) -> None:
    header[_first_key(header)]["dtype"] = "F64"  # 8 bytes an element: the sizes cannot add up


def _lie_about_shape(header: dict[str, Any]) -> None:
    header[_first_key(header)]["shape"][0] += 1


def _bad_bodies(job: RunningJob) -> dict[str, tuple[bytes, str]]:
    """Each refused upload with a fragment of the message that must name the problem."""
    good = job.body(job.state0)
    state = job.state0
    first = sorted(state)[0]

    def changed(key: str, value: torch.Tensor) -> bytes:
        return job.body({**state, key: value})

    def poisoned(value: float) -> bytes:
        tensor = state[first].clone()
        tensor.view(-1)[3] = value
        return changed(first, tensor)

    missing = {k: v for k, v in state.items() if k != first}
    return {
        "empty body": (b"", "safetensors"),
        "header length past the end": (_replace_length(good, len(good)), "safetensors"),
        "header length of 2**64-1": (_replace_length(good, 2**64 - 1), "safetensors"),
        "header length too short": (_replace_length(good, 7), "safetensors"),
        "header offsets past the data": (_edit_header(good, _lie_about_offsets), "safetensors"),
        "header dtype lies": (_edit_header(good, _lie_about_dtype), "safetensors"),
        "header shape lies": (_edit_header(good, _lie_about_shape), "safetensors"),
        "truncated payload": (good[:-100], "safetensors"),
        "missing key": (job.body(missing), "missing"),
        "unexpected key": (job.body({**state, "extra.weight": torch.zeros(2)}), "unexpected"),
        "wrong shape": (changed(first, torch.zeros(state[first].numel() + 1)), "shape"),
        "int64 dtype": (changed(first, state[first].to(torch.int64)), "dtype"),
        "float64 dtype": (changed(first, state[first].to(torch.float64)), "dtype"),
        "NaN": (poisoned(math.nan), "NaN"),
        "+Inf": (poisoned(math.inf), "Inf"),
        "-Inf": (poisoned(-math.inf), "Inf"),
    }


async def test_lying_and_malformed_weights_are_refused_and_nothing_is_folded(
    job: RunningJob,
) -> None:
    for name, (body, fragment) in _bad_bodies(job).items():
        for node in (job.a, job.b):
            error = await error_of(await job.upload(node, body), 400)
            assert error["code"] == "bad_request", name
            assert fragment in error["message"], (name, error["message"])
        assert await job.received() == [], name
    await job.finish_round()


async def test_an_upload_from_a_non_participant_is_forbidden(job: RunningJob) -> None:
    late = await connect(job.client, "late")  # joined after the job started: holds no shard
    error = await error_of(await job.upload(late, job.body(job.state0), samples=1), 403)
    assert "holds no shard" in error["message"]
    resp = await job.client.get(f"/shards/{job.job_id}/late", headers=late.auth)
    await error_of(resp, 404)
    resp = await job.client.get(f"/shards/{job.job_id}/a", headers=late.auth)  # a's shard
    await error_of(resp, 404)
    assert await job.received() == []
    await job.finish_round()


async def test_an_upload_with_a_dead_session_token_is_unauthorized(job: RunningJob) -> None:
    gone = await connect(job.client, "gone")
    await gone.ws.close()
    for _ in range(100):
        nodes = await (await job.client.get("/nodes")).json()
        if not next(n for n in nodes["nodes"] if n["node_id"] == "gone")["connected"]:
            break
        await asyncio.sleep(0.02)
    await error_of(await job.upload(gone, job.body(job.state0), samples=1), 401)
    await job.finish_round()


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ({"round": "-1"}, "round"),
        ({"round": "abc"}, "round"),
        ({"round": "1.0"}, "round"),
        ({"round": "3"}, "round"),  # the job has 2 rounds
        ({"round": "9" * 40}, "round"),
        ({"round": ""}, "round"),
        ({"samples": "-1"}, "samples"),
        ({"samples": "0x10"}, "samples"),
        ({"samples": str(2**31 + 1)}, "samples"),
        ({"samples": "1e3"}, "samples"),
        ({"seconds": "abc"}, "seconds"),
        ({"seconds": ""}, "seconds"),
    ],
)
async def test_bad_upload_query_values_are_refused(
    job: RunningJob, query: dict[str, str], name: str
) -> None:
    error = await error_of(await job.upload(job.a, job.body(job.state0), query=query), 400)
    assert name in error["message"]
    assert await job.received() == []


@pytest.mark.parametrize(
    "query",
    [
        {"train_loss": "nan"},
        {"val_loss": "NaN"},
        {"train_accuracy": "inf"},
        {"val_accuracy": "-Infinity"},
        {"seconds": "1e999"},  # overflows to inf
    ],
)
async def test_non_finite_upload_metrics_are_dropped_not_refused(
    job: RunningJob, query: dict[str, str]
) -> None:
    # A reading, not a broken upload: the weights count, the NaN never reaches an answer.
    resp = await job.upload(job.a, job.body(job.state0), query=query)
    assert resp.status == 200, await resp.text()
    assert await job.received() == ["name-a"]
    answer = await job.client.get("/monitor/nodes")
    json.loads(await answer.text(), parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> None:
    raise AssertionError(f"an API answer holds {name}")


async def test_unknown_query_parameters_are_ignored(client: Client) -> None:
    assert (await client.get("/health?foo=bar&epochs=-1")).status == 200
    resp = await client.get("/monitor/timeline?limit=2&limits=abc&LIMIT=-1")
    assert resp.status == 200
    assert (await client.post("/jobs/stop?force=yes")).status == 409  # no job: same as without
    # An upload with an unknown parameter is accepted: see RunningJob.finish_round (extra=ignored).


async def test_a_body_on_a_control_endpoint_is_not_read(client: Client) -> None:
    resp = await client.post("/jobs/stop", data=b"\0" * (4 * UPLOAD_LIMIT))
    assert (await error_of(resp, 409))["code"] == "conflict"  # not 413: nothing was read


async def test_the_metadata_of_an_upload_is_not_what_counts(job: RunningJob) -> None:
    """The query names the job and round; a weights file claiming others is still round 1's."""
    body = encode_weights(job.state0, WeightsMeta(spec=SPEC, round=99, job_id="another-job"))
    resp = await job.upload(job.a, body)
    assert resp.status == 200, await resp.text()
    assert await job.received() == ["name-a"]


@pytest.mark.parametrize("value", ["-1", "0", "abc", "1.5", "1001", "9" * 40, "", "%00"])
async def test_bad_timeline_limits_are_refused(client: Client, value: str) -> None:
    error = await error_of(await client.get(f"/monitor/timeline?limit={value}"), 400)
    assert "limit" in error["message"]


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "3", "9" * 40, ""])
async def test_bad_weights_rounds_are_refused(job: RunningJob, value: str) -> None:
    resp = await job.client.get(f"/sync/weights?job={job.job_id}&round={value}")
    error = await error_of(resp, 400)
    assert "round" in error["message"]


# -- bodies: size limit and Content-Length lies -------------------------------------------------


async def test_an_oversized_content_length_is_refused_before_any_byte_is_read(
    job: RunningJob,
) -> None:
    head = upload_head(job, job.a, headers=f"Content-Length: {10 * UPLOAD_LIMIT}\r\n")
    answer = await raw_http(job.client, head)  # no body is ever sent: the 413 cannot wait on it
    assert status_line(answer) == b"HTTP/1.1 413 Request Entity Too Large", answer
    assert b'"too_large"' in answer
    assert await job.received() == []
    await job.finish_round()


async def test_a_chunked_body_over_the_limit_is_cut_off(job: RunningJob) -> None:
    head = upload_head(job, job.a, headers="Transfer-Encoding: chunked\r\n")
    chunk = b"%x\r\n%s\r\n" % (16 * 1024, b"\0" * 16 * 1024)
    answer = await raw_http(job.client, head + chunk * 6)  # 96 KiB, never terminated
    assert status_line(answer) == b"HTTP/1.1 413 Request Entity Too Large", answer
    assert await job.received() == []
    await job.finish_round()


async def test_a_content_length_shorter_than_the_body(job: RunningJob) -> None:
    """The server reads Content-Length bytes (a truncated file: 400) and refuses the rest as a
    malformed next request; either way the answer is 400 and nothing is folded."""
    body = job.body(job.state0)
    head = upload_head(job, job.a, headers=f"Content-Length: {len(body) // 2}\r\n")
    answer = await raw_http(job.client, head + body)
    assert status_line(answer).split(b" ")[1] == b"400", answer
    assert await job.received() == []
    await job.finish_round()


async def test_a_content_length_longer_than_the_body(job: RunningJob) -> None:
    """The server waits for bytes that never come; the client gives up; nothing is folded,
    no server error is logged, and the node can still upload."""
    body = job.body(job.state0)
    head = upload_head(job, job.a, headers=f"Content-Length: {len(body) + 100}\r\n")
    with capture_logs() as logs:
        answer = await raw_http(job.client, head + body, close_after=QUIET_S)
        await asyncio.sleep(0.2)  # let the server notice the closed connection
    assert answer == b""
    assert [e for e in logs if e["log_level"] in ("error", "critical")] == []
    assert await job.received() == []
    await job.finish_round()


@pytest.mark.parametrize(
    "headers",
    [
        "Content-Length: abc\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: 3\r\nContent-Length: 4\r\n",
        "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: gzip\r\n",
        f"X-Long: {'x' * 9000}\r\n",
    ],
)
async def test_malformed_http_framing_is_refused_by_the_parser(
    job: RunningJob, headers: str
) -> None:
    """Refused by aiohttp's HTTP parser before any handler runs: a plain-text 400 and a
    closed connection (not the JSON error shape, which only the application writes)."""
    answer = await raw_http(job.client, upload_head(job, job.a, headers=headers) + b"abc")
    assert status_line(answer).split(b" ")[1] == b"400", answer
    assert await job.received() == []
    await job.finish_round()


# -- names in paths ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dataset_id",
    ["..", "..%2F..%2Fetc", "%2E%2E%2Ffedavg.sqlite3", "MNIST", "mnist%00", "a" * 65, "-x", "a.b"],
)
async def test_unsafe_dataset_ids_are_not_found(
    client: Client, tmp_path: Path, dataset_id: str
) -> None:
    before = _tree(tmp_path)
    for path in (f"/train/{dataset_id}", f"/train/{dataset_id}/prepare"):
        resp = await client.post(path)
        if dataset_id == "..":  # the URL itself normalises /train/.. to / (POST: 405)
            assert resp.status in (404, 405)
            continue
        await error_of(resp, 404)
    assert _tree(tmp_path) == before


def _tree(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


async def test_a_model_name_longer_than_the_file_system_allows_is_not_found(
    client: Client,
) -> None:
    await error_of(await client.get(f"/models/{'m' * 300}.safetensors"), 404)
    await error_of(await client.get(f"/models/{'é' * 130}.safetensors"), 404)  # 260 bytes


@pytest.mark.parametrize(
    ("run_id", "node_id"), [("..%2F..", "a"), ("{job}", "..%2Fb"), ("{job}", "%2E%2E"), ("x", "a")]
)
async def test_unsafe_shard_paths_are_not_found(job: RunningJob, run_id: str, node_id: str) -> None:
    path = f"/shards/{run_id.format(job=job.job_id)}/{node_id}"
    await error_of(await job.client.get(path, headers=job.a.auth), 404)


async def test_a_non_ascii_session_token_is_unauthorized(job: RunningJob) -> None:
    request = (
        "GET /shards/x/a HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \u00e9t\u00e9\r\n\r\n"
    )
    answer = await raw_http(job.client, request.encode())
    assert status_line(answer) == b"HTTP/1.1 401 Unauthorized", answer


# -- WebSocket frames ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"capacity": "fast"},
        {"node_id": 5},
        {"name": None},
        {"capacity": True},
        {"protocol": "1"},
        {"version": ["t"]},
        {"node_id": "n" * 5000},  # a string over the 4096-character limit
    ],
)
async def test_a_hello_with_wrong_field_types_is_refused(
    client: Client, fields: dict[str, Any]
) -> None:
    hello = {"type": "hello", "node_id": "n", "name": "n", "capacity": 1.0, "device": "cpu"}
    hello["secret"] = "s" * 43
    ws = await client.ws_connect("/ws/node")
    await ws.send_str(json.dumps({**hello, "version": "t", **fields}))
    msg = await ws.receive(timeout=RECEIVE_S)
    error = decode_as(msg.data, Error)
    assert error.code == "protocol"
    assert next(iter(fields)) in error.message
    assert await closed_with(ws) == 1008
    assert (await (await client.get("/nodes")).json())["nodes"] == []


@pytest.mark.parametrize("stage", ["before hello", "after hello"])
async def test_an_oversized_node_frame_closes_with_1009(client: Client, stage: str) -> None:
    if stage == "before hello":
        ws = await client.ws_connect("/ws/node")
    else:
        ws = (await connect(client, "big")).ws
    await ws.send_str("x" * (MAX_FRAME_BYTES + 1))
    assert await closed_with(ws) == 1009  # aiohttp's max_msg_size answer: no error frame
    await _server_carries_on(client)


async def test_an_oversized_first_frame_logs_no_server_error(client: Client) -> None:
    with capture_logs() as logs:
        ws = await client.ws_connect("/ws/node")
        await ws.send_str("x" * (MAX_FRAME_BYTES + 1))
        assert await closed_with(ws) == 1009
        await asyncio.sleep(0.2)
    assert [e["event"] for e in logs if e["log_level"] in ("error", "critical")] == []


async def test_an_oversized_dashboard_frame_closes_with_1009(client: Client) -> None:
    ws = await client.ws_connect("/ws/dashboard")
    snapshot = await ws.receive(timeout=RECEIVE_S)
    assert json.loads(snapshot.data)["type"] == "snapshot"
    await ws.send_str("x" * 4097)
    assert await closed_with(ws) == 1009
    await _server_carries_on(client)


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "nope"}',
        '{"type": 5}',
        "[1, 2]",
        '{"type": "progress", "job_id": "j", "round": "1", "batch": 1, "batches": 1, "loss": 0}',
        '{"type": "left", "reason": "x", "extra": 1}',
        "\x00\xff garbage",
        "[" * 5000,
    ],
)
async def test_a_malformed_frame_after_hello_gets_an_error_then_a_close(
    client: Client, text: str
) -> None:
    node = await connect(client, "n1")
    await node.ws.send_str(text)
    error = await node.expect(Error)
    assert error.code == "protocol"
    assert await closed_with(node.ws) == WSCloseCode.POLICY_VIOLATION
    await _server_carries_on(client)


async def test_a_binary_frame_after_hello_gets_an_error_then_a_close(client: Client) -> None:
    node = await connect(client, "n1")
    await node.ws.send_bytes(b"\x00\x01\x02")
    error = await node.expect(Error)
    assert (error.code, "BINARY" in error.message) == ("protocol", True)
    assert await closed_with(node.ws) == WSCloseCode.POLICY_VIOLATION
    await _server_carries_on(client)


async def _server_carries_on(client: Client) -> None:
    assert (await client.get("/health")).status == 200
    node = await connect(client, "still-welcome")
    await node.ws.close()


async def test_misbehaving_sockets_do_not_disturb_a_round(job: RunningJob) -> None:
    """Garbage, oversized, binary and out-of-place frames on other sockets, mid-round."""
    client = job.client
    intruder = await connect(client, "intruder")
    await intruder.ws.send_str("not json")
    assert (await intruder.expect(Error)).code == "protocol"
    assert await closed_with(intruder.ws) is not None

    big = await connect(client, "big")
    await big.ws.send_str("x" * (MAX_FRAME_BYTES + 1))
    assert await closed_with(big.ws) == 1009

    not_hello = encode(Progress(job_id="j", round=1, batch=1, batches=1, loss=1.0))
    for first in (b"\x00", not_hello, "x" * (MAX_FRAME_BYTES + 1)):  # instead of a hello
        ws = await client.ws_connect("/ws/node")
        await (ws.send_bytes(first) if isinstance(first, bytes) else ws.send_str(first))
        assert await closed_with(ws) in (1008, 1009)

    # An honest node sending a server frame is told so and stays; its progress is welcome.
    await job.a.ws.send_str(encode(Error(code="x", message="y")))
    assert "not expected" in (await job.a.expect(Error)).message
    await job.b.ws.send_str(
        encode(Progress(job_id=job.job_id, round=1, batch=1, batches=2, loss=1))
    )
    assert not job.a.ws.closed and not job.b.ws.closed
    assert await job.received() == []
    await job.finish_round()


# -- fuzzing the safetensors validators with mutated valid files ----------------------------------

_SHARD = encode_xy(torch.arange(48, dtype=torch.uint8).reshape(3, 1, 4, 4), torch.tensor([0, 1, 2]))
_WEIGHTS = encode_weights(
    init_state(ModelSpec(input_shape=(1, 4, 4), hidden=(5,), dropout=(), num_classes=3), 0),
    WeightsMeta(spec=ModelSpec(input_shape=(1, 4, 4), hidden=(5,), dropout=(), num_classes=3)),
)


def _shard_or_error(data: bytes) -> None:
    try:
        x, y = decode_xy(data, input_shape=(1, 4, 4), num_classes=3)
    except WeightsError:  # ShardError is one
        return
    assert x.dtype == torch.uint8 and y.dtype == torch.int64 and len(x) == len(y)


@FUZZ
@given(st.integers(0, len(_SHARD) - 1), st.integers(1, 255), st.integers(0, len(_SHARD)))
def test_fuzz_a_corrupted_valid_shard(position: int, flip: int, cut: int) -> None:
    data = bytearray(_SHARD)
    data[position] ^= flip
    _shard_or_error(bytes(data))
    _shard_or_error(bytes(data[:cut]))


@FUZZ
@given(st.integers(0, 2**64 - 1))
def test_fuzz_a_lying_header_length(length: int) -> None:
    for valid in (_SHARD, _WEIGHTS):
        data = _replace_length(valid, length)
        if data == valid:
            continue
        with pytest.raises(WeightsError):
            decode_weights(data)
        with pytest.raises(WeightsError):
            decode_xy(data)


# -- answers that were 500s ------------------------------------------------------------------


async def test_a_shape_whose_strides_overflow_is_a_400_and_counted(job: RunningJob) -> None:
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [0, 2**62, 2**62], "data_offsets": [0, 0]}}
    ).encode()
    body = struct.pack("<Q", len(header)) + header  # 67 bytes: an empty tensor of absurd shape
    error = await error_of(await job.upload(job.a, body), 400)
    assert "too large" in error["message"]
    metrics = await (await job.client.get("/metrics")).text()
    assert 'fedavg_uploads_rejected_total{reason="WeightsError"} 1.0' in metrics
    await job.finish_round()  # the round carries on


async def slow_body(chunks: list[bytes], started: asyncio.Event) -> Any:
    for chunk in chunks:
        yield chunk
        started.set()
        await asyncio.sleep(0.2)


async def slow_upload(job: RunningJob, node: FakeNode) -> asyncio.Task[ClientResponse]:
    """``node``'s honest upload, sent 4 KiB every 0.2 s; returns once its body has begun."""
    body = job.body(job.state0)
    started = asyncio.Event()
    chunks = [body[i : i + 4096] for i in range(0, len(body), 4096)]
    upload = asyncio.create_task(
        job.client.post(
            f"/sync/weights?job={job.job_id}&round=1&samples={job.shard[node.node_id]}",
            data=slow_body(chunks, started),
            headers={**node.auth, "Content-Length": str(len(body))},
        )
    )
    await asyncio.wait_for(started.wait(), RECEIVE_S)
    return upload


async def test_an_upload_in_flight_when_the_job_stops_gets_409(job: RunningJob) -> None:
    upload = await slow_upload(job, job.a)
    assert (await job.client.post("/jobs/stop")).status == 200
    error = await error_of(await asyncio.wait_for(upload, RECEIVE_S), 409)
    assert "closed" in error["message"] or "stopped" in error["message"]
    # And one whose body arrives after the stop: 409, never a 500.
    error = await error_of(await job.upload(job.b, job.body(job.state0)), 409)
    assert "stopped" in error["message"]


async def test_a_second_upload_of_a_node_while_its_first_is_read_is_409(job: RunningJob) -> None:
    first = await slow_upload(job, job.a)
    error = await error_of(await job.upload(job.a, job.body(job.state0)), 409)
    assert "in flight" in error["message"]
    assert (await asyncio.wait_for(first, RECEIVE_S)).status == 200  # the first one counts


async def test_the_upload_limit_follows_the_model_size(
    aiohttp_client: AiohttpClient, tmp_path: Path, datasets_dir: Path
) -> None:
    settings_ = Settings(  # the default FEDAVG_MAX_UPLOAD_MB: 512 MiB
        home=tmp_path, datasets_dir=datasets_dir, mnist_download=False, model_spec=SPEC
    )
    client: Client = await aiohttp_client(create_app(settings_))
    a = await connect(client, "a")
    assert (await client.post("/datasets/prepare-mnist")).status == 200
    job_id = (await (await client.post("/train/mnist?epochs=1")).json())["job_id"]
    await a.expect(Train)
    head = (
        f"POST /sync/weights?job={job_id}&round=1&samples=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {a.token}\r\nContent-Length: {4 << 20}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    answer = await raw_http(client, head)  # 4 MiB for a 26 KB model: refused unread
    assert status_line(answer) == b"HTTP/1.1 413 Request Entity Too Large"
    assert b"limit" in answer


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (AggregationError("node 'a' already contributed"), 400),
        (SettingsError("bad setting: lr"), 400),
        (RuntimeError("a bug"), 500),
    ],
)
def test_errors_of_every_layer_map_to_a_status(exc: Exception, status: int) -> None:
    assert http_status(exc)[0] == status
