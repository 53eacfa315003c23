"""The round state machine of one training job: who is expected, who is in, when it closes.

Pure bookkeeping: no clock (every call that depends on time takes ``now``), no sockets and
no tensors. The caller asks :meth:`RoundMachine.check` before it reads an upload's body
and again before it folds it (the machine is the one record of who is in, and the one
bound on the sample counts uploads claim), and acts on the values that
:meth:`RoundMachine.record` and :meth:`RoundMachine.expire` return (publish the aggregate,
push a new deadline, fail the job). Keeping the decisions here means every straggler,
duplicate and empty-deadline case is tested without a server.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType


class Verdict(StrEnum):
    """What the machine says about an upload for ``(node, round)``; values go on the wire."""

    ACCEPTED = "accepted"
    LATE = "late"
    DUPLICATE = "duplicate"
    EARLY = "early"
    NOT_PARTICIPANT = "not_participant"
    NOT_SAMPLED = "not_sampled"  # a participant the round's client sampling did not pick
    BAD_SAMPLES = "bad_samples"
    FINISHED = "finished"


@dataclass(frozen=True, slots=True)
class RoundClosed:
    """A round is over: aggregate the contributors' updates and publish the next weights.

    Attributes:
        round: The round that closed.
        contributors: Nodes whose upload was accepted, sorted.
        samples: Total samples the contributors reported.
        partial: True when the deadline closed it with some expected nodes missing.
        missing: Expected nodes that did not upload, sorted (the stragglers).
        opened_at: When the round opened.
        closed_at: When it closed.
    """

    round: int
    contributors: tuple[str, ...]
    samples: int
    partial: bool
    missing: tuple[str, ...]
    opened_at: float
    closed_at: float


@dataclass(frozen=True, slots=True)
class DeadlineExtended:
    """The deadline passed with no upload at all, so the round waits ``deadline_s`` more."""

    round: int
    deadline: float
    empty_deadlines: int


@dataclass(frozen=True, slots=True)
class JobFailed:
    """Too many consecutive empty deadlines: nobody is training, so the job stops."""

    round: int
    reason: str


class RoundMachine:
    """Rounds ``last_closed + 1 .. total_rounds`` of one job, one open at a time.

    The machine only changes through :meth:`open`, :meth:`record`, :meth:`expire` and
    :meth:`withdraw`; everything else is a read-only view.
    """

    __slots__ = (
        "_deadline",
        "_deadline_s",
        "_eligible",
        "_empty",
        "_expected",
        "_failed",
        "_last_closed",
        "_max_empty",
        "_max_missed",
        "_missed",
        "_open",
        "_opened_at",
        "_opened_expected",
        "_participants",
        "_received",
        "_round",
        "_total_rounds",
    )

    def __init__(
        self,
        *,
        total_rounds: int,
        participants: Mapping[str, int],
        deadline_s: float,
        max_empty_deadlines: int = 3,
        max_missed_rounds: int = 0,
        last_closed: int = 0,
    ) -> None:
        """Start before round ``last_closed + 1``; ``last_closed > 0`` resumes a job.
        ``participants`` maps each node to the most samples its upload may claim (its shard).

        ``max_missed_rounds`` (0: never) is how many rounds in a row a participant may miss
        before rounds stop waiting for it: a node that is connected but silent would
        otherwise cost a whole deadline every round. It is still a participant, so an
        upload of its own brings it back.

        Raises:
            ValueError: ``total_rounds < 1``, ``last_closed`` outside ``[0, total_rounds]``,
                ``deadline_s`` not finite and positive, ``max_empty_deadlines < 1`` or
                ``max_missed_rounds < 0``.
        """
        if total_rounds < 1:
            raise ValueError(f"total_rounds must be >= 1, got {total_rounds}")
        if not 0 <= last_closed <= total_rounds:
            raise ValueError(f"last_closed must be in [0, {total_rounds}], got {last_closed}")
        if not (math.isfinite(deadline_s) and deadline_s > 0):
            raise ValueError(f"deadline_s must be finite and > 0, got {deadline_s}")
        if max_empty_deadlines < 1:
            raise ValueError(f"max_empty_deadlines must be >= 1, got {max_empty_deadlines}")
        if max_missed_rounds < 0:
            raise ValueError(f"max_missed_rounds must be >= 0, got {max_missed_rounds}")
        self._total_rounds = total_rounds
        self._participants: dict[str, int] = dict(participants)
        self._deadline_s = deadline_s
        self._max_empty = max_empty_deadlines
        self._max_missed = max_missed_rounds
        self._missed: dict[str, int] = {}
        self._last_closed = last_closed
        self._round = last_closed
        self._open = False
        self._failed = False
        self._deadline: float | None = None
        self._opened_at = 0.0
        self._empty = 0
        self._expected: frozenset[str] = frozenset()
        self._opened_expected: frozenset[str] = frozenset()
        self._eligible: frozenset[str] | None = None  # None: every participant may upload
        self._received: dict[str, int] = {}

    @property
    def round(self) -> int:
        """The open round, or the last one opened when none is open (the last closed one,
        or the failed one after :class:`JobFailed`)."""
        return self._round

    @property
    def opened_at(self) -> float:
        """When the current (or last) round opened."""
        return self._opened_at

    @property
    def deadline(self) -> float | None:
        """When the open round times out, or None when none is open."""
        return self._deadline

    @property
    def total_rounds(self) -> int:
        return self._total_rounds

    @property
    def last_closed(self) -> int:
        """The last round that closed (what a checkpoint holds and a restart resumes from)."""
        return self._last_closed

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def finished(self) -> bool:
        return self._last_closed == self._total_rounds

    @property
    def failed(self) -> bool:
        """True after :class:`JobFailed`; a failed machine opens no more rounds."""
        return self._failed

    @property
    def participants(self) -> frozenset[str]:
        return frozenset(self._participants)

    def max_samples(self, node_id: str) -> int:
        """The most samples an upload of participant ``node_id`` may claim."""
        return self._participants[node_id]

    @property
    def expected(self) -> frozenset[str]:
        """Nodes the current (or last) round still waits for, or waited for."""
        return self._expected

    @property
    def sampled(self) -> frozenset[str] | None:
        """The participants the current (or last) round may take uploads from, when client
        sampling picked them; None when it takes everyone's."""
        return self._eligible

    @property
    def not_waited_for(self) -> frozenset[str]:
        """Participants that missed ``max_missed_rounds`` rounds in a row: rounds open
        without expecting them until they upload again."""
        if not self._max_missed:
            return frozenset()
        return frozenset(n for n, m in self._missed.items() if m >= self._max_missed)

    @property
    def received(self) -> Mapping[str, int]:
        """Node -> reported samples for the current (or last) round; a read-only view."""
        return MappingProxyType(self._received)

    def open(
        self, expected: Iterable[str], now: float, eligible: Iterable[str] | None = None
    ) -> int:
        """Open the next round, expecting those of ``expected`` that are participants.
        ``eligible`` (client sampling's pick) are the only participants whose uploads the
        round takes; None: every participant's.

        With nobody expected, the first accepted upload closes the round (everybody
        expected is then in); with no upload at all the deadline rules apply as usual.

        Returns:
            The number of the round just opened.

        Raises:
            ValueError: A round is already open, or the job has finished or failed.
        """
        if self._open:
            raise ValueError(f"round {self._round} is still open")
        if self.finished:
            raise ValueError(f"all {self._total_rounds} rounds are done")
        if self._failed:
            raise ValueError(f"the job failed in round {self._round}")
        self._round = self._last_closed + 1
        self._open = True
        self._expected = (frozenset(expected) & self._participants.keys()) - self.not_waited_for
        self._opened_expected = self._expected
        self._eligible = (
            None if eligible is None else frozenset(eligible) & self._participants.keys()
        )
        self._received = {}
        self._opened_at = now
        self._deadline = now + self._deadline_s
        self._empty = 0
        return self._round

    def check(self, node_id: str, round: int, samples: int) -> Verdict:
        """Whether an upload from ``node_id`` for ``round`` claiming ``samples`` would be
        accepted (no state change)."""
        if self.finished:
            return Verdict.FINISHED
        if node_id not in self._participants:
            return Verdict.NOT_PARTICIPANT
        if round < self._round or (round == self._round and not self._open):
            return Verdict.LATE
        if round > self._round:
            return Verdict.EARLY
        if self._eligible is not None and node_id not in self._eligible:
            return Verdict.NOT_SAMPLED
        if node_id in self._received:
            return Verdict.DUPLICATE
        if not 1 <= samples <= self._participants[node_id]:
            return Verdict.BAD_SAMPLES
        return Verdict.ACCEPTED

    def record(self, node_id: str, round: int, samples: int, now: float) -> RoundClosed | None:
        """Note an accepted upload; close the round once every expected node is in.

        Returns:
            The :class:`RoundClosed` (``partial=False``) when this upload completed the
            round, else None.

        Raises:
            ValueError: :meth:`check` does not say ACCEPTED.
        """
        verdict = self.check(node_id, round, samples)
        if verdict is not Verdict.ACCEPTED:
            raise ValueError(f"upload from {node_id!r} for round {round} is {verdict}")
        self._received[node_id] = samples
        self._missed.pop(node_id, None)  # it is back
        if self._expected <= self._received.keys():
            return self._close(now)
        return None

    def withdraw(self, node_id: str, now: float) -> RoundClosed | None:
        """Stop waiting for ``node_id`` in the open round: it has gone (its socket closed).

        It still counts as missing the round. When everybody left is in (and someone is),
        the round closes at once instead of waiting out the deadline.

        Returns:
            The :class:`RoundClosed` when this completed the round, else None.
        """
        if not self._open or node_id not in self._expected or node_id in self._received:
            return None
        self._expected = self._expected - {node_id}
        if self._received and self._expected <= self._received.keys():
            return self._close(now)
        return None

    def expire(self, now: float) -> RoundClosed | DeadlineExtended | JobFailed | None:
        """Apply the deadline at time ``now``.

        At or after the deadline a round with at least one upload closes with what it has
        (``partial`` when expected nodes are missing). A round with none waits
        ``deadline_s`` more from ``now``, until ``max_empty_deadlines`` consecutive empty
        deadlines have passed; then the job fails, since nobody is training.

        Returns:
            None before the deadline or when no round is open, else what happened.
        """
        if not self._open or self._deadline is None or now < self._deadline:
            return None
        if self._received:
            return self._close(now)
        self._empty += 1
        if self._empty >= self._max_empty:
            self._open = False
            self._failed = True
            self._deadline = None
            return JobFailed(
                round=self._round,
                reason=f"no uploads in round {self._round} after {self._empty} deadlines",
            )
        self._deadline = now + self._deadline_s
        return DeadlineExtended(
            round=self._round, deadline=self._deadline, empty_deadlines=self._empty
        )

    def _close(self, now: float) -> RoundClosed:
        missing = tuple(sorted(self._opened_expected - self._received.keys()))
        for node_id in missing:
            self._missed[node_id] = self._missed.get(node_id, 0) + 1
        closed = RoundClosed(
            round=self._round,
            contributors=tuple(sorted(self._received)),
            samples=sum(self._received.values()),
            partial=bool(missing),
            missing=missing,
            opened_at=self._opened_at,
            closed_at=now,
        )
        self._open = False
        self._last_closed = self._round
        self._deadline = None
        return closed
