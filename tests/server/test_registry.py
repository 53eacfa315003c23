"""The node registry's bounds and the per-socket frame budget: plain objects, time passed in."""

from __future__ import annotations

import pytest

from node.shared.protocol import Hello
from server.registry import FrameBudget, NodeRegistry


def hello(node_id: str) -> Hello:
    return Hello(
        node_id=node_id, name=node_id, capacity=1.0, device="cpu", version="t", secret="s" * 43
    )


def test_the_registry_keeps_connected_nodes_and_only_the_newest_offline() -> None:
    registry = NodeRegistry(max_offline=3)
    sessions = [registry.join(hello(f"n{i}"), now=float(i))[0] for i in range(10)]
    for session in sessions[:8]:  # n0..n7 leave in that order; n8, n9 stay
        assert registry.leave(session)
        registry.prune_offline(keep=())
    assert set(registry.nodes) == {"n5", "n6", "n7", "n8", "n9"}
    assert [s.node_id for s in registry.offline_newest_first()] == ["n7", "n6", "n5"]
    assert {s.node_id for s in registry.connected()} == {"n8", "n9"}


def test_pruning_spares_the_running_jobs_participants() -> None:
    registry = NodeRegistry(max_offline=1)
    sessions = [registry.join(hello(f"n{i}"), now=float(i))[0] for i in range(5)]
    for session in sessions:
        registry.leave(session)
        registry.prune_offline(keep={"n0", "n1"})
    assert set(registry.nodes) == {"n0", "n1", "n4"}


def test_a_rejoined_node_is_no_longer_offline() -> None:
    registry = NodeRegistry(max_offline=1)
    first, _ = registry.join(hello("a"), 0.0)
    registry.leave(first)
    again, replaced = registry.join(hello("a"), 1.0)
    assert replaced is None
    other, _ = registry.join(hello("b"), 2.0)
    registry.leave(other)
    assert registry.prune_offline(keep=()) == []
    assert set(registry.nodes) == {"a", "b"} and registry.nodes["a"] is again


def test_the_frame_budget_allows_its_burst_then_its_rate() -> None:
    budget = FrameBudget(rate=10, now=0.0)
    assert all(budget.allow(0.0) for _ in range(20))  # a burst of twice the rate
    assert not budget.allow(0.0)
    assert budget.allow(0.1)  # 0.1 s buys one frame at 10/s
    assert not budget.allow(0.1)
    assert not budget.flooding


def test_an_honest_pace_never_drops() -> None:
    budget = FrameBudget(rate=20, now=0.0)
    assert all(budget.allow(i * 0.25) for i in range(10_000))  # one every 0.25 s, for hours


@pytest.mark.parametrize("rate", [1, 20, 500])
def test_a_flood_is_flagged_once_it_drops_enough_in_a_window(rate: float) -> None:
    budget = FrameBudget(rate=rate, now=0.0)
    frames = 0
    while not budget.flooding:
        budget.allow(0.0)
        frames += 1
    assert frames == int(2 * rate) + int(10 * rate) + 1  # the burst, then over the limit


def test_drops_spread_over_windows_are_not_a_flood() -> None:
    budget = FrameBudget(rate=1, now=0.0)
    now = 0.0
    for _ in range(20):  # 20 windows, each with a few drops: over the rate, not a flood
        now += 11.0
        for _ in range(5):
            budget.allow(now)
    assert not budget.flooding


def test_a_nodes_row_shows_its_latest_evaluation_in_its_current_job_only() -> None:
    registry = NodeRegistry()
    session, _ = registry.join(hello("a"), 0.0)
    assert session.view()["evaluation"] is None
    session.job_id = "job-1"
    session.show_evaluation(0, 200, 50, 2.1)
    session.show_evaluation(1, 200, 150, None)  # a loss that was not finite
    assert session.view()["evaluation"] == {
        "round": 1,
        "accuracy": 0.75,
        "loss": None,
        "samples": 200,
    }
    session.job_id = "job-2"  # a new job: the old job's reading is not this one's
    assert session.view()["evaluation"] is None
    session.show_evaluation(0, 40, 4, 2.3)
    assert session.view()["evaluation"] == {"round": 0, "accuracy": 0.1, "loss": 2.3, "samples": 40}
