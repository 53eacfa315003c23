"""Streaming FedAvg: exact means, refusals that change nothing, memory O(model)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from node.errors import FedavgError, WeightsError
from node.model import ModelSpec, init_state
from node.weights import Layout, expected_layout
from server.aggregation import (
    STRATEGIES,
    AggregationError,
    FedAvg,
    Strategy,
    make_strategy,
)

SETTINGS = settings(max_examples=200, deadline=None)

LAYOUT: Layout = {
    "w": ((2, 3), torch.float32),
    "b": ((3,), torch.float32),
}


def _close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in actual.items():
        assert value.dtype == torch.float32
        assert value.is_contiguous()
        torch.testing.assert_close(
            value.double(), expected[key].double(), rtol=1e-6, atol=1e-6, check_dtype=False
        )


def _update(fill: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 3), fill), "b": torch.full((3,), fill)}


def _tensors(obj: object) -> Iterator[torch.Tensor]:
    """Every tensor reachable from an object's attributes (slots or dict), recursively."""
    seen: set[int] = set()

    def walk(value: object) -> Iterator[torch.Tensor]:
        if id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from walk(item)
        elif isinstance(value, list | tuple | set | frozenset):
            for item in value:
                yield from walk(item)
        elif hasattr(value, "__slots__") or hasattr(value, "__dict__"):
            names = [
                s for cls in type(value).__mro__ for s in getattr(cls, "__slots__", ()) if s
            ] + list(getattr(value, "__dict__", {}))
            for name in names:
                if hasattr(value, name):
                    yield from walk(getattr(value, name))

    yield from walk(obj)


# --- literal means -------------------------------------------------------------------------


def test_weighted_literal() -> None:
    agg = FedAvg(LAYOUT)
    agg.add("a", _update(1.0), samples=1)
    agg.add("b", _update(4.0), samples=3)
    assert agg.count == 2
    assert agg.total_weight == 4
    _close(agg.result(), _update((1.0 * 1 + 4.0 * 3) / 4))


def test_uniform_literal_ignores_samples() -> None:
    agg = FedAvg(LAYOUT, weighting="uniform")
    agg.add("a", _update(1.0), samples=1)
    agg.add("b", _update(4.0), samples=1000)
    agg.add("c", _update(-2.0), samples=0)
    _close(agg.result(), _update(1.0))


def test_result_is_repeatable_and_independent_of_state() -> None:
    agg = FedAvg(LAYOUT)
    agg.add("a", _update(2.0), samples=5)
    first = agg.result()
    first["w"].fill_(99.0)
    _close(agg.result(), _update(2.0))


def test_half_precision_uploads_are_upcast() -> None:
    agg = FedAvg(LAYOUT)
    agg.add("a", {k: v.half() for k, v in _update(1.5).items()}, samples=1)
    agg.add("b", {k: v.bfloat16() for k, v in _update(2.5).items()}, samples=1)
    _close(agg.result(), _update(2.0))


def test_real_model_layout() -> None:
    spec = ModelSpec(hidden=(8,), dropout=())
    layout = expected_layout(spec)
    states = [init_state(spec, seed=s) for s in range(3)]
    agg = make_strategy("weighted", layout)
    for i, state in enumerate(states):
        agg.add(f"n{i}", state, samples=i + 1)
    expected = {
        k: torch.stack([(i + 1) * s[k].double() for i, s in enumerate(states)]).sum(0) / 6
        for k in layout
    }
    result = agg.result()
    assert {k: (tuple(v.shape), v.dtype) for k, v in result.items()} == {
        k: (shape, torch.float32) for k, (shape, _) in layout.items()
    }
    _close(result, expected)


# --- refusals ------------------------------------------------------------------------------


def _bad_updates() -> list[tuple[str, dict[str, torch.Tensor]]]:
    good = _update(1.0)
    return [
        ("missing key", {"w": good["w"]}),
        ("extra key", {**good, "z": torch.zeros(1)}),
        ("shape", {"w": torch.zeros(3, 2), "b": good["b"]}),
        ("int64", {"w": good["w"].long(), "b": good["b"]}),
        ("float64", {"w": good["w"].double(), "b": good["b"]}),
        ("nan", {"w": good["w"], "b": torch.tensor([0.0, math.nan, 0.0])}),
        ("inf", {"w": good["w"], "b": torch.tensor([0.0, 0.0, -math.inf])}),
    ]


@pytest.mark.parametrize(("why", "bad"), _bad_updates(), ids=[w for w, _ in _bad_updates()])
@pytest.mark.parametrize("weighting", ["weighted", "uniform"])
def test_bad_tensors_refused_with_nothing_folded(
    why: str, bad: dict[str, torch.Tensor], weighting: str
) -> None:
    agg = make_strategy(weighting, LAYOUT)
    agg.add("a", _update(2.0), samples=2)
    before = agg.result()
    with pytest.raises(WeightsError):
        agg.add("bad", bad, samples=2)
    assert agg.count == 1
    _close(agg.result(), before)
    agg.add("bad", _update(2.0), samples=2)  # the node may retry with a good update
    assert agg.count == 2


def test_duplicate_node_refused() -> None:
    agg = FedAvg(LAYOUT)
    agg.add("a", _update(1.0), samples=1)
    with pytest.raises(AggregationError, match="already"):
        agg.add("a", _update(9.0), samples=1)
    assert agg.count == 1
    _close(agg.result(), _update(1.0))


@pytest.mark.parametrize(
    ("weighting", "samples"), [("weighted", 0), ("weighted", -1), ("uniform", -1)]
)
def test_bad_sample_counts_refused(weighting: str, samples: int) -> None:
    agg = make_strategy(weighting, LAYOUT)
    with pytest.raises(AggregationError, match="samples"):
        agg.add("a", _update(1.0), samples=samples)
    assert agg.count == 0


@pytest.mark.parametrize("weighting", ["weighted", "uniform"])
def test_empty_result_refused(weighting: str) -> None:
    with pytest.raises(AggregationError):
        make_strategy(weighting, LAYOUT).result()


def test_errors_share_the_base() -> None:
    assert issubclass(AggregationError, FedavgError)


def test_make_strategy_and_unknown_name() -> None:
    assert STRATEGIES == ("weighted", "uniform")
    for name in STRATEGIES:
        strategy: Strategy = make_strategy(name, LAYOUT)
        assert strategy.name == name
        assert strategy.count == 0
    with pytest.raises(ValueError, match="weighted, uniform"):
        make_strategy("median", LAYOUT)
    with pytest.raises(ValueError):
        FedAvg(LAYOUT, weighting="median")  # type: ignore[arg-type]


# --- properties ----------------------------------------------------------------------------

values = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=32)
updates = st.lists(
    st.tuples(
        st.lists(values, min_size=9, max_size=9),
        st.integers(min_value=1, max_value=10_000),
    ),
    min_size=1,
    max_size=12,
)


def _as_state(flat: list[float]) -> dict[str, torch.Tensor]:
    t = torch.tensor(flat, dtype=torch.float32)
    return {"w": t[:6].reshape(2, 3), "b": t[6:]}


@SETTINGS
@given(updates, st.sampled_from(["weighted", "uniform"]))
def test_matches_reference_mean(ups: list[tuple[list[float], int]], weighting: str) -> None:
    agg = make_strategy(weighting, LAYOUT)
    for i, (flat, samples) in enumerate(ups):
        agg.add(f"n{i}", _as_state(flat), samples)
    weights = [float(s) if weighting == "weighted" else 1.0 for _, s in ups]
    stacked = torch.tensor([flat for flat, _ in ups], dtype=torch.float64)
    w = torch.tensor(weights, dtype=torch.float64)
    mean = (stacked * w[:, None]).sum(0) / w.sum()
    _close(agg.result(), {"w": mean[:6].reshape(2, 3), "b": mean[6:]})


@SETTINGS
@given(updates, st.randoms(use_true_random=False))
def test_order_independent_and_streaming_equals_batch(
    ups: list[tuple[list[float], int]], rnd: random.Random
) -> None:
    batch = make_strategy("weighted", LAYOUT)
    for i, (flat, samples) in enumerate(ups):
        batch.add(f"n{i}", _as_state(flat), samples)
    order = list(enumerate(ups))
    rnd.shuffle(order)
    streamed = make_strategy("weighted", LAYOUT)
    partials = []
    for i, (flat, samples) in order:
        streamed.add(f"n{i}", _as_state(flat), samples)
        partials.append(streamed.result())  # asking mid-stream must not disturb the sum
    _close(streamed.result(), batch.result())
    _close(partials[-1], batch.result())


def test_memory_is_one_accumulator_per_key() -> None:
    spec = ModelSpec(hidden=(32, 16), dropout=())
    layout = expected_layout(spec)
    model_numel = sum(math.prod(shape) for shape, _ in layout.values())
    for name in STRATEGIES:
        agg = make_strategy(name, layout)
        held = list(_tensors(agg))
        assert len(held) == len(layout)
        assert sum(t.numel() for t in held) == model_numel
        for i in range(50):
            agg.add(f"n{i}", init_state(spec, seed=i), samples=i + 1)
            held = list(_tensors(agg))
            assert len(held) == len(layout)
            assert sum(t.numel() for t in held) == model_numel
        assert agg.count == 50
