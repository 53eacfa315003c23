"""Federated evaluation: the nodes' readings of each global model on their own test splits,
checked against what each node announced, and their weighted mean per round.

In a job over the nodes' own data, every node evaluates the model after round ``k`` (``0``
is the initial one) on its local test split and reports counts: ``correct`` of ``samples``
and a mean loss (``node.shared.protocol.Evaluation``). A report is a node's claim, so it is
bounded before it counts: only a participant may report, ``samples`` may not pass the test
count it announced (a node inflating its count would outweigh the others in the mean), and
one report per node and round counts (the first). The weighted mean is then exact: the
summed ``correct`` over the summed ``samples``, which equals the model's accuracy on the
union of the reporters' test splits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Reading:
    """One node's evaluation of one round's model."""

    node_id: str
    round: int
    samples: int
    correct: int
    loss: float | None  # mean cross-entropy; None when the node's was not finite

    @property
    def accuracy(self) -> float:
        return self.correct / self.samples


@dataclass(slots=True)
class _Totals:
    """A round's running sums, so its summary costs the same with 10 readings or 10,000."""

    samples: int = 0
    correct: int = 0
    loss_sum: float = 0.0  # the sum of loss x samples over readings with a loss
    loss_samples: int = 0
    nodes: int = 0

    def add(self, reading: Reading) -> None:
        self.samples += reading.samples
        self.correct += reading.correct
        self.nodes += 1
        if reading.loss is not None:
            self.loss_sum += reading.loss * reading.samples
            self.loss_samples += reading.samples

    def summary(self, round_: int) -> dict[str, Any]:
        return {
            "round": round_,
            "accuracy": self.correct / self.samples,
            "loss": self.loss_sum / self.loss_samples if self.loss_samples else None,
            "samples": self.samples,
            "nodes": self.nodes,
        }


class FederatedEvaluations:
    """One job's readings, by round, as the nodes report them."""

    def __init__(self, test_samples: Mapping[str, int], rounds: int) -> None:
        """``test_samples``: participant -> the test count it announced (the most a reading
        may claim); ``rounds``: the job's, so a model is ``0..rounds``."""
        self._caps = dict(test_samples)
        self._rounds = rounds
        self._by_round: dict[int, dict[str, Reading]] = {}
        self._totals: dict[int, _Totals] = {}

    def refusal(self, reading: Reading) -> str | None:
        """Why ``reading`` does not count, or None when it does (then :meth:`add` it)."""
        cap = self._caps.get(reading.node_id)
        if cap is None:
            return "not_participant"
        if not 0 <= reading.round <= self._rounds:
            return "bad_round"
        if not 1 <= reading.samples <= cap or not 0 <= reading.correct <= reading.samples:
            return "bad_samples"
        if reading.loss is not None and not (math.isfinite(reading.loss) and reading.loss >= 0):
            return "bad_loss"
        if reading.node_id in self._by_round.get(reading.round, {}):
            return "duplicate"
        return None

    def add(self, reading: Reading) -> str | None:
        """Count ``reading`` unless refused; the refusal, or None."""
        why = self.refusal(reading)
        if why is None:
            self._by_round.setdefault(reading.round, {})[reading.node_id] = reading
            self._totals.setdefault(reading.round, _Totals()).add(reading)
        return why

    def extend(self, readings: Iterable[Reading]) -> None:
        """Readings recorded before (a restarted job's), each checked as it was then."""
        for reading in readings:
            self.add(reading)

    def has(self, node_id: str, round_: int) -> bool:
        return node_id in self._by_round.get(round_, {})

    def readings(self, round_: int) -> list[Reading]:
        """A round's readings, by node id."""
        return [r for _, r in sorted(self._by_round.get(round_, {}).items())]

    def summary(self, round_: int) -> dict[str, Any] | None:
        """The round's weighted mean over the nodes that reported, or None before any did."""
        totals = self._totals.get(round_)
        return totals.summary(round_) if totals is not None else None

    def summaries(self) -> list[dict[str, Any]]:
        """Every round's summary that has readings, by round."""
        return summaries(r for by_node in self._by_round.values() for r in by_node.values())


def summary(round_: int, readings: Sequence[Reading]) -> dict[str, Any]:
    """One round's weighted mean over its (non-empty) ``readings``: the summed correct over
    the summed samples; the loss over the readings that have one."""
    totals = _Totals()
    for reading in readings:
        totals.add(reading)
    return totals.summary(round_)


def summaries(readings: Iterable[Reading]) -> list[dict[str, Any]]:
    """Each round's summary of readings already counted (a finished run's, say), by round."""
    by_round: dict[int, list[Reading]] = {}
    for reading in readings:
        by_round.setdefault(reading.round, []).append(reading)
    return [summary(r, by_round[r]) for r in sorted(by_round)]
