"""The round state machine: closing, deadlines, stragglers, resuming, invariants."""

from __future__ import annotations

import math

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from server.core.rounds import DeadlineExtended, JobFailed, RoundClosed, RoundMachine, Verdict

NODES = ("a", "b", "c")
SHARD = 100  # the most samples each of NODES may claim


def _machine(**kwargs: object) -> RoundMachine:
    args: dict[str, object] = {
        "total_rounds": 3,
        "participants": dict.fromkeys(NODES, SHARD),
        "deadline_s": 10.0,
    }
    args.update(kwargs)
    return RoundMachine(**args)  # type: ignore[arg-type]


def test_starts_closed_before_round_one() -> None:
    m = _machine()
    assert (m.round, m.last_closed, m.is_open, m.finished, m.failed) == (0, 0, False, False, False)
    assert m.deadline is None
    assert m.participants == frozenset(NODES)
    assert m.check("a", 1, 1) is Verdict.EARLY


def test_all_in_closes() -> None:
    m = _machine()
    assert m.open(NODES, now=100.0) == 1
    assert m.is_open and m.deadline == 110.0 and m.expected == frozenset(NODES)
    assert m.record("b", 1, samples=20, now=101.0) is None
    assert m.record("a", 1, samples=10, now=102.0) is None
    assert dict(m.received) == {"a": 10, "b": 20}
    closed = m.record("c", 1, samples=30, now=103.0)
    assert closed == RoundClosed(
        round=1,
        contributors=("a", "b", "c"),
        samples=60,
        partial=False,
        missing=(),
        opened_at=100.0,
        closed_at=103.0,
    )
    assert not m.is_open and m.round == 1 and m.last_closed == 1 and m.deadline is None
    assert m.expire(1000.0) is None


def test_deadline_closes_partial() -> None:
    m = _machine()
    m.open(NODES, now=0.0)
    m.record("a", 1, samples=5, now=1.0)
    assert m.expire(9.999) is None
    closed = m.expire(10.0)
    assert isinstance(closed, RoundClosed)
    assert closed.partial and closed.contributors == ("a",) and closed.missing == ("b", "c")
    assert closed.samples == 5 and closed.closed_at == 10.0
    assert m.last_closed == 1 and not m.is_open


def test_late_upload_is_refused_and_straggler_moves_on() -> None:
    m = _machine()
    m.open(NODES, now=0.0)
    m.record("a", 1, samples=5, now=1.0)
    m.expire(10.0)
    assert m.check("b", 1, 1) is Verdict.LATE
    with pytest.raises(ValueError, match="late"):
        m.record("b", 1, samples=5, now=11.0)
    m.open(NODES, now=12.0)
    assert m.check("b", 1, 1) is Verdict.LATE
    assert m.check("b", 2, 1) is Verdict.ACCEPTED


@pytest.mark.parametrize("samples", [1, 5, SHARD])
def test_duplicate_upload(samples: int) -> None:
    """The machine is the one record of who is in: the strategy folds what passes here."""
    m = _machine()
    m.open(NODES, now=0.0)
    m.record("a", 1, samples=5, now=1.0)
    assert m.check("a", 1, samples) is Verdict.DUPLICATE
    with pytest.raises(ValueError, match="duplicate"):
        m.record("a", 1, samples=samples, now=2.0)
    assert dict(m.received) == {"a": 5}


def test_early_upload() -> None:
    m = _machine()
    m.open(NODES, now=0.0)
    assert m.check("a", 2, 1) is Verdict.EARLY
    with pytest.raises(ValueError, match="early"):
        m.record("a", 2, samples=1, now=1.0)


def test_not_participant() -> None:
    m = _machine()
    m.open(NODES, now=0.0)
    assert m.check("zed", 1, 1) is Verdict.NOT_PARTICIPANT
    with pytest.raises(ValueError):
        m.record("zed", 1, samples=1, now=1.0)


def test_checks_change_nothing() -> None:
    m = _machine()
    m.open(NODES, now=0.0)
    for node, r in [("a", 0), ("a", 1), ("a", 2), ("zed", 1)]:
        m.check(node, r, 1)
    assert m.received == {} and m.is_open and m.round == 1


def test_no_uploads_extends_then_fails() -> None:
    m = _machine(max_empty_deadlines=3)
    m.open(NODES, now=0.0)
    assert m.expire(10.0) == DeadlineExtended(round=1, deadline=20.0, empty_deadlines=1)
    assert m.expire(19.0) is None
    # A late timer tick: the new deadline counts from now, so it is in the future.
    assert m.expire(25.0) == DeadlineExtended(round=1, deadline=35.0, empty_deadlines=2)
    failed = m.expire(35.0)
    assert isinstance(failed, JobFailed) and failed.round == 1 and "no uploads" in failed.reason
    assert not m.is_open and m.failed and not m.finished and m.deadline is None
    assert m.expire(100.0) is None
    assert m.check("a", 1, 1) is Verdict.LATE
    with pytest.raises(ValueError, match="failed"):
        m.open(NODES, now=101.0)


def test_upload_after_an_empty_deadline_still_closes() -> None:
    m = _machine(max_empty_deadlines=2)
    m.open(NODES, now=0.0)
    assert isinstance(m.expire(10.0), DeadlineExtended)
    m.record("c", 1, samples=3, now=12.0)
    closed = m.expire(20.0)
    assert isinstance(closed, RoundClosed) and closed.contributors == ("c",)
    # The empty count is per round: the next round gets its full allowance again.
    m.open(NODES, now=21.0)
    assert isinstance(m.expire(31.0), DeadlineExtended)


def test_one_empty_deadline_allowed_fails_at_once() -> None:
    m = _machine(max_empty_deadlines=1)
    m.open(NODES, now=0.0)
    assert isinstance(m.expire(10.0), JobFailed)


def test_finishes_after_total_rounds() -> None:
    m = _machine(total_rounds=2)
    for r in (1, 2):
        assert m.open(NODES, now=float(r)) == r
        for node in NODES:
            m.record(node, r, samples=1, now=float(r))
    assert m.finished and m.round == 2 and not m.is_open
    assert m.check("a", 2, 1) is Verdict.FINISHED
    assert m.check("a", 3, 1) is Verdict.FINISHED
    with pytest.raises(ValueError, match="done"):
        m.open(NODES, now=10.0)


def test_resume_with_last_closed() -> None:
    m = _machine(total_rounds=5, last_closed=3)
    assert m.round == 3 and m.last_closed == 3 and not m.finished
    assert m.check("a", 3, 1) is Verdict.LATE
    assert m.open(NODES, now=0.0) == 4
    assert _machine(total_rounds=5, last_closed=5).finished


def test_a_node_outside_the_participants_is_never_expected_nor_accepted() -> None:
    m = _machine()
    m.open(["a", "b", "newcomer"], now=0.0)
    assert m.expected == frozenset({"a", "b"})  # not a participant: not expected
    assert m.check("newcomer", 1, 1) is Verdict.NOT_PARTICIPANT
    with pytest.raises(ValueError):
        m.record("newcomer", 1, samples=4, now=1.0)


def test_unexpected_participant_accepted() -> None:
    m = _machine()
    m.open(["a"], now=0.0)
    assert m.record("c", 1, samples=2, now=1.0) is None  # e.g. rejoined after the open
    closed = m.record("a", 1, samples=2, now=2.0)
    assert closed is not None and closed.contributors == ("a", "c")


def test_nobody_expected_closes_on_first_upload() -> None:
    m = _machine()
    m.open([], now=0.0)
    closed = m.record("b", 1, samples=1, now=1.0)
    assert closed is not None and closed.contributors == ("b",) and not closed.partial


def test_open_while_open_refused() -> None:
    m = _machine()
    m.open(NODES, now=0.0)
    with pytest.raises(ValueError, match="still open"):
        m.open(NODES, now=1.0)


@pytest.mark.parametrize("samples", [-1, 0, SHARD + 1, 2**31])
def test_sample_counts_outside_the_shard_are_refused(samples: int) -> None:
    m = _machine(participants={"a": SHARD, "b": 7})
    m.open(["a", "b"], now=0.0)
    assert m.check("a", 1, samples) is Verdict.BAD_SAMPLES
    with pytest.raises(ValueError, match="samples"):
        m.record("a", 1, samples=samples, now=1.0)
    assert m.received == {}
    assert m.check("a", 1, 1) is Verdict.ACCEPTED
    assert m.max_samples("b") == 7
    assert m.check("b", 1, 8) is Verdict.BAD_SAMPLES  # each node by its own shard
    assert m.record("b", 1, samples=7, now=2.0) is None
    assert m.record("a", 1, samples=SHARD, now=3.0) is not None  # both bounds are inclusive


def test_the_round_verdicts_come_before_the_sample_count() -> None:
    m = _machine()
    m.open(NODES, now=0.0)
    m.record("a", 1, samples=5, now=1.0)
    assert m.check("a", 1, 0) is Verdict.DUPLICATE
    assert m.check("b", 2, 0) is Verdict.EARLY
    assert m.check("zed", 1, 0) is Verdict.NOT_PARTICIPANT


@pytest.mark.parametrize(
    "kwargs",
    [
        {"total_rounds": 0},
        {"last_closed": -1},
        {"last_closed": 4},
        {"deadline_s": 0.0},
        {"deadline_s": -1.0},
        {"deadline_s": math.inf},
        {"deadline_s": math.nan},
        {"max_empty_deadlines": 0},
    ],
)
def test_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _machine(**kwargs)


# --- randomized sequences ------------------------------------------------------------------

ALL_NODES = ("a", "b", "c", "d", "e")


class RoundsInvariants(RuleBasedStateMachine):
    """Random opens, uploads, joins and clock ticks; the bookkeeping must stay sane."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 4
        self.m = RoundMachine(
            total_rounds=self.total,
            participants={"a": 30, "b": 40},
            deadline_s=5.0,
            max_empty_deadlines=2,
            max_missed_rounds=1,
        )
        self.now = 0.0
        self.last_round = self.m.round
        self.closed: list[RoundClosed] = []
        self.ended = False

    @precondition(lambda self: not self.m.is_open and not self.m.finished and not self.m.failed)
    @rule(expected=st.sets(st.sampled_from(ALL_NODES)))
    def open_round(self, expected: set[str]) -> None:
        before = self.m.last_closed
        assert self.m.open(expected, self.now) == before + 1
        assert self.m.expected <= self.m.participants

    @rule(dt=st.floats(min_value=0.0, max_value=8.0))
    def tick(self, dt: float) -> None:
        self.now += dt
        event = self.m.expire(self.now)
        if isinstance(event, RoundClosed):
            self.closed.append(event)
        elif isinstance(event, JobFailed):
            assert not self.m.is_open and self.m.failed
        elif isinstance(event, DeadlineExtended):
            assert event.deadline > self.now and self.m.is_open

    @rule(node=st.sampled_from(ALL_NODES), offset=st.integers(-2, 2), samples=st.integers(0, 50))
    def upload(self, node: str, offset: int, samples: int) -> None:
        r = self.m.round + offset
        verdict = self.m.check(node, r, samples)
        if verdict is not Verdict.ACCEPTED:
            with pytest.raises(ValueError):
                self.m.record(node, r, samples, self.now)
            return
        assert self.m.is_open and r == self.m.round
        event = self.m.record(node, r, samples, self.now)
        if event is not None:  # partial only when a node left mid-round (it is then missing)
            assert node in event.contributors
            self.closed.append(event)

    @rule(node=st.sampled_from(ALL_NODES))
    def leave(self, node: str) -> None:
        event = self.m.withdraw(node, self.now)
        if self.m.is_open:
            assert node not in self.m.expected or node in self.m.received
        if event is not None:
            assert node in event.missing and event.contributors
            self.closed.append(event)

    @invariant()
    def sane(self) -> None:
        m = self.m
        assert m.last_closed <= m.round <= m.last_closed + 1
        assert m.round >= self.last_round  # never goes backwards
        self.last_round = m.round
        assert [c.round for c in self.closed] == list(range(1, len(self.closed) + 1))  # no skips
        assert all(len(c.contributors) >= 1 for c in self.closed)
        assert all(c.partial == bool(c.missing) for c in self.closed)
        assert all(not set(c.missing) & set(c.contributors) for c in self.closed)
        assert len(self.closed) == m.last_closed <= self.total
        assert m.finished == (m.last_closed == self.total)
        assert m.is_open == (m.deadline is not None)
        if m.is_open:
            assert m.round == m.last_closed + 1
            assert m.received.keys() <= m.participants
            assert all(1 <= n <= m.max_samples(node) for node, n in m.received.items())
            assert not m.expected & (m.not_waited_for - m.received.keys())


TestRoundsInvariants = RoundsInvariants.TestCase
TestRoundsInvariants.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# -- nodes that leave, and nodes that stay silent -------------------------------------------


def test_a_node_that_leaves_mid_round_is_not_waited_for() -> None:
    m = _machine()
    m.open(NODES, now=0.0)
    assert m.record("a", 1, 10, now=1.0) is None
    assert m.record("b", 1, 10, now=2.0) is None
    closed = m.withdraw("c", now=3.0)  # everybody left is in: close now, not at the deadline
    assert isinstance(closed, RoundClosed)
    assert (closed.closed_at, closed.contributors, closed.missing) == (3.0, ("a", "b"), ("c",))
    assert closed.partial


def test_a_node_that_leaves_before_anyone_uploads_closes_nothing_yet() -> None:
    m = _machine()
    m.open(NODES, now=0.0)
    assert m.withdraw("c", now=1.0) is None
    assert m.expected == frozenset({"a", "b"})
    assert m.record("a", 1, 10, now=2.0) is None
    closed = m.record("b", 1, 10, now=3.0)
    assert closed is not None and closed.missing == ("c",)


def test_withdrawing_an_unexpected_or_finished_node_changes_nothing() -> None:
    m = _machine()
    m.open(["a", "b"], now=0.0)
    assert m.record("a", 1, 10, now=1.0) is None
    assert m.withdraw("a", now=2.0) is None  # already in: it counts
    assert m.withdraw("c", now=2.0) is None  # never expected
    assert m.withdraw("zz", now=2.0) is None
    assert m.expected == frozenset({"a", "b"})


def test_a_withdrawn_node_may_still_upload_if_it_comes_back() -> None:
    m = _machine()
    m.open(NODES, now=0.0)
    m.withdraw("c", now=1.0)
    assert m.check("c", 1, 1) is Verdict.ACCEPTED
    assert m.record("c", 1, 10, now=2.0) is None  # a and b are still expected
    m.record("a", 1, 10, now=3.0)
    closed = m.record("b", 1, 10, now=4.0)
    assert closed is not None and not closed.partial and closed.contributors == NODES


def test_a_silent_node_is_not_waited_for_after_k_missed_rounds_and_can_come_back() -> None:
    m = _machine(total_rounds=6, max_missed_rounds=2)
    for round_ in (1, 2):
        m.open(NODES, now=10.0 * round_)
        assert m.expected == frozenset(NODES)
        m.record("a", round_, 1, now=10.0 * round_)
        m.record("b", round_, 1, now=10.0 * round_)
        closed = m.expire(now=10.0 * round_ + 10.0)  # "c" costs the deadline
        assert isinstance(closed, RoundClosed) and closed.missing == ("c",)
    assert m.not_waited_for == frozenset({"c"})
    m.open(NODES, now=100.0)
    assert m.expected == frozenset({"a", "b"})
    m.record("a", 3, 1, now=100.0)
    closed = m.record("b", 3, 1, now=101.0)  # closes without waiting for "c"
    assert closed is not None and closed.missing == () and not closed.partial
    m.open(NODES, now=110.0)
    assert m.record("c", 4, 1, now=110.0) is None  # it uploads of its own accord: back
    assert m.not_waited_for == frozenset()
    m.record("a", 4, 1, now=111.0)
    m.record("b", 4, 1, now=112.0)
    m.open(NODES, now=120.0)
    assert m.expected == frozenset(NODES)


def test_zero_missed_rounds_means_always_wait_and_negative_is_refused() -> None:
    m = _machine(total_rounds=5, max_missed_rounds=0)
    for round_ in range(1, 4):
        m.open(NODES, now=10.0 * round_)
        m.record("a", round_, 1, now=10.0 * round_)
        m.expire(now=10.0 * round_ + 10.0)
    assert m.not_waited_for == frozenset()
    with pytest.raises(ValueError, match="max_missed_rounds"):
        _machine(max_missed_rounds=-1)


def test_a_sampled_round_takes_uploads_only_from_its_pick() -> None:
    machine = RoundMachine(total_rounds=2, participants={"a": 10, "b": 10, "c": 10}, deadline_s=5)
    machine.open(["a", "b"], now=0.0, eligible=["a", "b"])
    assert machine.sampled == frozenset({"a", "b"})
    assert machine.check("c", 1, 5) is Verdict.NOT_SAMPLED
    assert machine.check("c", 2, 5) is Verdict.EARLY  # the round order comes first
    assert machine.record("a", 1, 5, now=1.0) is None
    closed = machine.record("b", 1, 5, now=2.0)
    assert closed is not None and not closed.partial  # c was never expected: not missing
    machine.open(["a", "b", "c"], now=3.0)
    assert machine.sampled is None and machine.check("c", 2, 5) is Verdict.ACCEPTED
