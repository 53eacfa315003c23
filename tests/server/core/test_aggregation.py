"""FedAvg (streaming, memory O(model)) and the robust median / trimmed mean beside it.

Exact results on literal tensors and against numpy references, refusals that change nothing
for every strategy, and an outlier that drags the mean but not the robust statistics.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from node.shared.errors import FedavgError, WeightsError
from node.shared.model import ModelSpec, build_model, init_state
from node.shared.weights import Layout, WeightsMeta, decode_weights, encode_weights, expected_layout
from server.core.aggregation import (
    FOLD_CHUNK,
    STRATEGIES,
    TRIM_BETA,
    AggregationError,
    CoordinateMedian,
    FedAvg,
    Strategy,
    TrimmedMean,
    UpdateBound,
    UpdateRefused,
    make_strategy,
    trim_count,
)
from server.settings import AGGREGATIONS

SETTINGS = settings(max_examples=200, deadline=None)
STREAMING = ("weighted", "uniform")
ROBUST = ("median", "trimmed_mean")

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
    agg.add(_update(1.0), samples=1)
    agg.add(_update(4.0), samples=3)
    assert agg.count == 2
    assert agg.total_weight == 4
    _close(agg.result(), _update((1.0 * 1 + 4.0 * 3) / 4))


def test_uniform_literal_ignores_samples() -> None:
    agg = FedAvg(LAYOUT, weighting="uniform")
    agg.add(_update(1.0), samples=1)
    agg.add(_update(4.0), samples=1000)
    agg.add(_update(-2.0), samples=0)
    _close(agg.result(), _update(1.0))


def test_result_is_repeatable_and_independent_of_state() -> None:
    agg = FedAvg(LAYOUT)
    agg.add(_update(2.0), samples=5)
    first = agg.result()
    first["w"].fill_(99.0)
    _close(agg.result(), _update(2.0))


def test_half_precision_uploads_are_upcast() -> None:
    agg = FedAvg(LAYOUT)
    agg.add({k: v.half() for k, v in _update(1.5).items()}, samples=1)
    agg.add({k: v.bfloat16() for k, v in _update(2.5).items()}, samples=1)
    _close(agg.result(), _update(2.0))


def test_real_model_layout() -> None:
    spec = ModelSpec(hidden=(8,), dropout=())
    layout = expected_layout(spec)
    states = [init_state(spec, seed=s) for s in range(3)]
    agg = make_strategy("weighted", layout)
    for i, state in enumerate(states):
        agg.add(state, samples=i + 1)
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
@pytest.mark.parametrize("name", STRATEGIES)
def test_bad_tensors_refused_with_nothing_folded(
    why: str, bad: dict[str, torch.Tensor], name: str
) -> None:
    agg = make_strategy(name, LAYOUT)
    agg.add(_update(2.0), samples=2)
    before = agg.result()
    with pytest.raises(WeightsError):
        agg.add(bad, samples=2)
    assert agg.count == 1
    _close(agg.result(), before)
    agg.add(_update(2.0), samples=2)  # the node may retry with a good update
    assert agg.count == 2


@pytest.mark.parametrize("name", STRATEGIES)
def test_empty_result_refused(name: str) -> None:
    with pytest.raises(AggregationError, match="no updates"):
        make_strategy(name, LAYOUT).result()


def test_errors_share_the_base() -> None:
    assert issubclass(AggregationError, FedavgError)


def test_make_strategy_and_unknown_name() -> None:
    assert STRATEGIES == ("weighted", "uniform", "median", "trimmed_mean")
    assert AGGREGATIONS == STRATEGIES  # the setting validates against the same names
    for name in STRATEGIES:
        strategy: Strategy = make_strategy(name, LAYOUT)
        assert strategy.name == name
        assert strategy.count == 0
    assert isinstance(make_strategy("median", LAYOUT), CoordinateMedian)
    trimmed = make_strategy("trimmed_mean", LAYOUT)
    assert isinstance(trimmed, TrimmedMean) and trimmed.beta == TRIM_BETA == 0.2
    with pytest.raises(ValueError, match="weighted, uniform, median, trimmed_mean"):
        make_strategy("krum", LAYOUT)
    with pytest.raises(ValueError):
        FedAvg(LAYOUT, weighting="median")  # type: ignore[arg-type]
    for beta in (-0.1, 0.5, 0.7, math.nan):
        with pytest.raises(ValueError, match="beta"):
            TrimmedMean(LAYOUT, beta=beta)


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
    for flat, samples in ups:
        agg.add(_as_state(flat), samples)
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
    for flat, samples in ups:
        batch.add(_as_state(flat), samples)
    order = list(ups)
    rnd.shuffle(order)
    streamed = make_strategy("weighted", LAYOUT)
    partials = []
    for flat, samples in order:
        streamed.add(_as_state(flat), samples)
        partials.append(streamed.result())  # asking mid-stream must not disturb the sum
    _close(streamed.result(), batch.result())
    _close(partials[-1], batch.result())


def test_memory_is_one_accumulator_per_key() -> None:
    spec = ModelSpec(hidden=(32, 16), dropout=())
    layout = expected_layout(spec)
    # One accumulator per key, plus one fixed-size scratch chunk for the float64 fold.
    expected_numel = sum(math.prod(shape) for shape, _ in layout.values()) + FOLD_CHUNK
    for name in STREAMING:
        agg = make_strategy(name, layout)
        held = list(_tensors(agg))
        assert len(held) == len(layout) + 1
        assert sum(t.numel() for t in held) == expected_numel
        for _round in range(2):
            for i in range(50):
                agg.add(init_state(spec, seed=i), samples=i + 1)
                held = list(_tensors(agg))
                assert len(held) == len(layout) + 1
                assert sum(t.numel() for t in held) == expected_numel
            assert agg.count == 50
            agg.reset()  # the next round reuses the same memory


@pytest.mark.parametrize("name", ROBUST)
def test_robust_strategies_hold_one_float32_copy_per_update(name: str) -> None:
    """The documented price of robustness: memory O(nodes x model), float32, nothing more."""
    spec = ModelSpec(hidden=(32, 16), dropout=())
    layout = expected_layout(spec)
    model_numel = sum(math.prod(shape) for shape, _ in layout.values())
    agg = make_strategy(name, layout)
    assert list(_tensors(agg)) == []
    for i in range(5):
        agg.add({k: v.half() for k, v in init_state(spec, seed=i).items()}, samples=1)
        held = list(_tensors(agg))
        assert len(held) == (i + 1) * len(layout)
        assert sum(t.numel() for t in held) == (i + 1) * model_numel
        assert all(t.dtype == torch.float32 for t in held)


# --- robust statistics: literals -----------------------------------------------------------


def _add_all(name: str, fills: list[float]) -> dict[str, torch.Tensor]:
    agg = make_strategy(name, LAYOUT)
    for i, fill in enumerate(fills):
        agg.add(_update(fill), samples=i + 1)
    return agg.result()


@pytest.mark.parametrize(
    ("fills", "expected"),
    [
        ([7.0], 7.0),
        ([3.0, 1.0, 2.0], 2.0),
        ([4.0, 1.0, 10.0, 2.0], 3.0),  # torch.median would say 2.0 (the lower middle)
        ([1.0, 2.0], 1.5),
        ([-1.0, 5.0, 5.0, 100.0, -50.0, 6.0], 5.0),
    ],
)
def test_median_literal_is_the_true_median(fills: list[float], expected: float) -> None:
    _close(_add_all("median", fills), _update(expected))


def test_median_is_per_coordinate_and_ignores_samples() -> None:
    agg = CoordinateMedian(LAYOUT)
    agg.add({"w": torch.tensor([[0.0, 9.0, 1.0], [5.0, 5.0, 5.0]]), "b": torch.zeros(3)}, 1)
    agg.add({"w": torch.tensor([[1.0, 0.0, 2.0], [5.0, 6.0, 7.0]]), "b": torch.ones(3)}, 99)
    agg.add({"w": torch.tensor([[2.0, 1.0, 0.0], [5.0, 7.0, 6.0]]), "b": torch.ones(3)}, 1)
    _close(
        agg.result(),
        {"w": torch.tensor([[1.0, 1.0, 1.0], [5.0, 6.0, 6.0]]), "b": torch.ones(3)},
    )


@pytest.mark.parametrize(
    ("n", "beta", "k"),
    [
        (1, 0.2, 0),
        (2, 0.2, 0),  # too few to trim: the plain mean
        (3, 0.2, 1),  # floor(0.6) = 0, raised to one so a lone attacker is still dropped
        (4, 0.2, 1),
        (9, 0.2, 1),
        (10, 0.2, 2),
        (14, 0.2, 2),
        (15, 0.2, 3),
        (100, 0.2, 20),
        (10, 0.0, 0),
        (3, 0.49, 1),
        (4, 0.49, 1),
        (100, 0.49, 49),
    ],
)
def test_trim_count(n: int, beta: float, k: int) -> None:
    assert trim_count(n, beta) == k
    assert n - 2 * k >= 1


@pytest.mark.parametrize(
    ("fills", "expected"),
    [
        ([7.0], 7.0),
        ([1.0, 4.0], 2.5),  # n = 2: nothing to trim, the plain (unweighted) mean
        ([3.0, -90.0, 2.0], 2.0),
        ([0.0, 1.0, 2.0, 3.0, 100.0], 2.0),
        ([-1e3, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 1e3], 3.5),  # n = 10: k = 2
    ],
)
def test_trimmed_mean_literal(fills: list[float], expected: float) -> None:
    _close(_add_all("trimmed_mean", fills), _update(expected))


def test_trimmed_mean_beta_zero_is_the_plain_mean() -> None:
    agg = TrimmedMean(LAYOUT, beta=0.0)
    for fill in [0.0, 1.0, 2.0, 3.0, 100.0]:
        agg.add(_update(fill), samples=1)
    _close(agg.result(), _update(21.2))


@pytest.mark.parametrize("name", ROBUST)
def test_one_outlier_moves_fedavg_but_not_the_robust_statistics(name: str) -> None:
    honest = [1.0, 1.2, 0.8]
    poisoned = -1e4
    fills = [*honest, poisoned]
    mean = _add_all("weighted", fills)
    assert float(mean["w"][0, 0]) < -1000  # one node in four drags the weighted mean away
    robust = _add_all(name, fills)
    for value in robust.values():
        assert bool(((value >= min(honest)) & (value <= max(honest))).all())
    _close(robust, _update(0.9))  # k = 1 at n = 4: the mean of the middle two, 0.8 and 1.0


@pytest.mark.parametrize("name", ROBUST)
def test_robust_results_are_private_and_repeatable(name: str) -> None:
    agg = make_strategy(name, LAYOUT)
    mine = _update(2.0)
    agg.add(mine, samples=1)
    mine["w"].fill_(-5.0)  # the caller reusing its buffer must not reach the kept copy
    first = agg.result()
    first["b"].fill_(99.0)
    _close(agg.result(), _update(2.0))


@pytest.mark.parametrize("name", ROBUST)
def test_robust_half_precision_and_real_layout(name: str) -> None:
    agg = make_strategy(name, LAYOUT)
    agg.add({k: v.half() for k, v in _update(1.5).items()}, samples=1)
    agg.add({k: v.bfloat16() for k, v in _update(2.5).items()}, samples=1)
    _close(agg.result(), _update(2.0))

    spec = ModelSpec(hidden=(8,), dropout=())
    layout = expected_layout(spec)
    states = [init_state(spec, seed=s) for s in range(3)]
    agg = make_strategy(name, layout)
    for i, state in enumerate(states):
        agg.add(state, samples=i + 1)
    expected = {k: torch.stack([s[k] for s in states]).median(dim=0).values for k in layout}
    _close(agg.result(), expected)  # odd n: torch's median is the true one


# --- robust statistics: properties ---------------------------------------------------------


def _reference(name: str, stacked: np.ndarray) -> np.ndarray:
    """numpy's view of the statistic over axis 0, in float64."""
    if name == "median":
        result: np.ndarray = np.median(stacked, axis=0)
        return result
    n = stacked.shape[0]
    k = math.floor(TRIM_BETA * n) if n >= 5 else (1 if n >= 3 else 0)  # at least 1 from n = 3
    result = np.sort(stacked, axis=0)[k : n - k].mean(axis=0)
    return result


@SETTINGS
@given(updates, st.sampled_from(ROBUST), st.randoms(use_true_random=False))
def test_robust_matches_numpy_reference_in_any_order(
    ups: list[tuple[list[float], int]], name: str, rnd: random.Random
) -> None:
    order = list(ups)
    rnd.shuffle(order)
    agg = make_strategy(name, LAYOUT)
    for flat, samples in order:
        agg.add(_as_state(flat), samples)
    stacked = np.array([flat for flat, _ in ups], dtype=np.float32).astype(np.float64)
    expected = torch.from_numpy(_reference(name, stacked))
    _close(agg.result(), {"w": expected[:6].reshape(2, 3), "b": expected[6:]})


@SETTINGS
@given(
    st.lists(st.lists(values, min_size=9, max_size=9), min_size=3, max_size=12),
    st.sampled_from(ROBUST),
    st.floats(min_value=1e6, max_value=2.0**100, width=32),
    st.booleans(),
)
def test_a_minority_cannot_leave_the_honest_range(
    honest: list[list[float]], name: str, size: float, negative: bool
) -> None:
    """As many attackers as the strategy tolerates leave every coordinate within the range
    the honest updates span, however large their values and claimed sample counts."""
    h = len(honest)

    def tolerated(bad: int) -> bool:
        """The median: any minority; the trimmed mean: at most k of the n = h + bad values."""
        return bad < h if name == "median" else bad <= trim_count(h + bad)

    n_bad = max(b for b in range(h) if tolerated(b))
    assert n_bad >= 1
    agg = make_strategy(name, LAYOUT)
    for flat in honest:
        agg.add(_as_state(flat), samples=1)
    for _ in range(n_bad):
        agg.add(_as_state([-size if negative else size] * 9), samples=10**6)
    result = torch.cat([agg.result()["w"].flatten(), agg.result()["b"]])
    good = torch.tensor(honest, dtype=torch.float32)
    assert bool((result >= good.min(0).values).all() and (result <= good.max(0).values).all())


@pytest.mark.parametrize("name", STRATEGIES)
def test_reset_starts_a_round_like_a_fresh_strategy(name: str) -> None:
    reused = make_strategy(name, LAYOUT)
    for i in range(3):
        reused.add(_update(100.0 + i), samples=i + 1)
    reused.reset()
    assert reused.count == 0
    with pytest.raises(AggregationError):
        reused.result()
    fresh = make_strategy(name, LAYOUT)
    for strategy in (reused, fresh):
        for i in range(3):
            strategy.add(_update(float(i)), samples=i + 1)  # a new round
    _close(reused.result(), fresh.result())


@pytest.mark.parametrize("weighting", STREAMING)
def test_fold_across_chunk_boundaries_matches_float64(weighting: str) -> None:
    """Tensors longer than one fold chunk (and not a multiple of it) average exactly."""
    layout: Layout = {"big": ((FOLD_CHUNK * 2 + 7,), torch.float32), "b": ((3,), torch.float16)}
    gen = torch.Generator().manual_seed(0)
    ups = [
        {"big": torch.randn(FOLD_CHUNK * 2 + 7, generator=gen), "b": torch.randn(3).half()}
        for _ in range(3)
    ]
    agg = make_strategy(weighting, layout)
    for i, up in enumerate(ups):
        agg.add(up, samples=10 * (i + 1))
    w = [10.0 * (i + 1) if weighting == "weighted" else 1.0 for i in range(3)]
    expected = {
        k: torch.stack([wi * up[k].double() for wi, up in zip(w, ups, strict=True)]).sum(0) / sum(w)
        for k in layout
    }
    out = {k: torch.full(shape, float("nan")) for k, (shape, _) in layout.items()}
    agg.result_into(out)
    _close(out, expected)
    _close(agg.result(), expected)


# -- the update bound: how far one update may move the global model --------------------------


def _global_model() -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 3), 2.0), "b": torch.full((3,), 2.0)}  # norm 6


@pytest.mark.parametrize("name", STRATEGIES)
def test_an_absurdly_scaled_update_is_refused_and_changes_nothing(name: str) -> None:
    strategy = make_strategy(name, LAYOUT)
    strategy.reset(UpdateBound.around(_global_model(), max_ratio=10.0))
    strategy.add(_update(1.0), 5)
    for scale in (1e30, 1e6, 100.0):
        with pytest.raises(UpdateRefused, match="FEDAVG_MAX_UPDATE_RATIO"):
            strategy.add(_update(2.0 * scale), 5)
    assert strategy.count == 1
    _close(strategy.result(), _update(1.0))


def test_updates_within_the_bound_are_folded() -> None:
    bound = UpdateBound.around(_global_model(), max_ratio=10.0)
    assert bound.reference_norm == pytest.approx(6.0)
    assert bound.limit == pytest.approx(60.0)
    bound.check(_update(0.0))  # all zeros: exactly 1x the model's norm
    bound.check(_update(-2.0))  # sign flipped: 2x
    bound.check(_update(2.0 + 19.9))  # 9 values 19.9 away: 59.7, just inside
    with pytest.raises(UpdateRefused):
        bound.check(_update(2.0 + 20.1))


def test_a_tiny_global_model_is_bounded_by_one_not_by_its_norm() -> None:
    zeros = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    bound = UpdateBound.around(zeros, max_ratio=2.0)
    assert bound.limit == 2.0
    bound.check(_update(0.5))  # norm 1.5
    with pytest.raises(UpdateRefused):
        bound.check(_update(1.0))  # norm 3


def test_a_zero_ratio_turns_the_bound_off() -> None:
    UpdateBound.around(_global_model(), max_ratio=0.0).check(_update(1e30))


def test_the_bound_reads_half_precision_uploads_and_references() -> None:
    reference = {k: v.to(torch.bfloat16) for k, v in _global_model().items()}
    bound = UpdateBound.around(reference, max_ratio=10.0)
    bound.check({k: v.to(torch.float16) for k, v in _update(3.0).items()})
    with pytest.raises(UpdateRefused):
        bound.check({k: v.to(torch.float16) for k, v in _update(3e4).items()})


def test_the_distance_is_exact_across_fold_chunks() -> None:
    n = FOLD_CHUNK * 2 + 7
    layout: Layout = {"big": ((n,), torch.float32)}
    reference = {"big": torch.zeros(n)}
    update = {"big": torch.ones(n)}
    bound = UpdateBound.around(reference, max_ratio=math.sqrt(n) * 1.0001)
    bound.check(update)  # distance sqrt(n), limit just above
    with pytest.raises(UpdateRefused):
        UpdateBound.around(reference, max_ratio=math.sqrt(n) * 0.9999).check(update)
    strategy = FedAvg(layout)
    strategy.reset(bound)
    strategy.add(update, 1)


def test_fedavg_over_two_group_norm_resnets_is_the_sample_weighted_mean() -> None:
    spec = ModelSpec(arch="resnet", input_shape=(3, 8, 8), channels=(4, 8), depth=6)
    layout = expected_layout(spec)
    assert any(".norm" in k for k in layout)  # GroupNorm's affine weights travel like any other
    a, b = init_state(spec, seed=1), init_state(spec, seed=2)
    agg = make_strategy("weighted", layout)
    agg.add(a, samples=3)
    agg.add(b, samples=1)
    _close(agg.result(), {k: (3 * a[k].double() + b[k].double()) / 4 for k in layout})


def test_batch_norm_statistics_travel_as_float_weights_and_are_averaged() -> None:
    """BatchNorm's running mean and variance are state like any weight (float, averaged by
    samples); its int64 step counter is not kept, so the float-only weights path takes it."""
    spec = ModelSpec(arch="resnet", input_shape=(3, 8, 8), channels=(4,), depth=8, norm="batch")
    layout = expected_layout(spec)
    assert not any(k.endswith("num_batches_tracked") for k in layout)
    stats = [k for k in layout if k.endswith(("running_mean", "running_var"))]
    assert stats and all(layout[k][1] == torch.float32 for k in stats)

    def trained(seed: int) -> dict[str, torch.Tensor]:
        model = build_model(spec)
        model.load_state_dict(init_state(spec, 0))
        model.train()
        with torch.no_grad():
            model(torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) + seed)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    a, b = trained(1), trained(2)
    key = stats[0]
    assert not torch.equal(a[key], b[key])  # each node's batches moved its statistics
    strategy = FedAvg(layout)
    strategy.add(a, 30)
    strategy.add(b, 10)
    mean = strategy.result()
    torch.testing.assert_close(mean[key], (3 * a[key] + b[key]) / 4)
    data = encode_weights(mean, WeightsMeta(spec=spec))
    state, meta = decode_weights(data)
    assert meta.spec.norm == "batch"
    model = build_model(spec)
    model.load_state_dict(state)  # strict: exactly the built model's keys
    model.eval()
    assert torch.isfinite(model(torch.zeros(2, 3, 8, 8))).all()
