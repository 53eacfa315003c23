"""A job's participants: which states its frames put their sessions in, and which progress
frames may still reach a node's row. Real registry sessions, no sockets: the frames a job
sends land in each session's outbox."""

from __future__ import annotations

from pathlib import Path

from node.shared.model import ModelSpec
from node.shared.protocol import Done, Hello, Progress, Train, TrainConfig, WeightsReady, decode
from server.job.participants import Participants
from server.registry import NodeRegistry, NodeSession
from server.shard_files import ShardFile
from tests.server.job.conftest import NOW

JOB = "job-1"


def _train(node_id: str) -> Train:
    return Train(
        job_id=JOB,
        dataset="mnist",
        shard_url=f"/shards/{JOB}/{node_id}",
        shard_sha256="ab" * 32,
        model_spec=ModelSpec(hidden=(8,), dropout=()),
        config=TrainConfig(),
        rounds=3,
        round=1,
        weights_url=f"/sync/weights?job={JOB}&round=0",
        weights_sha256="cd" * 32,
    )


def _participants(*node_ids: str) -> tuple[Participants, dict[str, NodeSession]]:
    registry = NodeRegistry()
    sessions = {}
    for node_id in node_ids:
        hello = Hello(node_id, node_id, 10.0, "cpu", "t", secret="s" * 16)
        sessions[node_id], _ = registry.join(hello, NOW)
    shards = {
        n: ShardFile(n, Path(f"{n}.safetensors"), "ab" * 32, 10, 10, (5, 5)) for n in node_ids
    }
    return Participants(registry, JOB, shards, {n: n for n in node_ids}, _train), sessions


def _progress(round_: int, batch: int = 3) -> Progress:
    return Progress(job_id=JOB, round=round_, batch=batch, batches=9, loss=0.5, epoch=2, epochs=3)


def _sent(session: NodeSession) -> list[str]:
    frames = []
    while not session.outbox.empty():
        text = session.outbox.get_nowait()
        assert text is not None
        frames.append(decode(text).type)
    return frames


def test_a_node_told_to_train_shows_progress_about_that_round_only() -> None:
    participants, sessions = _participants("a")
    a = sessions["a"]
    assert a.progress_refusal(_progress(1)) == "wrong_job"  # never told of this job
    participants.send_train("a")
    assert (a.state, a.training_round) == ("training", 1)
    assert a.progress_refusal(_progress(1)) is None
    assert a.progress_refusal(_progress(2)) == "wrong_round"
    data = a.show_progress(_progress(1, batch=4))
    assert data == {"round": 1, "batch": 4, "batches": 9, "epoch": 2, "epochs": 3, "loss": 0.5}
    assert (a.view()["epoch"], a.view()["epochs"]) == (2, 3)


def test_after_weights_ready_the_last_rounds_progress_no_longer_counts() -> None:
    participants, sessions = _participants("a")
    participants.send_train("a")
    participants.push_ready(WeightsReady(JOB, 1, "/w", "ef" * 32), not_waited_for=())
    assert sessions["a"].progress_refusal(_progress(1)) == "wrong_round"
    assert sessions["a"].progress_refusal(_progress(2)) is None


def test_once_done_is_sent_no_progress_and_no_frame_sets_a_node_training_again() -> None:
    """The stop's race: progress frames still in flight after ``done`` (and a node that
    rejoins while the stopped job's last rounds settle) must leave the node idle."""
    participants, sessions = _participants("a", "b")
    for node_id in sessions:
        participants.send_train(node_id)
    participants.send_done(Done(job_id=JOB, model_url="", status="stopped"))
    for session in sessions.values():
        assert (session.state, session.training_round) == ("idle", None)
        assert session.progress_refusal(_progress(1)) == "wrong_round"
    participants.send_train("a")  # it rejoined: it hears the job is done, not a round
    participants.push_ready(WeightsReady(JOB, 1, "/w", "ef" * 32), not_waited_for=())
    participants.send_done(Done(job_id=JOB, model_url="", status="stopped"))  # sent once
    assert {s.state for s in sessions.values()} == {"idle"}
    assert _sent(sessions["a"]) == ["train", "done", "done"]
    assert _sent(sessions["b"]) == ["train", "done"]
