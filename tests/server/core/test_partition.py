"""Label partitions: iid as today's plan, Dirichlet label skew, McMahan's k-class shards.

Every kind must partition the samples (disjoint, covering), be a function of its inputs and
seed, and give the skew it names; the parser and the planner refuse what they cannot do
with messages that name ``partition``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from server.core.partition import (
    ALPHA_RANGE,
    DEFAULT_MIN_SAMPLES,
    IID,
    Classes,
    Dirichlet,
    Iid,
    Partition,
    PartitionError,
    label_histogram,
    parse_partition,
    partition_samples,
    partition_view,
)
from server.core.shard_plan import MAX_SEED, plan_shards, proportional_sizes, with_overlap

SETTINGS = settings(max_examples=150, deadline=None)

node_ids = st.text(alphabet="abcdefghij0123456789-", min_size=1, max_size=6)
capacities = st.dictionaries(
    node_ids, st.floats(min_value=1e-3, max_value=1e4), min_size=1, max_size=8
)
label_lists = st.lists(st.integers(0, 11), max_size=300)
seeds = st.integers(0, MAX_SEED)
alphas = st.one_of(
    st.sampled_from([ALPHA_RANGE[0], 0.01, 0.1, 0.5, 1.0, 100.0, ALPHA_RANGE[1]]),
    st.floats(min_value=ALPHA_RANGE[0], max_value=ALPHA_RANGE[1]),
)
partitions: st.SearchStrategy[Partition] = st.one_of(
    st.just(IID), st.builds(Dirichlet, alphas), st.builds(Classes, st.integers(1, 4))
)


def _classes_impossible(labels: Sequence[int], nodes: int, k: int) -> bool:
    """What classes:k documents it refuses, computed independently."""
    distinct = len(set(labels))
    return len(labels) < nodes * k or k > distinct or nodes * k < distinct


def _check_partition(parts: Mapping[str, list[int]], num_samples: int) -> None:
    flat = [i for part in parts.values() for i in part]
    assert len(flat) == num_samples, "a sample is in two parts"
    assert sorted(flat) == list(range(num_samples)), "a sample is in no part"
    assert all(isinstance(i, int) for i in flat)


def _balanced(num_classes: int, per_class: int) -> npt.NDArray[np.int64]:
    return np.repeat(np.arange(num_classes, dtype=np.int64), per_class)


def _ids(n: int) -> dict[str, float]:
    return {f"node-{i:04d}": 1.0 for i in range(n)}


def _distributions(
    labels: npt.NDArray[np.int64], parts: Mapping[str, list[int]], k: int
) -> npt.NDArray[np.float64]:
    """Each non-empty node's label distribution, one row a node."""
    counts = np.array(list(label_histogram(labels, parts, k).values()), dtype=np.float64)
    counts = counts[counts.sum(axis=1) > 0]
    shares: npt.NDArray[np.float64] = counts / counts.sum(axis=1, keepdims=True)
    return shares


def _mean_tv(labels: npt.NDArray[np.int64], parts: Mapping[str, list[int]], k: int) -> float:
    """The mean total-variation distance of the nodes' label mix from the global one."""
    overall = np.bincount(labels, minlength=k) / len(labels)
    return float(0.5 * np.abs(_distributions(labels, parts, k) - overall).sum(axis=1).mean())


def _mean_entropy(labels: npt.NDArray[np.int64], parts: Mapping[str, list[int]], k: int) -> float:
    q = _distributions(labels, parts, k)
    logs = np.log(np.where(q > 0, q, 1.0))
    return float(-(q * logs).sum(axis=1).mean())


# --- the parser ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "canonical"),
    [
        ("iid", IID, "iid"),
        ("  iid\n", IID, "iid"),
        ("dirichlet:0.5", Dirichlet(0.5), "dirichlet:0.5"),
        ("dirichlet:.5", Dirichlet(0.5), "dirichlet:0.5"),
        ("dirichlet: 100", Dirichlet(100.0), "dirichlet:100.0"),
        ("dirichlet:1e-3", Dirichlet(0.001), "dirichlet:0.001"),
        ("dirichlet:1e-6", Dirichlet(1e-6), "dirichlet:1e-06"),
        ("classes:2", Classes(2), "classes:2"),
        ("classes:10", Classes(10), "classes:10"),
    ],
)
def test_accepted_spellings(text: str, expected: Partition, canonical: str) -> None:
    parsed = parse_partition(text)
    assert parsed == expected
    assert type(parsed) is type(expected)
    assert str(parsed) == canonical
    assert parse_partition(canonical) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "unknown kind ''"),
        ("IID", "unknown kind 'IID'"),
        ("shards:2", r"unknown kind 'shards' \(one of iid, dirichlet:<alpha>, classes:<k>\)"),
        ("iid:1", "iid takes no parameter"),
        ("dirichlet", "dirichlet needs a parameter, e.g. dirichlet:0.5"),
        ("dirichlet:", "dirichlet needs a parameter"),
        ("dirichlet:0", r"alpha must be within 1e-06\.\.1e\+06, got 0\.0"),
        ("dirichlet:-0.5", "alpha must be within .* got -0.5"),
        ("dirichlet:nan", "alpha must be within .* got nan"),
        ("dirichlet:inf", "alpha must be within .* got inf"),
        ("dirichlet:1e7", "alpha must be within"),
        ("dirichlet:half", "alpha must be a number, got 'half'"),
        ("classes", "classes needs a parameter, e.g. classes:2"),
        ("classes:0", "integer k >= 1, got 0"),
        ("classes:-3", "integer k >= 1, got -3"),
        ("classes:2.5", "integer k >= 1, got '2.5'"),
        ("classes:two", "integer k >= 1, got 'two'"),
    ],
)
def test_refused_spellings_name_the_field(text: str, message: str) -> None:
    with pytest.raises(PartitionError, match=f"^partition: .*{message}") as caught:
        parse_partition(text)
    assert isinstance(caught.value, ValueError)
    assert str(caught.value) == f"partition: {caught.value.reason}"


@pytest.mark.parametrize("value", [None, 0.5, 2, ["iid"], {"kind": "iid"}])
def test_a_value_that_is_not_a_string_is_refused(value: object) -> None:
    with pytest.raises(PartitionError, match=r"^partition: expected a string"):
        parse_partition(value)


def test_refusals_quote_at_most_40_characters() -> None:
    for text in ("x" * 5000, "dirichlet:" + "y" * 5000, "classes:" + "9" * 5000):
        with pytest.raises(PartitionError) as caught:
            parse_partition(text)
        assert len(str(caught.value)) < 150


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, 2e6, True, "0.5"])
def test_a_dirichlet_value_checks_itself(bad: object) -> None:
    with pytest.raises(PartitionError, match=r"^partition: dirichlet's alpha"):
        Dirichlet(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1, True, 2.0])
def test_a_classes_value_checks_itself(bad: object) -> None:
    with pytest.raises(PartitionError, match=r"^partition: classes needs an integer k >= 1"):
        Classes(bad)  # type: ignore[arg-type]


@SETTINGS
@given(partitions)
def test_every_partition_round_trips_through_its_spelling(partition: Partition) -> None:
    assert parse_partition(str(partition)) == partition
    assert partition_view(partition)["partition"] == str(partition)


def test_views() -> None:
    assert partition_view(IID) == {"partition": "iid", "kind": "iid"}
    assert partition_view(Dirichlet(0.5)) == {
        "partition": "dirichlet:0.5",
        "kind": "dirichlet",
        "alpha": 0.5,
    }
    assert partition_view(Classes(3)) == {"partition": "classes:3", "kind": "classes", "k": 3}


# --- every kind partitions the samples, deterministically ------------------------------------


@SETTINGS
@given(label_lists, capacities, partitions, seeds)
def test_parts_are_disjoint_and_cover_every_sample(
    labels: list[int], caps: dict[str, float], partition: Partition, seed: int
) -> None:
    if isinstance(partition, Classes) and _classes_impossible(labels, len(caps), partition.k):
        with pytest.raises(PartitionError, match=f"^partition: classes:{partition.k} "):
            partition_samples(labels, caps, partition, seed=seed)
        return
    parts = partition_samples(labels, caps, partition, seed=seed)
    assert list(parts) == sorted(caps)
    _check_partition(parts, len(labels))


@SETTINGS
@given(label_lists, capacities, partitions, seeds, st.randoms())
def test_same_inputs_and_seed_give_the_same_parts(
    labels: list[int], caps: dict[str, float], partition: Partition, seed: int, rnd: random.Random
) -> None:
    if isinstance(partition, Classes) and _classes_impossible(labels, len(caps), partition.k):
        return  # refused: test_parts_are_disjoint_and_cover_every_sample checks how
    items = list(caps.items())
    rnd.shuffle(items)
    first = partition_samples(labels, caps, partition, seed=seed)
    assert partition_samples(labels, caps, partition, seed=seed) == first
    assert partition_samples(labels, dict(items), partition, seed=seed) == first
    assert partition_samples(np.array(labels, dtype=np.int64), caps, partition, seed=seed) == first


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 4), min_size=40, max_size=300),
    capacities,
    partitions,
    seeds,
    seeds,
)
def test_different_seeds_give_different_parts(
    labels: list[int], caps: dict[str, float], partition: Partition, seed_a: int, seed_b: int
) -> None:
    if isinstance(partition, Classes) and _classes_impossible(labels, len(caps), partition.k):
        return  # refused: test_parts_are_disjoint_and_cover_every_sample checks how
    if seed_a == seed_b:
        seed_b = (seed_b + 1) % (MAX_SEED + 1)
    # Each part is in a seeded order: 40! orderings make a collision vanishingly unlikely.
    assert partition_samples(labels, caps, partition, seed=seed_a) != partition_samples(
        labels, caps, partition, seed=seed_b
    )


@SETTINGS
@given(label_lists, capacities, seeds, st.floats(0.0, 1.0))
def test_iid_is_todays_plan_and_overlap_goes_on_top(
    labels: list[int], caps: dict[str, float], seed: int, overlap: float
) -> None:
    today = plan_shards(len(labels), caps, overlap=overlap, seed=seed)
    parts = partition_samples(labels, caps, IID, seed=seed)
    assert parts == partition_samples(labels, caps, seed=seed)  # iid is the default
    assert {n: p for n, p in parts.items()} == {
        n: list(s.indices[: s.own]) for n, s in today.items()
    }
    assert with_overlap(parts, overlap) == today


# --- Dirichlet: the skew alpha asks for ------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_smaller_alpha_means_more_label_skew(seed: int) -> None:
    labels = _balanced(10, 2000)
    caps = _ids(20)
    tv = {}
    entropy = {}
    for partition in (IID, Dirichlet(100.0), Dirichlet(1.0), Dirichlet(0.1)):
        parts = partition_samples(labels, caps, partition, seed=seed)
        tv[str(partition)] = _mean_tv(labels, parts, 10)
        entropy[str(partition)] = _mean_entropy(labels, parts, 10)
    order = ["dirichlet:100.0", "dirichlet:1.0", "dirichlet:0.1"]
    assert [tv[p] for p in order] == sorted(tv[p] for p in order), tv
    assert [entropy[p] for p in order] == sorted((entropy[p] for p in order), reverse=True)
    # alpha = 100 is close to IID (whose distance is sampling noise); 0.1 is far from it.
    assert tv["dirichlet:100.0"] < 2 * tv["iid"] and tv["dirichlet:100.0"] < 0.08, tv
    assert entropy["dirichlet:100.0"] > 0.98 * math.log(10)
    assert 0.2 < tv["dirichlet:1.0"] < 0.6, tv
    assert tv["dirichlet:0.1"] > 0.6, tv


def test_a_tiny_alpha_gives_each_node_about_one_label() -> None:
    labels = _balanced(10, 500)
    parts = partition_samples(labels, _ids(10), Dirichlet(1e-6), seed=5, min_samples=0)
    histograms = label_histogram(labels, parts, 10)
    held = [sum(1 for c in counts if c) for counts in histograms.values()]
    assert sum(held) <= 12, histograms  # each class lands (almost) whole on one node


def test_capacity_is_the_balancing_quota() -> None:
    """A node that holds its capacity share gets no more classes, so sizes follow capacity."""
    labels = _balanced(50, 400)
    caps = {"fast": 1.0, "medium": 0.5, "slow": 0.25}
    quota = proportional_sizes(len(labels), caps)
    for seed in range(5):
        parts = partition_samples(labels, caps, Dirichlet(100.0), seed=seed)
        for node_id, part in parts.items():
            # Over by at most the one class that took it past its quota.
            assert abs(len(part) - quota[node_id]) <= 400, (node_id, len(part), quota)


# --- Dirichlet: nodes that would get nothing -------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    st.integers(100, 3000),
    st.integers(2, 120),
    st.sampled_from([1e-6, 0.01, 0.1, 0.5]),
    seeds,
    st.integers(0, 30),
)
def test_every_node_gets_its_floor(
    num_samples: int, nodes: int, alpha: float, seed: int, min_samples: int
) -> None:
    labels = np.random.default_rng(seed).integers(0, 10, num_samples)
    caps = _ids(nodes)
    parts = partition_samples(labels, caps, Dirichlet(alpha), seed=seed, min_samples=min_samples)
    _check_partition(parts, num_samples)
    iid_sizes = proportional_sizes(num_samples, caps)
    for node_id, part in parts.items():
        assert len(part) >= min(min_samples, iid_sizes[node_id]), (node_id, len(part))


def test_the_floor_defaults_to_ten_and_zero_allows_empty_parts() -> None:
    labels = _balanced(10, 100)
    caps = _ids(50)
    floored = partition_samples(labels, caps, Dirichlet(1e-6), seed=3)
    assert min(len(p) for p in floored.values()) >= DEFAULT_MIN_SAMPLES == 10
    bare = partition_samples(labels, caps, Dirichlet(1e-6), seed=3, min_samples=0)
    assert min(len(p) for p in bare.values()) == 0  # the floor is what prevents it


def test_a_node_with_no_capacity_share_stays_empty_as_in_iid() -> None:
    caps = {"a": 1.0, "b": 1.0, "crawl": 1e-9}
    labels = _balanced(4, 25)
    assert len(partition_samples(labels, caps, IID)["crawl"]) == 0
    for seed in range(5):
        parts = partition_samples(labels, caps, Dirichlet(0.5), seed=seed)
        assert len(parts["crawl"]) == 0
        assert min(len(parts["a"]), len(parts["b"])) >= DEFAULT_MIN_SAMPLES


def test_no_samples_give_empty_parts() -> None:
    for partition in (IID, Dirichlet(0.5)):
        assert partition_samples([], {"a": 1.0, "b": 2.0}, partition) == {"a": [], "b": []}


def test_a_negative_floor_is_refused() -> None:
    with pytest.raises(ValueError, match="min_samples"):
        partition_samples([0, 1], {"a": 1.0}, Dirichlet(0.5), min_samples=-1)


# --- classes:k -------------------------------------------------------------------------------


@st.composite
def _plannable_classes(draw: st.DrawFn) -> tuple[list[int], int, int]:
    """Labels, nodes and k that classes:k can plan: every label has a shard, every shard a
    sample (the refusals have their own tests)."""
    distinct = draw(st.integers(1, 10))
    nodes = draw(st.integers(1, 12))
    k = draw(st.integers(-(-distinct // nodes), distinct))
    values = draw(st.lists(st.integers(0, 20), min_size=distinct, max_size=distinct, unique=True))
    extra = draw(st.lists(st.sampled_from(values), min_size=max(0, nodes * k - distinct)))
    labels = values + extra
    draw(st.randoms()).shuffle(labels)
    return labels, nodes, k


@SETTINGS
@given(_plannable_classes(), seeds)
def test_each_node_sees_at_most_k_labels_in_k_shards(
    case: tuple[list[int], int, int], seed: int
) -> None:
    labels, nodes, k = case
    assert not _classes_impossible(labels, nodes, k)
    parts = partition_samples(labels, _ids(nodes), Classes(k), seed=seed)
    _check_partition(parts, len(labels))
    for counts in label_histogram(labels, parts, 21).values():
        assert 1 <= sum(1 for c in counts if c) <= k
        assert sum(counts) >= k  # k non-empty shards


def test_classes_gives_about_k_labels_and_equal_sizes() -> None:
    labels = _balanced(10, 6000)
    for k in (1, 2, 5):
        parts = partition_samples(labels, _ids(100), Classes(k), seed=k)
        held = [sum(1 for c in h if c) for h in label_histogram(labels, parts, 10).values()]
        assert max(held) <= k and sum(held) / len(held) >= 0.8 * k, (k, held)
        sizes = [len(p) for p in parts.values()]
        assert max(sizes) - min(sizes) <= k, sizes  # shards of 60000 / (100 k), +-1 each


def test_classes_ignores_capacity() -> None:
    labels = _balanced(4, 50)
    parts = partition_samples(labels, {"fast": 1e4, "slow": 1e-3}, Classes(2), seed=1)
    assert [len(p) for p in parts.values()] == [100, 100]


def test_classes_shards_are_cut_at_label_boundaries_of_uneven_classes() -> None:
    labels = [0] * 90 + [1] * 9 + [2] * 1  # 100 samples, 10 shards of 3 labels
    parts = partition_samples(labels, _ids(5), Classes(2), seed=0)
    _check_partition(parts, 100)
    for counts in label_histogram(labels, parts, 3).values():
        assert sum(1 for c in counts if c) <= 2


@pytest.mark.parametrize(
    ("labels", "nodes", "k", "message"),
    [
        ([0, 1, 2], 2, 2, r"classes:2 over 2 nodes needs at least 4 samples .* has 3"),
        ([], 1, 1, r"classes:1 over 1 nodes needs at least 1 samples .* has 0"),
        ([0, 1] * 20, 2, 3, r"classes:3 asks for 3 labels a node, the training split has 2"),
        (
            list(range(10)) * 10,
            3,
            2,
            r"classes:2 over 3 nodes makes 6 shards, fewer than the 10 labels, so a label "
            r"would reach no node: ask for classes:4 or more",
        ),
    ],
)
def test_impossible_classes_requests_are_refused(
    labels: list[int], nodes: int, k: int, message: str
) -> None:
    with pytest.raises(PartitionError, match=f"^partition: {message}"):
        partition_samples(labels, _ids(nodes), Classes(k))


def test_the_suggested_k_is_enough() -> None:
    labels = list(range(10)) * 10
    partition_samples(labels, _ids(3), Classes(4))  # what the message above asks for


# --- histograms, labels and arguments --------------------------------------------------------


def test_literal_histogram() -> None:
    labels = [0, 1, 1, 2, 2, 2]
    parts = {"b": [3, 4, 5, 0], "a": [1, 2], "empty": []}
    assert label_histogram(labels, parts, 4) == {
        "b": [1, 0, 3, 0],
        "a": [0, 2, 0, 0],
        "empty": [0] * 4,
    }


def test_histogram_of_whole_shards_counts_the_overlap() -> None:
    labels = torch.tensor([0, 1] * 50)
    plan = plan_shards(100, {"a": 1.0, "b": 1.0}, overlap=0.2, seed=4)
    histograms = label_histogram(labels, {n: s.indices for n, s in plan.items()}, 2)
    assert {n: sum(h) for n, h in histograms.items()} == {"a": 60, "b": 60}
    ys = labels.tolist()
    assert histograms["a"][1] == sum(ys[i] for i in plan["a"].indices)


@SETTINGS
@given(label_lists, capacities, partitions, seeds)
def test_histograms_sum_to_the_global_counts(
    labels: list[int], caps: dict[str, float], partition: Partition, seed: int
) -> None:
    if isinstance(partition, Classes) and _classes_impossible(labels, len(caps), partition.k):
        return  # refused: test_parts_are_disjoint_and_cover_every_sample checks how
    parts = partition_samples(labels, caps, partition, seed=seed)
    histograms = label_histogram(labels, parts, 12)
    assert all(sum(histograms[n]) == len(parts[n]) for n in parts)
    assert (
        np.sum(list(histograms.values()), axis=0).tolist()
        == np.bincount(np.array(labels, dtype=np.int64), minlength=12).tolist()
    )


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([[0, 1], [1, 0]], "1-D"),
        ([0.0, 1.0], "integers"),
        (["a", "b"], "integers"),
        ([0, -1], ">= 0"),
    ],
)
def test_bad_labels_are_refused(labels: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        partition_samples(labels, {"a": 1.0}, Dirichlet(0.5))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        label_histogram(labels, {"a": []}, 2)  # type: ignore[arg-type]


def test_histogram_refuses_labels_past_num_classes() -> None:
    with pytest.raises(ValueError, match=r"label 3 is outside 0\.\.2"):
        label_histogram([0, 3], {"a": [0, 1]}, 3)
    with pytest.raises(ValueError, match="num_classes"):
        label_histogram([0], {"a": [0]}, 0)


@pytest.mark.parametrize(
    ("caps", "seed", "message"),
    [({}, 0, "at least one node"), ({"a": 0.0}, 0, "capacity"), ({"a": 1.0}, -1, "seed")],
)
@pytest.mark.parametrize("partition", [IID, Dirichlet(0.5), Classes(1)])
def test_what_the_shard_plan_refuses_is_refused(
    caps: dict[str, float], seed: int, message: str, partition: Partition
) -> None:
    with pytest.raises(ValueError, match=message):
        partition_samples([0, 1, 2], caps, partition, seed=seed)


def test_torch_labels_are_read_as_they_are() -> None:
    labels = torch.arange(40) % 4
    assert partition_samples(labels, _ids(4), Classes(1), seed=2) == partition_samples(
        labels.tolist(), _ids(4), Classes(1), seed=2
    )


def test_kinds_are_distinct_values() -> None:
    assert isinstance(parse_partition("iid"), Iid)
    assert Dirichlet(1.0) != Dirichlet(2.0) and Classes(1) != Classes(2)
    assert len({IID, Dirichlet(0.5), Dirichlet(0.5), Classes(2)}) == 3  # hashable, by value


# --- size --------------------------------------------------------------------------------------


def test_sixty_thousand_samples_over_a_thousand_nodes_is_quick() -> None:
    labels = np.random.default_rng(0).integers(0, 10, 60_000)
    caps = _ids(1000)
    for partition in (IID, Dirichlet(0.5), Dirichlet(0.01), Classes(2)):
        started = time.perf_counter()
        parts = partition_samples(labels, caps, partition, seed=1)
        label_histogram(labels, parts, 10)
        elapsed = time.perf_counter() - started
        _check_partition(parts, 60_000)
        assert elapsed < 5.0, (str(partition), elapsed)
