"""Virtual nodes: their identities (distinct, and the same after a restart), the pool that
bounds how many rounds run at once, weights dropped between rounds, one SIGTERM for all,
and the CLI's refusal of bad counts."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path
from typing import Any, cast

import pytest
import torch

from node import cli
from node.identity import IdentityError, identity_path
from node.pipeline import Assignment, RoundPipeline, Target
from node.settings import NodeSettings
from node.shared.model import ModelSpec, init_state
from node.shared.protocol import TrainConfig
from node.shared.shards import encode_xy
from node.shared.wandb_sink import WandbSink
from node.shared.weights import WeightsMeta, encode_weights, sha256_hex
from node.transport import HttpTransport
from node.virtual import run_agents, virtual_agents, virtual_nodes
from tests.node.stand_ins import StubTransport

SPEC = ModelSpec(input_shape=(1, 4, 4), hidden=(5,), dropout=(), num_classes=3)


def _settings(cache_dir: Path, **changes: Any) -> NodeSettings:
    given = {"name": "lab", "node_id": "lab-1", "cache_dir": cache_dir, **changes}
    return NodeSettings.from_env({}, **given)


def test_each_virtual_node_has_its_own_identity_and_a_restart_brings_them_back(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path, virtual=12)
    first = virtual_nodes(settings, "lab-1")
    assert [n.identity.node_id for n in first] == [f"lab-1-v{i:03d}" for i in range(12)]
    assert [n.name for n in first] == [f"lab-v{i:03d}" for i in range(12)]
    assert len({n.identity.secret for n in first}) == 12
    for node in first:  # each in its own file, which only this user may read
        path = identity_path(tmp_path, node.identity.node_id)
        assert path.is_file() and path.stat().st_mode & 0o077 == 0

    again = virtual_nodes(settings, "lab-1")  # the process restarted on the same cache dir
    assert again == first
    elsewhere = virtual_nodes(settings, "lab-2")
    assert not {n.identity.secret for n in elsewhere} & {n.identity.secret for n in first}


def test_virtual_ids_longer_than_the_protocol_allows_are_refused(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="at most 128 characters"):
        virtual_nodes(_settings(tmp_path, virtual=2), "x" * 124)


def test_each_agent_is_a_whole_node_with_the_measured_capacity(tmp_path: Path) -> None:
    settings = _settings(tmp_path, virtual=3)
    agents = virtual_agents(settings, virtual_nodes(settings, "lab-1"), 250.0, torch.device("cpu"))
    assert [a.settings.node_id for a in agents] == ["lab-1-v000", "lab-1-v001", "lab-1-v002"]
    assert [a.settings.name for a in agents] == ["lab-v000", "lab-v001", "lab-v002"]
    assert all(a.capacity == 250.0 and a.settings.explicit_node_id for a in agents)


class Pool:
    """How many rounds are between their weights download and their upload, at most."""

    def __init__(self) -> None:
        self.active = self.most = 0


class CountingTransport(StubTransport):
    """Serves like the stand-in, counts rounds in flight, and records each download's buffer."""

    def __init__(self, files: dict[str, bytes], pool: Pool) -> None:
        super().__init__(files)
        self.pool = pool
        self.buffers_offered: list[bytearray | None] = []

    async def download(self, path: str, sha256: str, into: bytearray | None = None) -> bytearray:
        if path == "/weights":
            self.buffers_offered.append(into)
            self.pool.active += 1
            self.pool.most = max(self.pool.most, self.pool.active)
        await asyncio.sleep(0)  # let the other rounds in, if they may come
        return await super().download(path, sha256, into)

    async def upload_weights(self, path: str, parts: list[memoryview]) -> dict[str, Any]:
        await asyncio.sleep(0)
        answer = await super().upload_weights(path, parts)
        self.pool.active -= 1
        return answer


def _files() -> dict[str, bytes]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (12, 1, 4, 4), dtype=torch.uint8, generator=gen)
    y = torch.arange(12, dtype=torch.int64) % 3
    weights = encode_weights(init_state(SPEC, 1), WeightsMeta(SPEC, round=1, job_id="j"))
    return {"/shard": bytes(encode_xy(x, y)), "/weights": bytes(weights)}


async def _rounds_at_once(
    tmp_path: Path, nodes: int, slots: asyncio.Semaphore | None, rounds: int = 2
) -> tuple[Pool, list[CountingTransport]]:
    """``nodes`` pipelines sharing ``slots``, each training ``rounds`` rounds, all started
    together."""
    files, pool = _files(), Pool()
    job = Assignment("j", "/shard", sha256_hex(files["/shard"]), SPEC, TrainConfig(), rounds=3)
    target = Target("j", 2, "/weights", sha256_hex(files["/weights"]))
    transports = [CountingTransport(files, pool) for _ in range(nodes)]

    async def node(i: int) -> None:
        settings = _settings(tmp_path, node_id=f"n{i}")
        pipeline = RoundPipeline(
            settings,
            torch.device("cpu"),
            WandbSink(None, "fedavg", tmp_path / "wandb"),
            is_stale=lambda _target: None,
            round_slots=slots,
            keep_weights_buffer=slots is None,
        )
        for _ in range(rounds):
            outbox: asyncio.Queue[str] = asyncio.Queue(64)
            assert await pipeline.run(cast(HttpTransport, transports[i]), outbox, job, target)

    await asyncio.gather(*(node(i) for i in range(nodes)))
    return pool, transports


async def test_the_pool_never_runs_more_than_k_rounds_at_once(tmp_path: Path) -> None:
    pool, transports = await _rounds_at_once(tmp_path, nodes=6, slots=asyncio.Semaphore(2))
    assert pool.most == 2
    assert all(len(t.uploads) == 2 for t in transports)
    # Without the shared slots the same six rounds overlap: the count above is the pool's.
    unbounded, _ = await _rounds_at_once(tmp_path, nodes=6, slots=None, rounds=1)
    assert unbounded.most > 2


async def test_a_virtual_node_keeps_no_weights_between_rounds(tmp_path: Path) -> None:
    _, virtual = await _rounds_at_once(tmp_path, nodes=2, slots=asyncio.Semaphore(1))
    assert all(t.buffers_offered == [None, None] for t in virtual)
    _, single = await _rounds_at_once(tmp_path, nodes=1, slots=None)
    first, second = single[0].buffers_offered
    assert first is None and second is not None  # one node refills its last round's buffer


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_sigterm_stops_every_agent(tmp_path: Path) -> None:
    # Nobody listens on the port: each agent is in its reconnect loop when the signal comes.
    settings = _settings(tmp_path, virtual=3, orchestrator=f"http://127.0.0.1:{_closed_port()}")
    agents = virtual_agents(settings, virtual_nodes(settings, "lab-1"), 1.0, torch.device("cpu"))
    running = asyncio.create_task(run_agents(agents))
    await asyncio.sleep(0.2)  # all three have tried to connect
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(running, 30)
    assert running.done() and running.exception() is None


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--virtual", "0"], "NODE_VIRTUAL/--virtual must be 1..1000"),
        (["--virtual", "3", "--virtual-workers", "4"], "NODE_VIRTUAL_WORKERS/--virtual-workers"),
    ],
)
def test_the_cli_refuses_bad_counts_with_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    named: str,
) -> None:
    for variable in ("NODE_VIRTUAL", "NODE_VIRTUAL_WORKERS", "NODE_DATA"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(SystemExit) as info:
        cli.main([*args, "--home", str(tmp_path)])
    assert info.value.code == 2
    assert named in capsys.readouterr().err
