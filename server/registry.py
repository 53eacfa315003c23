"""Connected nodes: who they are, what they are doing, and their frame queues and budgets.

Each node socket has one bounded outbound queue drained by one writer task, so a node that
cannot keep up is disconnected instead of stalling whoever sends to it; and one inbound
frame budget, so a node that talks too much is muted and then cut off.

The registry keeps every connected node, but only the newest ``max_offline`` of those that
have gone (and every participant of the running job): anyone with the join token can make
up new ids, and each one would otherwise be remembered for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import WSCloseCode

from node.shared.protocol import Frame, Hello, OwnDataset, Progress, encode

log = structlog.get_logger(__name__)

OUTBOX_FRAMES = 64
FLOOD_WINDOW_S = 10.0  # a socket that drops over FLOOD_DROPS frames within this is closed


class FrameBudget:
    """A token bucket over one socket's incoming frames: ``rate`` per second, bursts of
    ``2 * rate``. Time comes in as an argument, so it is tested without a clock.

    The honest node sends at most 10 progress frames a second (node/pipeline.py), under any
    sane rate; a frame over budget is dropped, and a socket that drops many within a window
    is flooding.
    """

    __slots__ = ("burst", "dropped", "flood_drops", "rate", "stamp", "tokens", "window")

    def __init__(self, rate: float, now: float) -> None:
        self.rate, self.burst = rate, 2 * rate
        self.flood_drops = int(5 * self.burst)  # e.g. 200 at 20/s: never an honest burst
        self.tokens, self.stamp = self.burst, now
        self.dropped = 0  # in the current window
        self.window = now

    def allow(self, now: float) -> bool:
        """Spend a token if there is one; False means drop this frame."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        if now - self.window > FLOOD_WINDOW_S:
            self.window, self.dropped = now, 0
        self.dropped += 1
        return False

    @property
    def flooding(self) -> bool:
        return self.dropped > self.flood_drops


@dataclass(slots=True)
class NodeSession:
    node_id: str
    name: str
    capacity: float
    device: str
    version: str
    session_token: str
    connected_at: float
    last_seen: float
    outbox: asyncio.Queue[str | None] = field(default_factory=lambda: asyncio.Queue(OUTBOX_FRAMES))
    connected: bool = True
    state: str = "idle"
    job_id: str | None = None
    # The round this node was last told to train (train frame, or weights_ready + 1), set by
    # the job; None: it trains nothing for us (never told, or told the job is done).
    training_round: int | None = None
    round: int = 0
    batch: int = 0
    batches: int = 0
    epoch: int = 1  # of epochs, as the last progress frame said (1-based)
    epochs: int = 1
    loss: float | None = None
    val_accuracy: float | None = None
    shard_samples: int | None = None
    shard_labels: list[int] | None = None  # the shard's samples per class
    # The datasets the node holds itself (its own_data frame): what it says, never samples.
    own_data: tuple[OwnDataset, ...] = ()
    # The node's latest reading of a global model on its own test split, and the job it was
    # in then: the row shows it only while the node is in that job (a new job resets it).
    evaluation: dict[str, Any] | None = None
    evaluation_job: str | None = None
    close_code: int = WSCloseCode.OK

    def send(self, frame: Frame) -> bool:
        """Queue a frame; False (and the socket is asked to close) if the node is not keeping up."""
        if not self.connected:
            return False
        try:
            self.outbox.put_nowait(encode(frame))
        except asyncio.QueueFull:
            log.warning("node_outbox_full", node_id=self.node_id)
            self.close()
            return False
        return True

    def progress_refusal(self, progress: Progress) -> str | None:
        """Why a progress frame must not reach this row (``wrong_job``, ``wrong_round``), or
        None. Only the round the node was last told to train counts: frames still in flight
        after a ``done`` (or a ``weights_ready``) are about a round that is over for us."""
        if progress.job_id != self.job_id:
            return "wrong_job"
        if self.training_round is None or progress.round != self.training_round:
            return "wrong_round"
        return None

    def show_progress(self, progress: Progress) -> dict[str, Any]:
        """Take a progress frame (already checked to be about what this node trains) into
        the row; returns the ``progress`` event's data."""
        self.round, self.batch, self.batches = progress.round, progress.batch, progress.batches
        self.epoch, self.epochs, self.loss = progress.epoch, progress.epochs, progress.loss
        self.state = "training"
        return self._progress()

    def _progress(self) -> dict[str, Any]:
        """Where the node's local training is: the ``progress`` event, and part of the row."""
        return {
            "round": self.round,
            "batch": self.batch,
            "batches": self.batches,
            "epoch": self.epoch,
            "epochs": self.epochs,
            "loss": self.loss,
        }

    def show_evaluation(self, round: int, samples: int, correct: int, loss: float | None) -> None:
        """Take a counted evaluation report (the model after ``round``, ``correct`` of
        ``samples`` on the node's test split) into the row, for the node's current job."""
        accuracy = correct / samples if samples > 0 else None
        self.evaluation = {"round": round, "accuracy": accuracy, "loss": loss, "samples": samples}
        self.evaluation_job = self.job_id

    def _evaluation(self) -> dict[str, Any] | None:
        return self.evaluation if self.evaluation_job == self.job_id else None

    def close(self, code: int = WSCloseCode.OK) -> None:
        """Ask the writer task to close the socket (it drains what is queued first)."""
        if self.connected:
            self.close_code = code
        self.connected = False
        # When the queue is full the writer stops on its own once it has drained it.
        with contextlib.suppress(asyncio.QueueFull):
            self.outbox.put_nowait(None)

    def view(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "name": self.name,
            "capacity": round(self.capacity, 1),
            "device": self.device,
            "version": self.version,
            "connected": self.connected,
            "connected_at": self.connected_at,
            "last_seen": self.last_seen,
            "state": self.state,
            "job_id": self.job_id,
            **self._progress(),
            "val_accuracy": self.val_accuracy,
            "shard_samples": self.shard_samples,
            "shard_labels": self.shard_labels,
            "own_data": [own_data_view(d) for d in self.own_data],
            "evaluation": self._evaluation(),
        }


def own_data_view(dataset: OwnDataset) -> dict[str, Any]:
    """A dataset a node announced, as the API shows it (label counts only if it sent them)."""
    view: dict[str, Any] = {
        "name": dataset.name,
        "input_shape": list(dataset.input_shape),
        "dtype": dataset.dtype,
        "num_classes": len(dataset.class_names),
        "class_names": list(dataset.class_names),
        "train_samples": dataset.train_samples,
        "test_samples": dataset.test_samples,
        "fingerprint": dataset.fingerprint,
    }
    if dataset.label_counts is not None:
        view["label_counts"] = list(dataset.label_counts)
    return view


class NodeRegistry:
    """The connected nodes and the newest offline ones; ``connected`` holds those with a
    live socket."""

    def __init__(self, max_offline: int = 256) -> None:
        self.nodes: dict[str, NodeSession] = {}
        self.max_offline = max_offline
        self._by_token: dict[str, NodeSession] = {}
        self._offline: dict[str, None] = {}  # ids of gone nodes, oldest departure first

    def join(self, hello: Hello, now: float) -> tuple[NodeSession, NodeSession | None]:
        """Register a node; returns it and the older session of the same id it replaces."""
        previous = self.nodes.get(hello.node_id)
        self._offline.pop(hello.node_id, None)
        if previous is not None:
            self._by_token.pop(previous.session_token, None)
        session = NodeSession(
            node_id=hello.node_id,
            name=hello.name,
            capacity=hello.capacity,
            device=hello.device,
            version=hello.version,
            session_token=secrets.token_urlsafe(24),
            connected_at=now,
            last_seen=now,
        )
        self.nodes[hello.node_id] = session
        self._by_token[session.session_token] = session
        return session, previous if previous is not None and previous.connected else None

    def leave(self, session: NodeSession) -> bool:
        """Mark a session gone; False when a newer session of that node already replaced it."""
        session.connected = False
        session.state = "offline"
        self._by_token.pop(session.session_token, None)
        current = self.nodes.get(session.node_id) is session
        if current:
            self._offline[session.node_id] = None
        return current

    def prune_offline(self, keep: Collection[str]) -> list[str]:
        """Forget the longest-gone nodes beyond ``max_offline``, never one in ``keep`` (the
        running job's participants: the job still names them, and they do not count against
        the bound); returns the ids forgotten."""
        kept = sum(1 for node_id in keep if node_id in self._offline)
        excess = len(self._offline) - kept - self.max_offline
        if excess <= 0:
            return []
        gone = []
        for node_id in self._offline:  # oldest first; skips only the few that are kept
            if node_id not in keep:
                gone.append(node_id)
                if len(gone) == excess:
                    break
        for node_id in gone:
            del self._offline[node_id]
            del self.nodes[node_id]
        return gone

    def offline_newest_first(self) -> list[NodeSession]:
        return [self.nodes[n] for n in reversed(self._offline)]

    def by_token(self, token: str) -> NodeSession | None:
        # The dict finds the candidate; compare_digest makes the final say constant-time.
        session = self._by_token.get(token)
        if session is None or not secrets.compare_digest(
            session.session_token.encode(), token.encode()
        ):
            return None
        return session

    def connected(self) -> list[NodeSession]:
        return [s for s in self.nodes.values() if s.connected]
