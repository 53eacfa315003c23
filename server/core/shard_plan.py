"""Shard plans: which training samples each node trains on, decided once per job.

The plan is a pure function of the dataset size, the node *set* with its capacities, the
overlap fraction and the job seed, so a restarted orchestrator rebuilds exactly the shards it
handed out before, and a test can pin one down with literal numbers.

Own parts are sized in proportion to each node's measured capacity (samples/s), so the fast
and the slow nodes finish a local epoch at about the same time and a round is not held up by
its slowest member. Each shard is then extended with the first samples of its neighbour's
own part: a little shared data keeps the local models from drifting apart on skewed splits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

import torch

DEFAULT_OVERLAP = 0.15
DEFAULT_MAX_CAPACITY_RATIO = 1.0
"""No node is planned more than the median node's share: a faster honest node finishes
early and waits, and a liar holds no more of the data hostage than a typical node. (At 2,
a node uploading zeros under the median cost 3.0 accuracy points where it costs 1.5 at 1,
in tests/system/test_hostile_jobs.py.)"""
CAPACITY_RANGE = (1e-3, 1e7)
"""What a node may claim, in samples/s: a claim outside is clamped to the nearer end."""

MAX_SEED = 2**32 - 1
"""The largest job seed: torch's CPU generator keeps 32 bits of a seed."""


@dataclass(frozen=True, slots=True)
class Shard:
    """One node's share of the training split.

    Attributes:
        node_id: The node that trains on it.
        indices: Sample indices into the training split: the node's own part first, then the
            overlap borrowed from its neighbour.
        own: How many of ``indices`` are the node's own part (the rest is overlap).
    """

    node_id: str
    indices: tuple[int, ...]
    own: int

    @property
    def overlap(self) -> int:
        """How many samples were borrowed from the neighbour's own part."""
        return len(self.indices) - self.own


def bounded_capacities(
    claimed: Mapping[str, float], max_ratio: float = DEFAULT_MAX_CAPACITY_RATIO
) -> dict[str, float]:
    """The capacities a shard plan may use: what nodes claim, clamped and capped.

    A node measures its own capacity, so the figure is a hint, not a right: one node that
    lies (``1e300``) must not take the whole training set and leave the honest nodes out.
    Each claim is first clamped to :data:`CAPACITY_RANGE` (a NaN counts as the low end),
    then capped at ``max_ratio`` times the *lower* median of the clamped claims. The lower
    median is a value some node at or below the middle claimed, so liars that are fewer
    than half the nodes cannot raise it above the fastest honest node; with two nodes it is
    the smaller claim. So no node is planned more than ``max_ratio`` times the share of the
    median node, whatever it says.

    Args:
        claimed: Node id -> the capacity it announced (any float).
        max_ratio: The cap, as a multiple of the lower median; >= 1.

    Returns:
        Node id -> finite, positive capacity, keyed in sorted node order.

    Raises:
        ValueError: ``max_ratio`` is below 1 or not finite.
    """
    if not (math.isfinite(max_ratio) and max_ratio >= 1):
        raise ValueError(f"max_ratio must be finite and >= 1, got {max_ratio}")
    low, high = CAPACITY_RANGE
    clamped = {n: min(max(c, low), high) if c == c else low for n, c in claimed.items()}
    if not clamped:
        return {}
    ordered = sorted(clamped.values())
    cap = max_ratio * ordered[(len(ordered) - 1) // 2]
    return {n: min(clamped[n], cap) for n in sorted(clamped)}


def proportional_sizes(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split ``total`` into integer parts proportional to ``weights`` (largest remainder).

    Each part is the floor or the ceiling of its exact share, so it is within one of the
    exact proportion, and the parts sum to ``total``. The arithmetic is done in exact
    fractions (every float is a fraction), so the rounding never depends on float error;
    ties in the remainder go to the node that sorts first.

    Args:
        total: The number of items to split (>= 0).
        weights: Node id -> positive, finite weight.

    Returns:
        Node id -> part size, keyed in sorted node order.
    """
    ids = sorted(weights)
    exact = {n: Fraction(weights[n]) for n in ids}
    denominator = sum(exact.values(), Fraction(0))
    shares = {n: total * exact[n] / denominator for n in ids}
    sizes = {n: math.floor(shares[n]) for n in ids}
    leftover = total - sum(sizes.values())
    by_remainder = sorted(ids, key=lambda n: (-(shares[n] - sizes[n]), n))
    for n in by_remainder[:leftover]:
        sizes[n] += 1
    return sizes


def plan_shards(
    num_samples: int,
    capacities: Mapping[str, float],
    *,
    overlap: float = DEFAULT_OVERLAP,
    seed: int = 0,
) -> dict[str, Shard]:
    """Plan every node's shard of a training split of ``num_samples`` samples.

    The samples are shuffled with a ``torch.Generator`` seeded by ``seed``, then cut into
    contiguous own parts, one per node in sorted node-id order, sized by
    :func:`proportional_sizes`. Node ``i`` then borrows ``round(overlap * own_i)`` samples
    (capped at the neighbour's own size) from the start of node ``i+1``'s own part,
    wrapping around; a lone node borrows nothing. Every sample is in at least one shard and
    no shard repeats a sample.

    A node whose proportional share rounds down to zero (a tiny dataset, or a node far
    slower than the rest) gets an empty own part and so an empty shard rather than an error:
    rounding the other way would break proportionality, and refusing would fail a whole job
    over one weak node. The caller should leave nodes with an empty shard out of the rounds.

    Args:
        num_samples: Size of the training split (>= 0).
        capacities: Node id -> measured capacity in samples/s; finite and > 0. Only the set
            of ids matters for the order, not the mapping's iteration order.
        overlap: Fraction of its own part that each node borrows from its neighbour, in
            [0, 1].
        seed: The job seed, 0..MAX_SEED; the same seed and node set give the same plan.

    Returns:
        Node id -> :class:`Shard`, keyed in sorted node order.

    Raises:
        ValueError: No nodes, a capacity that is not finite and positive, a negative
            ``num_samples``, an ``overlap`` outside [0, 1] or a seed outside 0..MAX_SEED.
    """
    _check_plan(num_samples, capacities, overlap, seed)
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = torch.randperm(num_samples, generator=generator).tolist()
    own_parts = _own_parts(order, proportional_sizes(num_samples, capacities))
    return with_overlap(own_parts, overlap)


def _check_plan(
    num_samples: int, capacities: Mapping[str, float], overlap: float, seed: int
) -> None:
    """Raise the ValueError :func:`plan_shards` documents for arguments it cannot plan."""
    if not 0 <= seed <= MAX_SEED:  # torch's CPU generator keeps 32 bits: 2**32 would be 0
        raise ValueError(f"seed must be 0..{MAX_SEED}, got {seed}")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if not capacities:
        raise ValueError("a shard plan needs at least one node")
    for node_id, capacity in capacities.items():
        if not (math.isfinite(capacity) and capacity > 0):
            raise ValueError(f"capacity of {node_id!r} must be finite and > 0, got {capacity}")
    if not 0.0 <= overlap <= 1.0:  # also refuses NaN
        raise ValueError(f"overlap must be in [0, 1], got {overlap}")


def _own_parts(order: list[int], sizes: Mapping[str, int]) -> dict[str, list[int]]:
    """Cut the shuffled ``order`` into contiguous parts of ``sizes``, in the mapping's order."""
    own_parts: dict[str, list[int]] = {}
    start = 0
    for node_id, size in sizes.items():
        own_parts[node_id] = order[start : start + size]
        start += size
    return own_parts


def with_overlap(own_parts: Mapping[str, list[int]], overlap: float) -> dict[str, Shard]:
    """Each own part, extended with the start of the next node's (wrapping; none when alone)."""
    ids = list(own_parts)
    plan: dict[str, Shard] = {}
    for i, node_id in enumerate(ids):
        own = own_parts[node_id]
        borrowed: list[int] = []
        if len(ids) > 1:
            neighbour = own_parts[ids[(i + 1) % len(ids)]]
            borrowed = neighbour[: min(round(overlap * len(own)), len(neighbour))]
        plan[node_id] = Shard(node_id=node_id, indices=tuple(own + borrowed), own=len(own))
    return plan
