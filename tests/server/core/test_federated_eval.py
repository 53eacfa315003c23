"""Federated evaluation: readings bounded by what each node announced, and their exact
weighted mean per round."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.core.federated_eval import FederatedEvaluations, Reading, summaries


def _evaluations() -> FederatedEvaluations:
    return FederatedEvaluations({"a": 100, "b": 50}, rounds=3)


def test_the_weighted_mean_is_the_summed_correct_over_the_summed_samples() -> None:
    evals = _evaluations()
    assert evals.add(Reading("a", 1, 100, 90, 0.3)) is None
    assert evals.add(Reading("b", 1, 50, 20, 1.2)) is None
    assert evals.summary(1) == {
        "round": 1,
        "accuracy": 110 / 150,
        "loss": (0.3 * 100 + 1.2 * 50) / 150,
        "samples": 150,
        "nodes": 2,
    }
    assert evals.summary(2) is None  # nobody has reported round 2's model


@pytest.mark.parametrize(
    ("reading", "why"),
    [
        (Reading("c", 1, 10, 5, 0.1), "not_participant"),
        (Reading("a", 4, 10, 5, 0.1), "bad_round"),
        (Reading("a", -1, 10, 5, 0.1), "bad_round"),
        (Reading("a", 1, 101, 101, 0.1), "bad_samples"),  # more than it announced
        (Reading("a", 1, 0, 0, 0.1), "bad_samples"),
        (Reading("a", 1, 10, 11, 0.1), "bad_samples"),
        (Reading("a", 1, 10, 5, -1.0), "bad_loss"),
        (Reading("a", 1, 10, 5, math.inf), "bad_loss"),
    ],
)
def test_a_reading_beyond_its_nodes_announcement_is_refused(reading: Reading, why: str) -> None:
    evals = _evaluations()
    assert evals.add(reading) == why
    assert evals.summaries() == []


def test_only_a_nodes_first_reading_of_a_round_counts() -> None:
    evals = _evaluations()
    assert evals.add(Reading("b", 0, 50, 5, 2.0)) is None
    assert evals.add(Reading("b", 0, 50, 50, 0.0)) == "duplicate"
    assert evals.summary(0) is not None and evals.summary(0)["accuracy"] == 0.1  # type: ignore[index]
    assert evals.has("b", 0) and not evals.has("a", 0)


def test_a_loss_that_was_not_finite_leaves_the_mean_loss_to_the_others() -> None:
    evals = _evaluations()
    evals.add(Reading("a", 2, 100, 10, None))
    evals.add(Reading("b", 2, 50, 10, 0.8))
    summary = evals.summary(2)
    assert summary is not None and summary["loss"] == 0.8 and summary["accuracy"] == 20 / 150
    evals_alone = _evaluations()
    evals_alone.add(Reading("a", 2, 100, 10, None))
    assert evals_alone.summary(2)["loss"] is None  # type: ignore[index]


def test_a_restarted_jobs_readings_count_as_before() -> None:
    evals = _evaluations()
    evals.extend([Reading("a", 0, 100, 10, 2.2), Reading("a", 0, 100, 99, 0.1)])
    assert evals.readings(0) == [Reading("a", 0, 100, 10, 2.2)]
    assert evals.summaries() == summaries(evals.readings(0))


@given(
    st.lists(
        st.tuples(st.integers(1, 1000), st.integers(0, 1000)).filter(lambda t: t[1] <= t[0]),
        min_size=1,
        max_size=20,
    )
)
def test_the_mean_equals_the_accuracy_on_the_union_of_the_test_splits(
    counts: list[tuple[int, int]],
) -> None:
    nodes = {f"n{i}": samples for i, (samples, _) in enumerate(counts)}
    evals = FederatedEvaluations(nodes, rounds=1)
    for i, (samples, correct) in enumerate(counts):
        assert evals.add(Reading(f"n{i}", 1, samples, correct, 0.5)) is None
    union_correct = sum(c for _, c in counts)
    union_samples = sum(n for n, _ in counts)
    summary = evals.summary(1)
    assert summary is not None
    assert summary["accuracy"] == union_correct / union_samples
    assert summary["nodes"] == len(counts) and summary["samples"] == union_samples
