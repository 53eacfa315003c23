"""Shard plans: proportional, overlapping, covering, deterministic."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.core.shard_plan import (
    CAPACITY_RANGE,
    MAX_SEED,
    Shard,
    bounded_capacities,
    plan_shards,
    proportional_sizes,
)

SETTINGS = settings(max_examples=200, deadline=None)

node_ids = st.text(alphabet="abcdefghij0123456789-", min_size=1, max_size=6)
capacity = st.floats(min_value=1e-3, max_value=1e4, allow_nan=False, allow_infinity=False)
capacities = st.dictionaries(node_ids, capacity, min_size=1, max_size=8)
overlaps = st.floats(min_value=0.0, max_value=1.0)


def _exact_share(num_samples: int, caps: dict[str, float], node_id: str) -> Fraction:
    total = sum((Fraction(c) for c in caps.values()), Fraction(0))
    return num_samples * Fraction(caps[node_id]) / total


# --- literal cases -------------------------------------------------------------------------


def test_literal_plan_three_nodes() -> None:
    plan = plan_shards(100, {"b": 1.0, "a": 2.0, "c": 1.0}, overlap=0.1, seed=7)
    assert list(plan) == ["a", "b", "c"]
    assert [plan[n].own for n in plan] == [50, 25, 25]
    # a borrows round(0.1 * 50) = 5 from b; b borrows 2 (round(2.5) = 2) from c; c 2 from a.
    assert [plan[n].overlap for n in plan] == [5, 2, 2]
    assert plan["a"].indices[50:] == plan["b"].indices[:5]
    assert plan["b"].indices[25:] == plan["c"].indices[:2]
    assert plan["c"].indices[25:] == plan["a"].indices[:2]
    own = [i for n in plan for i in plan[n].indices[: plan[n].own]]
    assert sorted(own) == list(range(100))


def test_shard_is_frozen_value() -> None:
    shard = Shard(node_id="a", indices=(3, 1, 2), own=2)
    assert shard.overlap == 1
    with pytest.raises(AttributeError):
        shard.own = 3  # type: ignore[misc]


def test_one_node_gets_everything_and_no_overlap() -> None:
    plan = plan_shards(10, {"solo": 3.5}, overlap=1.0, seed=1)
    assert plan["solo"].own == 10
    assert sorted(plan["solo"].indices) == list(range(10))


def test_tiny_dataset_allows_empty_own_parts() -> None:
    plan = plan_shards(2, {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0})
    assert sum(s.own for s in plan.values()) == 2
    assert sorted(s.own for s in plan.values()) == [0, 0, 1, 1]
    assert {i for s in plan.values() for i in s.indices} == {0, 1}


def test_zero_samples_gives_empty_shards() -> None:
    plan = plan_shards(0, {"a": 1.0, "b": 2.0})
    assert all(s.indices == () and s.own == 0 for s in plan.values())


def test_very_uneven_capacities() -> None:
    plan = plan_shards(1000, {"fast": 1e6, "slow": 1e-6}, overlap=0.5)
    assert plan["fast"].own == 1000
    assert plan["slow"].own == 0
    # fast borrows from slow's empty own part: capped at 0; slow borrows round(0) = 0.
    assert plan["fast"].overlap == 0 and plan["slow"].indices == ()


def test_overlap_capped_at_neighbour_size() -> None:
    plan = plan_shards(100, {"a": 9.0, "b": 1.0}, overlap=1.0)
    assert plan["a"].own == 90 and plan["b"].own == 10
    assert plan["a"].overlap == 10  # wanted 90, b has only 10
    assert plan["b"].overlap == 10


def test_proportional_sizes_ties_go_to_first_sorted() -> None:
    assert proportional_sizes(1, {"b": 1.0, "a": 1.0}) == {"a": 1, "b": 0}
    assert proportional_sizes(5, {"x": 1.0, "y": 1.0, "z": 1.0}) == {"x": 2, "y": 2, "z": 1}


@pytest.mark.parametrize(
    ("num_samples", "caps", "overlap"),
    [
        (10, {}, 0.1),
        (-1, {"a": 1.0}, 0.1),
        (10, {"a": 0.0}, 0.1),
        (10, {"a": -1.0}, 0.1),
        (10, {"a": math.nan}, 0.1),
        (10, {"a": math.inf}, 0.1),
        (10, {"a": 1.0}, -0.01),
        (10, {"a": 1.0}, 1.01),
        (10, {"a": 1.0}, math.nan),
    ],
)
def test_bad_arguments(num_samples: int, caps: dict[str, float], overlap: float) -> None:
    with pytest.raises(ValueError):
        plan_shards(num_samples, caps, overlap=overlap)


# --- properties ----------------------------------------------------------------------------


@SETTINGS
@given(st.integers(0, 2000), capacities)
def test_proportional_within_one_sample(num_samples: int, caps: dict[str, float]) -> None:
    plan = plan_shards(num_samples, caps)
    assert sum(s.own for s in plan.values()) == num_samples
    for node_id, shard in plan.items():
        assert abs(shard.own - _exact_share(num_samples, caps, node_id)) < 1


@SETTINGS
@given(st.integers(0, 2000), capacities, overlaps)
def test_overlap_count(num_samples: int, caps: dict[str, float], overlap: float) -> None:
    plan = plan_shards(num_samples, caps, overlap=overlap)
    ids = sorted(caps)
    for i, node_id in enumerate(ids):
        shard = plan[node_id]
        if len(ids) == 1:
            assert shard.overlap == 0
            continue
        neighbour = plan[ids[(i + 1) % len(ids)]]
        assert shard.overlap == min(round(overlap * shard.own), neighbour.own)
        assert shard.indices[shard.own :] == neighbour.indices[: shard.overlap]


@SETTINGS
@given(st.integers(0, 2000), capacities, overlaps, st.integers(0, MAX_SEED))
def test_coverage_and_no_duplicates(
    num_samples: int, caps: dict[str, float], overlap: float, seed: int
) -> None:
    plan = plan_shards(num_samples, caps, overlap=overlap, seed=seed)
    assert set(plan) == set(caps)
    union: set[int] = set()
    for node_id, shard in plan.items():
        assert shard.node_id == node_id
        assert len(set(shard.indices)) == len(shard.indices)
        assert all(0 <= i < num_samples for i in shard.indices)
        union.update(shard.indices)
    assert union == set(range(num_samples))
    # Own parts are a partition of the samples.
    own = [i for s in plan.values() for i in s.indices[: s.own]]
    assert sorted(own) == list(range(num_samples))


@SETTINGS
@given(st.integers(0, 500), capacities, overlaps, st.integers(0, MAX_SEED), st.randoms())
def test_deterministic_and_independent_of_mapping_order(
    num_samples: int, caps: dict[str, float], overlap: float, seed: int, rnd: random.Random
) -> None:
    items = list(caps.items())
    rnd.shuffle(items)
    reordered = dict(items)
    first = plan_shards(num_samples, caps, overlap=overlap, seed=seed)
    assert plan_shards(num_samples, caps, overlap=overlap, seed=seed) == first
    assert plan_shards(num_samples, reordered, overlap=overlap, seed=seed) == first


@settings(max_examples=50, deadline=None)
@given(st.integers(20, 500), capacities, st.integers(0, MAX_SEED), st.integers(0, MAX_SEED))
def test_different_seeds_give_different_plans(
    num_samples: int, caps: dict[str, float], seed_a: int, seed_b: int
) -> None:
    if seed_a == seed_b:
        seed_b = (seed_b + 1) % (MAX_SEED + 1)
    # 20! orderings: a collision of permutations is vanishingly unlikely.
    assert plan_shards(num_samples, caps, seed=seed_a) != plan_shards(
        num_samples, caps, seed=seed_b
    )


# -- claimed capacities are hints, bounded before they count ---------------------------------


@pytest.mark.parametrize("lie", [1e300, 2e5, 10 * 800.0, math.inf, math.nan])
@pytest.mark.parametrize("ratio", [1.0, 2.0])
def test_a_lying_node_gets_at_most_k_times_the_median_share(lie: float, ratio: float) -> None:
    honest = {"a": 800.0, "b": 900.0, "c": 1000.0}
    bounded = bounded_capacities({**honest, "liar": lie}, max_ratio=ratio)
    plan = plan_shards(4000, bounded, overlap=0.0)
    own = {n: s.own for n, s in plan.items()}
    assert all(own[n] > 0 for n in honest), own  # the honest nodes are in the job
    assert own["liar"] <= ratio * sorted(own.values())[1] + 1


def test_capacities_are_clamped_into_range_and_kept_when_honest() -> None:
    low, high = CAPACITY_RANGE
    assert bounded_capacities({"a": -5.0, "b": 0.0}) == {"a": low, "b": low}
    assert bounded_capacities({"a": 1e300}) == {"a": high}
    honest = {"a": 100.0, "b": 150.0, "c": 190.0}
    assert bounded_capacities(honest, max_ratio=2.0) == honest  # nothing to cap
    assert bounded_capacities(honest) == {"a": 100.0, "b": 150.0, "c": 150.0}  # the default


def test_with_two_nodes_the_smaller_claim_sets_the_cap() -> None:
    assert bounded_capacities({"a": 100.0, "liar": 1e9}, max_ratio=3.0) == {
        "a": 100.0,
        "liar": 300.0,
    }


@given(
    st.dictionaries(
        st.text("abcdefgh", min_size=1, max_size=3),
        st.floats(allow_nan=True, allow_infinity=True),
        min_size=1,
        max_size=12,
    ),
    st.floats(1.0, 100.0),
)
@settings(max_examples=200, deadline=None)
def test_bounded_capacities_are_always_plannable_and_capped(
    claimed: dict[str, float], ratio: float
) -> None:
    bounded = bounded_capacities(claimed, ratio)
    assert bounded.keys() == claimed.keys()
    lower_median = sorted(bounded.values())[(len(bounded) - 1) // 2]
    for value in bounded.values():
        assert math.isfinite(value) and value > 0
        assert value <= ratio * lower_median * (1 + 1e-12)
    plan_shards(100, bounded)  # never raises


def test_a_ratio_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_ratio"):
        bounded_capacities({"a": 1.0}, max_ratio=0.5)


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1])
def test_a_seed_the_generator_would_truncate_is_refused(seed: int) -> None:
    with pytest.raises(ValueError, match="seed must be"):
        plan_shards(20, {"a": 1.0}, seed=seed)
