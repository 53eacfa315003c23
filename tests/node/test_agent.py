"""The agent's word on why a round in training is given up, from the frames it handles."""

from __future__ import annotations

from pathlib import Path

import torch

from node.agent import Agent
from node.settings import NodeSettings
from node.shared.model import ModelSpec
from node.shared.protocol import Done, Train, TrainConfig, WeightsReady


def _agent(tmp_path: Path) -> Agent:
    settings = NodeSettings(
        orchestrators=("http://x",), node_id="n1", name="n1", cache_dir=tmp_path
    )
    return Agent(settings, 10.0, torch.device("cpu"), secret="s" * 16)


def _train() -> Train:
    return Train(
        job_id="j",
        dataset="mnist",
        shard_url="/shards/j/n1",
        shard_sha256="ab" * 32,
        model_spec=ModelSpec(hidden=(8,), dropout=()),
        config=TrainConfig(),
        rounds=3,
        round=2,
        weights_url="/sync/weights?job=j&round=1",
        weights_sha256="cd" * 32,
    )


async def test_a_round_is_stale_for_the_reason_that_ended_it(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    agent._handle(_train())
    training = agent.target
    assert training is not None and agent._stale(training) is None
    agent._handle(WeightsReady(job_id="j", round=2, url="/w", sha256="ef" * 32))
    assert agent._stale(training) == "newer weights arrived"

    newer = agent.target
    assert newer is not None
    agent._handle(Done(job_id="j", model_url="", status="stopped"))
    assert agent._stale(newer) == "the job ended"  # what a stop looks like to the node

    agent._handle(_train())
    again = agent.target
    assert again is not None
    agent.target = None  # what the end of a connection does
    assert agent._stale(again) == "the connection closed"
    agent.stop()
    assert agent._stale(again) == "the node is stopping"
