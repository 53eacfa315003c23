"""Aggregation of node updates into the next global weights: FedAvg and robust statistics.

:class:`FedAvg` streams: each upload is validated and folded into a running sum the moment
it arrives, so the server holds one float64 accumulator per tensor of the model however many
nodes take part: memory is O(model), not O(nodes x model), and an upload's bytes can be
dropped as soon as it is folded. float64 keeps the sum of many float32/float16 updates from
losing precision; the result is handed back as float32, the dtype nodes train in.

A mean lets one node move the result as far as it likes. :class:`CoordinateMedian` and
:class:`TrimmedMean` bound the damage a minority of poisoned updates can do (Yin et al.,
2018), at a price: an order statistic needs every value of a coordinate at once, so they
keep a float32 copy of each update until the round closes — memory O(nodes x model).

Strategies share one small interface (:class:`Strategy`) and one set of admission checks
(:class:`UpdateGate`), so new ones (server-side optimisers, Krum) can be added beside these
and registered in :data:`_FACTORIES` without touching the callers. Who may contribute, and
with what sample count, is the caller's to decide (:class:`server.core.rounds.RoundMachine`
checks it under the job's lock before a fold): a strategy folds what it is given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

import torch

from node.shared.errors import FedavgError
from node.shared.weights import Layout, check_state

Weighting = Literal["weighted", "uniform"]

FOLD_CHUNK = 1 << 16
"""Elements per step of the float64 fold: small enough for the converted chunk to stay in
cache, large enough that the Python loop costs nothing (torch's mixed-dtype ``add_`` runs
about 3x slower than converting a chunk and adding it)."""

TRIM_BETA = 0.2
"""The share of updates :class:`TrimmedMean` drops at each end of every coordinate."""


class AggregationError(FedavgError):
    """An update the aggregator refuses (see :class:`UpdateRefused`), or a result asked for
    before any update arrived.

    Updates whose tensors do not fit the model raise :class:`node.shared.errors.WeightsError`
    instead, so the caller can tell a malformed upload from one that came at the wrong time.
    """


class Strategy(Protocol):
    """What the round loop needs from any aggregation strategy."""

    name: str

    @property
    def count(self) -> int:
        """How many updates have been folded so far."""
        ...

    def add(self, tensors: Mapping[str, torch.Tensor], samples: int) -> None:
        """Validate one node's update (``samples``: its count, >= 1, bounded by the caller)
        and take it in; a refused update changes nothing."""
        ...

    def result(self) -> dict[str, torch.Tensor]:
        """The aggregate: float32, contiguous, with the layout's keys and shapes."""
        ...

    def result_into(self, out: Mapping[str, torch.Tensor]) -> None:
        """Write the aggregate into ``out``'s float32 tensors (say, views into the bytes the
        server is about to serve), so it is never copied again."""
        ...

    def reset(self, bound: UpdateBound | None = None) -> None:
        """Forget every update: the next round starts here, reusing this round's memory,
        admitting only updates within ``bound`` (none: no norm check)."""
        ...


class UpdateRefused(AggregationError):
    """An update that fits the model but moves it absurdly far from the global weights."""


@dataclass(frozen=True, slots=True)
class UpdateBound:
    """How far one update may move the model: ``||w - g|| <= max_ratio * max(||g||, 1)``.

    ``g`` is the round's global weights (what every node started from), so the bound scales
    with the model and needs no tuning per architecture. An honest local epoch moves a
    model by about its own norm or less (an update of all zeros is exactly 1x); a scaled or
    exploded update (x1e30, say) is thousands of times over. TensorFlow Federated zeroes
    such updates by a norm quantile; we refuse them with a clear error instead, so the
    round goes on with the others. ``max_ratio = 0`` turns the check off.
    """

    reference: Mapping[str, torch.Tensor]
    max_ratio: float
    reference_norm: float

    @classmethod
    def around(cls, reference: Mapping[str, torch.Tensor], max_ratio: float) -> UpdateBound:
        norm = math.sqrt(sum(_squared_norm(t) for t in reference.values()))
        return cls(reference, max_ratio, norm)

    @property
    def limit(self) -> float:
        return self.max_ratio * max(self.reference_norm, 1.0)

    def check(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Raise :class:`UpdateRefused` when ``tensors`` are too far from the reference."""
        if self.max_ratio <= 0:
            return
        distance = math.sqrt(
            sum(_squared_distance(tensors[k], ref) for k, ref in self.reference.items())
        )
        if not distance <= self.limit:  # also refuses a NaN distance
            raise UpdateRefused(
                f"update norm {distance:.3g} exceeds {self.max_ratio:g} x the global model's "
                f"norm ({self.limit:.3g}; FEDAVG_MAX_UPDATE_RATIO)"
            )


def _squared_norm(tensor: torch.Tensor) -> float:
    flat = tensor.detach().reshape(-1)
    return sum(
        float(torch.linalg.vector_norm(flat[a:b].float()) ** 2) for a, b in _chunks(flat.numel())
    )


def _squared_distance(update: torch.Tensor, reference: torch.Tensor) -> float:
    """``||update - reference||^2`` in cache-sized float32 chunks, summed in float64."""
    u, r = update.detach().reshape(-1), reference.detach().reshape(-1)
    scratch = torch.empty(min(FOLD_CHUNK, u.numel()), dtype=torch.float32)
    total = 0.0
    for a, b in _chunks(u.numel()):
        diff = scratch[: b - a]
        torch.sub(u[a:b], r[a:b], out=diff)  # upcasts a half-precision upload on the way
        total += float(torch.dot(diff, diff))
    return total


class UpdateGate:
    """The admission checks every strategy shares: fits the model and (with a
    :class:`UpdateBound`) not absurdly far from the global weights.

    Kept apart from the arithmetic so a new strategy gets identical refusals for free:
    call :meth:`admit` before touching any state.
    """

    __slots__ = ("_bound", "_layout")

    def __init__(self, layout: Layout, *, bound: UpdateBound | None = None) -> None:
        self._layout = layout
        self._bound = bound

    def admit(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Raise unless the update may be folded; records nothing.

        Raises:
            node.shared.errors.WeightsError: Wrong keys, shapes or dtypes, or NaN/Inf values.
            UpdateRefused: Too far from the global weights.
        """
        check_state(tensors, self._layout)
        if self._bound is not None:
            self._bound.check(tensors)


class FedAvg:
    """Federated Averaging (McMahan et al., 2017) over a running float64 sum.

    ``weighted`` weighs each update by its node's sample count, the paper's rule: the
    result is ``sum(n_i * w_i) / sum(n_i)``. ``uniform`` gives every node the same say,
    ``(1/k) * sum(w_i)``, useful when sample counts are not trusted.
    """

    __slots__ = ("_acc", "_count", "_gate", "_layout", "_scratch", "_total", "name", "weighting")

    def __init__(self, layout: Layout, *, weighting: Weighting = "weighted") -> None:
        if weighting not in get_args(Weighting):
            raise ValueError(f"weighting must be one of {get_args(Weighting)}, got {weighting!r}")
        self.name: str = weighting
        self.weighting: Weighting = weighting
        self._layout = layout
        self._gate = UpdateGate(layout)
        self._acc = {k: torch.zeros(shape, dtype=torch.float64) for k, (shape, _) in layout.items()}
        self._scratch = torch.empty(FOLD_CHUNK, dtype=torch.float64)
        self._total = 0
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    @property
    def total_weight(self) -> int:
        """The divisor so far: total samples (weighted) or number of updates (uniform)."""
        return self._total

    def add(self, tensors: Mapping[str, torch.Tensor], samples: int) -> None:
        """Validate the whole update, then fold it in place (float16/bfloat16 are upcast).

        Raises:
            UpdateRefused: Too far from the global weights.
            node.shared.errors.WeightsError: The tensors do not fit the layout or are not finite.
        """
        self._gate.admit(tensors)  # nothing below can fail: no half folds
        weight = samples if self.weighting == "weighted" else 1
        for key, acc in self._acc.items():
            source = tensors[key].detach().to("cpu").reshape(-1)
            target = acc.view(-1)
            for start, stop in _chunks(target.numel()):
                converted = self._scratch[: stop - start].copy_(source[start:stop])
                target[start:stop].add_(converted, alpha=weight)
        self._total += weight
        self._count += 1

    def result(self) -> dict[str, torch.Tensor]:
        """The weighted or plain mean so far, as fresh float32 tensors.

        Raises:
            AggregationError: Nothing has been added (there is no mean of no updates).
        """
        out = {k: torch.empty(shape, dtype=torch.float32) for k, (shape, _) in self._layout.items()}
        self.result_into(out)
        return out

    def result_into(self, out: Mapping[str, torch.Tensor]) -> None:
        """The mean so far, written into ``out`` (float32, contiguous, the layout's shapes)."""
        if self._total == 0:
            raise AggregationError("no updates to aggregate")
        for key, acc in self._acc.items():
            source, target = acc.view(-1), out[key].view(-1)
            for start, stop in _chunks(source.numel()):
                mean = torch.div(source[start:stop], self._total, out=self._scratch[: stop - start])
                target[start:stop].copy_(mean)

    def reset(self, bound: UpdateBound | None = None) -> None:
        for acc in self._acc.values():
            acc.zero_()  # warm pages: far cheaper than fresh zeroed memory every round
        self._gate = UpdateGate(self._layout, bound=bound)
        self._total = 0
        self._count = 0


def _chunks(n: int) -> Iterator[tuple[int, int]]:
    return ((start, min(n, start + FOLD_CHUNK)) for start in range(0, n, FOLD_CHUNK))


def trim_count(n: int, beta: float = TRIM_BETA) -> int:
    """How many of ``n`` values :class:`TrimmedMean` drops at each end of a coordinate.

    ``floor(beta * n)``, but at least one whenever ``beta > 0`` and ``n >= 3``: plain
    flooring trims nothing below ``n = 1 / beta`` (five nodes at the default 0.2), which
    would leave a small federation, the one a single attacker hurts most, with a plain
    mean. With one or two updates there is nothing to trim and the result is their mean.
    Since ``beta < 0.5``, at least one value per coordinate always survives.
    """
    if beta <= 0 or n < 3:
        return 0
    return max(1, math.floor(beta * n))


class _OrderStatistic:
    """Keeps every update of the round, then reduces each coordinate over the sorted values.

    Robust statistics cannot stream: the median of a coordinate depends on all of its values
    at once. So each admitted update is copied (as float32, which holds float32, float16 and
    bfloat16 uploads exactly) and kept until :meth:`result`: memory is O(nodes x model) for
    the round, where :class:`FedAvg` needs O(model). Sample counts are not used as weights:
    a node that lies about its count must not buy a bigger say.
    """

    __slots__ = ("_count", "_gate", "_layout", "_updates", "name")

    def __init__(self, layout: Layout, *, name: str) -> None:
        self.name: str = name
        self._layout = layout
        self._gate = UpdateGate(layout)
        self._updates: dict[str, list[torch.Tensor]] = {key: [] for key in layout}
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def add(self, tensors: Mapping[str, torch.Tensor], samples: int) -> None:
        """Validate the whole update, then keep a private float32 copy of it.

        Raises:
            UpdateRefused: Too far from the global weights.
            node.shared.errors.WeightsError: The tensors do not fit the layout or are not finite.
        """
        self._gate.admit(tensors)
        # Copy every tensor before keeping any, so a failure cannot leave half an update.
        copies = {
            key: tensors[key].detach().to(device="cpu", dtype=torch.float32, copy=True)
            for key in self._updates
        }
        for key, kept in self._updates.items():
            kept.append(copies[key])
        self._count += 1

    def result(self) -> dict[str, torch.Tensor]:
        """The statistic of every coordinate, as fresh float32 tensors.

        Raises:
            AggregationError: Nothing has been added.
        """
        out = {k: torch.empty(shape, dtype=torch.float32) for k, (shape, _) in self._layout.items()}
        self.result_into(out)
        return out

    def result_into(self, out: Mapping[str, torch.Tensor]) -> None:
        """The statistic of every coordinate, written into ``out``."""
        if self.count == 0:
            raise AggregationError("no updates to aggregate")
        for key, kept in self._updates.items():
            ordered = torch.stack(kept).sort(dim=0).values  # one key at a time bounds the peak
            out[key].copy_(self._reduce(ordered))

    def reset(self, bound: UpdateBound | None = None) -> None:
        self._gate = UpdateGate(self._layout, bound=bound)
        self._updates = {key: [] for key in self._layout}
        self._count = 0

    def _reduce(self, ordered: torch.Tensor) -> torch.Tensor:
        """Collapse dim 0 of ``ordered`` (sorted ascending, float32) into one tensor."""
        raise NotImplementedError


class CoordinateMedian(_OrderStatistic):
    """The coordinate-wise median, robust to any minority of bad updates.

    With n updates, fewer than n/2 bad ones cannot move a coordinate outside the range of
    the honest values. For an even n this is the true median, the mean of the two middle
    values (computed in float64), not :func:`torch.median`'s lower one, so the result is
    symmetric: negating every update negates it. Memory is O(nodes x model); see
    :class:`_OrderStatistic`.
    """

    __slots__ = ()

    def __init__(self, layout: Layout) -> None:
        super().__init__(layout, name="median")

    def _reduce(self, ordered: torch.Tensor) -> torch.Tensor:
        n = ordered.shape[0]
        if n % 2:
            return ordered[n // 2]
        return (ordered[n // 2 - 1].double() + ordered[n // 2].double()) / 2


class TrimmedMean(_OrderStatistic):
    """The coordinate-wise trimmed mean, robust to up to k bad updates.

    Drops the k largest and k smallest values of every coordinate and averages the rest (in
    float64), with ``k = trim_count(n, beta)``. Unlike the median it still averages the
    honest middle, so it keeps more of each clean update's information. With one or two
    updates nothing can be trimmed and the result falls back to their plain (unweighted)
    mean; see :func:`trim_count`. Memory is O(nodes x model); see :class:`_OrderStatistic`.

    Raises:
        ValueError: ``beta`` is outside [0, 0.5).
    """

    __slots__ = ("beta",)

    def __init__(self, layout: Layout, *, beta: float = TRIM_BETA) -> None:
        if not 0 <= beta < 0.5:
            raise ValueError(f"beta must be within [0, 0.5), got {beta!r}")
        super().__init__(layout, name="trimmed_mean")
        self.beta = beta

    def _reduce(self, ordered: torch.Tensor) -> torch.Tensor:
        n = ordered.shape[0]
        k = trim_count(n, self.beta)
        return ordered[k : n - k].double().mean(dim=0)


_FACTORIES: dict[str, Callable[[Layout], Strategy]] = {
    "weighted": lambda layout: FedAvg(layout, weighting="weighted"),
    "uniform": lambda layout: FedAvg(layout, weighting="uniform"),
    "median": CoordinateMedian,
    "trimmed_mean": TrimmedMean,
}

STRATEGIES: tuple[str, ...] = tuple(_FACTORIES)


def make_strategy(name: str, layout: Layout) -> Strategy:
    """A fresh strategy by its configured name (one per job; :meth:`Strategy.reset` starts
    each round).

    Raises:
        ValueError: ``name`` is not one of :data:`STRATEGIES` (the message lists them).
    """
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(
            f"unknown aggregation strategy {name!r}; choose one of {', '.join(STRATEGIES)}"
        ) from None
    return factory(layout)
