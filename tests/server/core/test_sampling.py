"""Client sampling: how many nodes a round trains, and which, as a function of the seed, the
job, the round and the candidates alone."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.core.sampling import (
    EVERYONE,
    Sampling,
    SamplingError,
    parse_sampling,
    sample_nodes,
    score,
)

SETTINGS = settings(max_examples=200, deadline=None)
node_ids = st.sets(st.text(alphabet="abcdef0123456789-", min_size=1, max_size=8), max_size=60)
fractions = st.floats(min_value=1e-3, max_value=1.0)


@SETTINGS
@given(node_ids, fractions, st.integers(1, 80), st.integers(0, 2**31), st.integers(1, 500))
def test_a_sample_is_a_sorted_subset_of_the_asked_size_and_the_same_every_time(
    pool: set[str], fraction: float, min_nodes: int, seed: int, round_: int
) -> None:
    sampling = Sampling(fraction=fraction, min_nodes=min_nodes)
    picked = sample_nodes(pool, sampling, seed=seed, job_id="run-1", round_=round_)
    assert picked == sorted(picked) and set(picked) <= pool
    want = min(len(pool), max(min_nodes, math.ceil(fraction * len(pool) - 1e-9)))
    assert len(picked) == want == sampling.size(len(pool))
    again = sample_nodes(
        sorted(pool, reverse=True), sampling, seed=seed, job_id="run-1", round_=round_
    )
    assert again == picked  # the candidates' order does not matter, only the set


@SETTINGS
@given(node_ids, fractions, st.integers(0, 2**31), st.integers(1, 500))
def test_the_sample_is_the_candidates_with_the_lowest_scores(
    pool: set[str], fraction: float, seed: int, round_: int
) -> None:
    sampling = Sampling(fraction=fraction)
    picked = sample_nodes(pool, sampling, seed=seed, job_id="job", round_=round_)
    ranked = sorted(pool, key=lambda n: score(seed, "job", round_, n))
    assert set(picked) == set(ranked[: len(picked)])


@SETTINGS
@given(node_ids.filter(lambda p: len(p) >= 4), st.integers(0, 2**31), st.integers(1, 50))
def test_a_node_that_leaves_unpicked_changes_nobody_elses_place(
    pool: set[str], seed: int, round_: int
) -> None:
    sampling = Sampling(fraction=0.5)
    picked = sample_nodes(pool, sampling, seed=seed, job_id="j", round_=round_)
    unpicked = sorted(pool - set(picked))
    fewer = pool - {unpicked[0]}
    if sampling.size(len(fewer)) == len(picked):  # the count did not move
        assert sample_nodes(fewer, sampling, seed=seed, job_id="j", round_=round_) == picked


def test_rounds_seeds_and_jobs_draw_different_samples_and_every_node_gets_its_share() -> None:
    pool = [f"node-{i}" for i in range(100)]
    sampling = Sampling(fraction=0.1)
    draws = [sample_nodes(pool, sampling, seed=0, job_id="run-a", round_=r) for r in range(1, 501)]
    assert all(len(d) == 10 for d in draws)
    assert len({tuple(d) for d in draws}) == 500  # no two rounds alike
    counts = Counter(n for d in draws for n in d)
    assert set(counts) == set(pool)
    # 500 rounds x 10 of 100: each node expects 50 picks (binomial, sd ~6.7).
    assert min(counts.values()) >= 20 and max(counts.values()) <= 80, counts.most_common(3)
    other_seed = sample_nodes(pool, sampling, seed=1, job_id="run-a", round_=1)
    other_job = sample_nodes(pool, sampling, seed=0, job_id="run-b", round_=1)
    assert other_seed != draws[0] and other_job != draws[0]


def test_everyone_is_todays_behaviour_and_min_nodes_lifts_a_small_fraction() -> None:
    pool = ["c", "a", "b"]
    assert sample_nodes(pool, EVERYONE, seed=0, job_id="j", round_=1) == ["a", "b", "c"]
    assert EVERYONE.everyone and not Sampling(fraction=0.5).everyone
    assert Sampling(fraction=0.01).size(5) == 1  # rounded up, never nobody
    assert Sampling(fraction=0.1, min_nodes=3).size(100) == 10
    assert Sampling(fraction=0.1, min_nodes=30).size(100) == 30
    assert Sampling(fraction=0.1, min_nodes=30).size(7) == 7  # fewer than min: all of them
    assert Sampling(fraction=0.1).size(0) == 0
    assert Sampling(fraction=0.3).size(10) == 3  # 0.3 * 10 is 3.0000000000000004


@pytest.mark.parametrize(
    ("fraction", "min_nodes", "field"),
    [
        (0, None, "fraction"),
        ("1.5", None, "fraction"),
        ("abc", None, "fraction"),
        ("nan", None, "fraction"),
        (True, None, "fraction"),
        (None, 0, "min_nodes"),
        (None, "2.5", "min_nodes"),
        (None, 2.5, "min_nodes"),
        (None, "x", "min_nodes"),
        (None, 10**9, "min_nodes"),
        (None, False, "min_nodes"),
    ],
)
def test_bad_settings_name_their_field(fraction: object, min_nodes: object, field: str) -> None:
    with pytest.raises(SamplingError, match=field):
        parse_sampling(fraction, min_nodes)


def test_parse_takes_query_strings_json_numbers_and_defaults() -> None:
    assert parse_sampling("0.1", "3") == Sampling(fraction=0.1, min_nodes=3)
    assert parse_sampling(0.25, 2) == Sampling(fraction=0.25, min_nodes=2)
    default = Sampling(fraction=0.5, min_nodes=4)
    assert parse_sampling(None, None, default) == default
    assert parse_sampling(None, 1, default) == Sampling(fraction=0.5, min_nodes=1)
    assert Sampling(fraction=0.1, min_nodes=2).view() == {"fraction": 0.1, "min_nodes": 2}
