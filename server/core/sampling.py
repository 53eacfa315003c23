"""Client sampling: which of the connected nodes train in a round (McMahan et al. 2017's C).

A job with ``fraction`` C < 1 trains, each round, a seeded sample of the nodes that are
connected when the round opens: ``max(min_nodes, ceil(C * n))`` of the ``n``, capped at
``n``. McMahan et al. take ``max(C * K, 1)`` clients; Flower's ``fraction_fit`` and
``min_fit_clients`` are the same two knobs (Flower rounds ``C * n`` down, we round up, so a
fraction never samples nobody).

Who is picked is rendezvous hashing: every node gets the score
``sha256(seed, job, round, node id)``, and the round takes the ``k`` lowest scores among the
candidates. So the sample is a function of the seed, the job, the round and the candidate
set alone: a restarted orchestrator draws the same sequence, anyone can recompute it from
``/sync/status``, and a node that comes or goes changes the sample only by itself (the others
keep their places unless ``k`` moves). A node cannot pick an id that scores well: the
score includes the job's id, made when the job starts, after the node's id was bound to its
secret (``server.registry``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

SAMPLING_FIELDS: Final = ("fraction", "min_nodes")  # a job request's names for them
MAX_MIN_NODES: Final = 100_000
"""``min_nodes`` above this is a typo: the bench's largest federation is 10,000 nodes."""


class SamplingError(ValueError):
    """Sampling settings that are out of range; the message names the field."""


@dataclass(frozen=True, slots=True)
class Sampling:
    """How many nodes a round trains: ``fraction`` of the connected ones, at least
    ``min_nodes``. The default, fraction 1, is every node (today's behaviour)."""

    fraction: float = 1.0
    min_nodes: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.fraction, int | float) and 0 < self.fraction <= 1):
            raise SamplingError("fraction must be a number in (0, 1]")
        if isinstance(self.min_nodes, bool) or not isinstance(self.min_nodes, int):
            raise SamplingError("min_nodes must be a whole number")
        if not 1 <= self.min_nodes <= MAX_MIN_NODES:
            raise SamplingError(f"min_nodes must be 1..{MAX_MIN_NODES}")

    @property
    def everyone(self) -> bool:
        return self.fraction >= 1

    def size(self, available: int) -> int:
        """How many of ``available`` nodes a round trains (all of them when fewer than
        ``min_nodes``: the caller decides whether such a round may open)."""
        wanted = max(self.min_nodes, math.ceil(self.fraction * available - 1e-9))
        return min(available, wanted)

    def view(self) -> dict[str, Any]:
        return {"fraction": self.fraction, "min_nodes": self.min_nodes}


EVERYONE: Final = Sampling()


def score(seed: int, job_id: str, round_: int, node_id: str) -> str:
    """A node's place in a round's draw: the lower, the sooner it is picked."""
    text = f"fedavg-sample\0{seed}\0{job_id}\0{round_}\0{node_id}"
    return hashlib.sha256(text.encode()).hexdigest()


def sample_nodes(
    candidates: Iterable[str], sampling: Sampling, *, seed: int, job_id: str, round_: int
) -> list[str]:
    """The nodes, sorted, that train in ``round_``: every candidate when the sampling takes
    everyone, else the :meth:`Sampling.size` candidates with the lowest :func:`score`."""
    pool = sorted(set(candidates))
    k = sampling.size(len(pool))
    if k == len(pool):
        return pool
    ranked = sorted(pool, key=lambda node_id: score(seed, job_id, round_, node_id))
    return sorted(ranked[:k])


def parse_sampling(
    fraction: Any = None, min_nodes: Any = None, default: Sampling = EVERYONE
) -> Sampling:
    """``fraction`` and ``min_nodes`` as a query string or a JSON body gives them (strings or
    numbers; None: the default's); errors name the field."""
    chosen_fraction = default.fraction if fraction is None else _number("fraction", fraction)
    chosen_min = default.min_nodes if min_nodes is None else _whole("min_nodes", min_nodes)
    return Sampling(fraction=chosen_fraction, min_nodes=chosen_min)


def _number(field: str, value: Any) -> float:
    if isinstance(value, bool):
        raise SamplingError(f"{field} must be a number in (0, 1]")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SamplingError(
            f"{field} must be a number in (0, 1], not {str(value)[:40]!r}"
        ) from None
    if not math.isfinite(number):
        raise SamplingError(f"{field} must be a number in (0, 1]")
    return number


def _whole(field: str, value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise SamplingError(f"{field} must be a whole number")
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise SamplingError(f"{field} must be a whole number, not {str(value)[:40]!r}") from None
