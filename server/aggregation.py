"""Streaming aggregation of node updates into the next global weights.

Each upload is validated and folded into a running sum the moment it arrives, so the server
holds one float64 accumulator per tensor of the model however many nodes take part: memory
is O(model), not O(nodes x model), and an upload's bytes can be dropped as soon as it is
folded. float64 keeps the sum of many float32/float16 updates from losing precision; the
result is handed back as float32, the dtype nodes train in.

Strategies share one small interface (:class:`Strategy`) and one set of admission checks
(:class:`UpdateGate`), so robust ones (coordinate-wise median, trimmed mean; these cannot
stream and must keep the updates) or server-side optimisers can be added beside
:class:`FedAvg` and registered in :data:`_FACTORIES` without touching the callers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal, Protocol, get_args

import torch

from node.errors import FedavgError
from node.weights import Layout, check_state

Weighting = Literal["weighted", "uniform"]


class AggregationError(FedavgError):
    """An update the aggregator refuses for its state (duplicate node, bad sample count),
    or a result asked for before any update arrived.

    Updates whose tensors do not fit the model raise :class:`node.errors.WeightsError`
    instead, so the caller can tell a malformed upload from one that came at the wrong time.
    """


class Strategy(Protocol):
    """What the round loop needs from any aggregation strategy."""

    name: str

    @property
    def count(self) -> int:
        """How many updates have been folded so far."""
        ...

    def add(self, node_id: str, tensors: Mapping[str, torch.Tensor], samples: int) -> None:
        """Validate one node's update and take it in; a refused update changes nothing."""
        ...

    def result(self) -> dict[str, torch.Tensor]:
        """The aggregate: float32, contiguous, with the layout's keys and shapes."""
        ...


class UpdateGate:
    """The admission checks every strategy shares: fits the model, once per node, samples.

    Kept apart from the arithmetic so a new strategy gets identical refusals for free:
    call :meth:`admit` before touching any state and :meth:`commit` once the update is in.
    """

    __slots__ = ("_layout", "_min_samples", "_seen")

    def __init__(self, layout: Layout, *, min_samples: int) -> None:
        self._layout = layout
        self._min_samples = min_samples
        self._seen: set[str] = set()

    @property
    def count(self) -> int:
        return len(self._seen)

    def admit(self, node_id: str, tensors: Mapping[str, torch.Tensor], samples: int) -> None:
        """Raise unless the update may be folded; records nothing.

        Raises:
            AggregationError: The node already contributed, or ``samples`` is too small.
            node.errors.WeightsError: Wrong keys, shapes or dtypes, or NaN/Inf values.
        """
        if node_id in self._seen:
            raise AggregationError(f"node {node_id!r} already contributed to this aggregate")
        if samples < self._min_samples:
            raise AggregationError(
                f"node {node_id!r}: samples must be >= {self._min_samples}, got {samples}"
            )
        check_state(tensors, self._layout)

    def commit(self, node_id: str) -> None:
        self._seen.add(node_id)


class FedAvg:
    """Federated Averaging (McMahan et al., 2017) over a running float64 sum.

    ``weighted`` weighs each update by its node's sample count, the paper's rule: the
    result is ``sum(n_i * w_i) / sum(n_i)``. ``uniform`` gives every node the same say,
    ``(1/k) * sum(w_i)``, useful when sample counts are not trusted.
    """

    __slots__ = ("_acc", "_gate", "_total", "name", "weighting")

    def __init__(self, layout: Layout, *, weighting: Weighting = "weighted") -> None:
        if weighting not in get_args(Weighting):
            raise ValueError(f"weighting must be one of {get_args(Weighting)}, got {weighting!r}")
        self.name: str = weighting
        self.weighting: Weighting = weighting
        # Uniform ignores the count but a negative one is still a broken upload.
        self._gate = UpdateGate(layout, min_samples=1 if weighting == "weighted" else 0)
        self._acc = {k: torch.zeros(shape, dtype=torch.float64) for k, (shape, _) in layout.items()}
        self._total = 0

    @property
    def count(self) -> int:
        return self._gate.count

    @property
    def total_weight(self) -> int:
        """The divisor so far: total samples (weighted) or number of updates (uniform)."""
        return self._total

    def add(self, node_id: str, tensors: Mapping[str, torch.Tensor], samples: int) -> None:
        """Validate the whole update, then fold it in place (float16/bfloat16 are upcast).

        Raises:
            AggregationError: Duplicate node or a sample count below the minimum.
            node.errors.WeightsError: The tensors do not fit the layout or are not finite.
        """
        self._gate.admit(node_id, tensors, samples)
        weight = samples if self.weighting == "weighted" else 1
        for key, acc in self._acc.items():
            # Moving to the accumulator's device first means nothing can fail half-way.
            acc.add_(tensors[key].to(device=acc.device, dtype=torch.float64), alpha=weight)
        self._total += weight
        self._gate.commit(node_id)

    def result(self) -> dict[str, torch.Tensor]:
        """The weighted or plain mean so far, as fresh float32 tensors.

        Raises:
            AggregationError: Nothing has been added (there is no mean of no updates).
        """
        if self._total == 0:
            raise AggregationError("no updates to aggregate")
        return {
            key: (acc / self._total).to(torch.float32).contiguous()
            for key, acc in self._acc.items()
        }


_FACTORIES: dict[str, Callable[[Layout], Strategy]] = {
    "weighted": lambda layout: FedAvg(layout, weighting="weighted"),
    "uniform": lambda layout: FedAvg(layout, weighting="uniform"),
}

STRATEGIES: tuple[str, ...] = tuple(_FACTORIES)


def make_strategy(name: str, layout: Layout) -> Strategy:
    """A fresh strategy for one round, by its configured name.

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
