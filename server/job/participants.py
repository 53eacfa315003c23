"""A job's participants as sessions: the frames the job pushes them, their states, their names.

The registry holds whoever is connected now; a job only ever talks to the shard holders
among them, and names them by the names they had when it started.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping

from node.shared.protocol import Done, Train, WeightsReady
from server.registry import NodeRegistry, NodeSession
from server.shard_files import ShardFile


class Participants:
    """The sessions of one job's shard holders, and what the job tells them."""

    def __init__(
        self,
        registry: NodeRegistry,
        job_id: str,
        shards: Mapping[str, ShardFile],
        names: Mapping[str, str],
        train_frame: Callable[[str], Train],
    ) -> None:
        self._registry = registry
        self._job_id = job_id
        self._shards = shards
        self.names = dict(names)  # node names at the start: the registry forgets after a restart
        self._train_frame = train_frame
        self.done: Done | None = None  # once sent, the job asks its nodes for nothing more

    def connected(self) -> list[NodeSession]:
        return [s for s in self._registry.connected() if s.node_id in self._shards]

    def is_connected(self, node_id: str) -> bool:
        session = self._registry.nodes.get(node_id)
        return session is not None and session.connected

    def names_of(self, node_ids: Iterable[str]) -> list[str]:
        nodes = self._registry.nodes
        return [self.names.get(n) or (nodes[n].name if n in nodes else n) for n in node_ids]

    def send_train(self, node_id: str) -> None:
        """Send a node into the open round; once the job is done, tell it that instead."""
        session = self._registry.nodes.get(node_id)
        if session is not None and session.connected and self.done is not None:
            session.send(self.done)  # it came back while a stopped job's rounds settle
        elif session is not None and session.connected:
            frame = self._train_frame(node_id)
            session.send(frame)
            session.job_id, session.state = self._job_id, "training"
            session.training_round = frame.round  # its progress frames must be about this one
            session.shard_samples = self._shards[node_id].samples
            session.shard_labels = list(self._shards[node_id].labels)

    def push_ready(
        self,
        ready: WeightsReady,
        not_waited_for: Collection[str],
        sampled: Collection[str] | None = None,
    ) -> None:
        """Tell every connected participant the next round's weights are out: those the
        round's client sampling picked (``sampled``; None: everyone); the others idle."""
        if self.done is not None:
            return
        for session in self.connected():  # all expected: opened just now
            if sampled is not None and session.node_id not in sampled:
                self.mark_not_sampled(session.node_id)
            elif session.job_id == self._job_id:
                session.send(ready)
                session.state, session.training_round = "training", ready.round + 1
                if session.node_id in not_waited_for:  # it may still upload
                    session.state = "not_waited_for"
            else:  # (re)joined while no round was open: it has not had its train frame yet
                self.send_train(session.node_id)

    def send_done(self, done: Done) -> None:
        """Tell the connected participants the job is over (once): they stop training, and
        their progress frames still in flight no longer count (``training_round`` is None)."""
        if self.done is not None:
            return
        self.done = done
        for session in self.connected():
            session.send(done)
            session.state, session.training_round = "idle", None

    def idle_unless_sampled(self, sampled: Collection[str] | None) -> None:
        """A round opened with client sampling's pick (None: everyone): the others idle."""
        if sampled is None:
            return
        for session in self.connected():
            if session.node_id not in sampled:
                self.mark_not_sampled(session.node_id)

    def mark_not_sampled(self, node_id: str) -> None:
        """Not picked this round: it trains nothing (its progress frames do not count)."""
        session = self._registry.nodes.get(node_id)
        if session is not None and session.connected:
            session.state, session.training_round = "not_sampled", None

    def mark_straggler(self, node_id: str) -> None:
        session = self._registry.nodes.get(node_id)
        if session is not None and session.connected:
            session.state = "straggler"

    def mark_uploaded(self, node_id: str, val_accuracy: float | None) -> None:
        session = self._registry.nodes.get(node_id)
        if session is not None:
            session.state, session.val_accuracy = "waiting", val_accuracy
