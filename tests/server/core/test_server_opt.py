"""Server optimizers: each one against its formula (Reddi et al. 2021, Hsu et al. 2019) on
literal tensors, FedAvg kept bit for bit, refusals naming their field, state that survives
a restart through safetensors, and a robust combine followed by an adaptive step.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from node.shared.errors import WeightsError
from node.shared.weights import Layout
from server.core.aggregation import AggregationError, CoordinateMedian, make_strategy
from server.core.server_opt import (
    HYPER_FIELDS,
    SERVER_OPTIMIZERS,
    FedAdagrad,
    FedAdam,
    FedAvgM,
    FedYogi,
    NoServerOptimizer,
    ServerOptimizer,
    StepRefused,
    make_server_optimizer,
    server_optimizer_from_config,
)

LAYOUT: Layout = {"w": ((2, 2), torch.float32), "b": ((3,), torch.float32)}
G0 = {"w": torch.tensor([[1.0, -2.0], [0.5, 0.0]]), "b": torch.tensor([3.0, -0.25, 0.125])}
# Three rounds' pseudo-gradients: big then small (Yogi's v then shrinks), signs that flip.
DELTAS = [
    {"w": torch.tensor([[0.5, -0.3], [0.02, 0.0]]), "b": torch.tensor([0.1, 0.2, -0.4])},
    {"w": torch.tensor([[0.01, 0.3], [-0.5, 0.05]]), "b": torch.tensor([-0.2, 0.002, 0.4])},
    {"w": torch.tensor([[-0.2, 0.1], [0.25, -0.05]]), "b": torch.tensor([0.3, -0.1, 0.01])},
]
ADAPTIVE = ("fedadagrad", "fedadam", "fedyogi")
WITH_STATE = {
    "fedavgm": {"server_lr": 0.5, "server_momentum": 0.9},
    "fedadagrad": {},
    "fedadam": {},
    "fedyogi": {},
}


def _steps(
    opt: ServerOptimizer, g: dict[str, torch.Tensor], deltas: list[dict[str, torch.Tensor]]
) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """Run rounds whose combined update is ``g + delta``; yields (combined, new weights)."""
    for delta in deltas:
        combined = {k: g[k] + delta[k] for k in g}
        g = opt.step(g, combined)
        yield combined, g


def _reference(
    name: str, hyper: dict[str, float], combined: list[dict[str, list[float]]]
) -> list[dict[str, list[float]]]:
    """The paper's rules written out on plain floats, one coordinate at a time."""
    eta, tau = hyper["server_lr"], hyper.get("tau", 0.0)
    b1, b2, mom = (
        hyper.get("beta1", 0.0),
        hyper.get("beta2", 0.0),
        hyper.get("server_momentum", 0.0),
    )
    out = []
    g = {k: [float(x) for x in v.reshape(-1)] for k, v in G0.items()}
    state = {k: [(0.0, tau * tau) for _ in v] for k, v in g.items()}  # (m, v); v_{-1} = tau^2
    for round_ in combined:
        new = {}
        for key, values in g.items():
            row = []
            for i, (w, c) in enumerate(zip(values, round_[key], strict=True)):
                d = c - w
                m, v = state[key][i]
                if name == "fedavgm":
                    m = mom * m + d
                    row.append(w + eta * m)
                else:
                    m = b1 * m + (1 - b1) * d
                    if name == "fedadagrad":
                        v = v + d * d
                    elif name == "fedadam":
                        v = b2 * v + (1 - b2) * d * d
                    else:
                        v = v - (1 - b2) * d * d * math.copysign(1.0, v - d * d)
                    row.append(w + eta * m / (math.sqrt(v) + tau))
                state[key][i] = (m, v)
            new[key] = row
        g = new
        out.append(new)
    return out


def _as_lists(tensors: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    return {k: [float(x) for x in v.reshape(-1)] for k, v in tensors.items()}


@pytest.mark.parametrize(
    ("name", "hyper"),
    [
        ("fedavgm", {"server_lr": 0.5, "server_momentum": 0.9}),
        ("fedavgm", {"server_lr": 2.0}),
        ("fedadagrad", {}),
        ("fedadagrad", {"beta1": 0.5, "server_lr": 0.3, "tau": 0.01}),
        ("fedadam", {}),
        ("fedadam", {"beta1": 0.0, "beta2": 0.5, "tau": 1e-9}),
        ("fedyogi", {}),
        ("fedyogi", {"server_lr": 0.1, "beta2": 0.9}),
    ],
)
def test_each_optimizer_follows_its_formula_over_three_rounds(
    name: str, hyper: dict[str, float]
) -> None:
    opt = make_server_optimizer(name, LAYOUT, **hyper)
    assert isinstance(opt.config["server_lr"], float)
    full = {k: float(v) for k, v in opt.config.items() if k != "strategy"}
    rounds = list(_steps(opt, G0, DELTAS))
    expected = _reference(name, full, [_as_lists(c) for c, _ in rounds])
    for (_, got), want in zip(rounds, expected, strict=True):
        for key, value in got.items():
            assert value.dtype == torch.float32 and value.shape == G0[key].shape
            torch.testing.assert_close(
                value.reshape(-1).double(),
                torch.tensor(want[key], dtype=torch.float64),
                rtol=1e-5,
                atol=1e-6,
            )


def test_one_fedadam_step_by_hand() -> None:
    # Flower's defaults: eta 0.1, beta1 0.9, beta2 0.99, tau 1e-3; v starts at tau^2.
    opt = FedAdam({"x": ((1,), torch.float32)})
    got = opt.step({"x": torch.tensor([1.0])}, {"x": torch.tensor([1.5])})
    m = 0.1 * 0.5  # (1 - beta1) * delta
    v = 0.99 * 1e-6 + 0.01 * 0.25  # beta2 * tau^2 + (1 - beta2) * delta^2
    assert math.isclose(float(got["x"]), 1.0 + 0.1 * m / (math.sqrt(v) + 1e-3), rel_tol=1e-6)
    assert math.isclose(float(got["x"]), 1.0980199, rel_tol=1e-6)
    state = opt.state_dict()
    assert math.isclose(float(state["opt.m.x"]), 0.05, rel_tol=1e-6)
    assert math.isclose(float(state["opt.v.x"]), 0.00250099, rel_tol=1e-6)


def test_one_fedyogi_step_by_hand_and_its_sign() -> None:
    opt = FedYogi({"x": ((2,), torch.float32)}, beta2=0.5, tau=0.5)
    # v starts at 0.25: delta^2 = 1 is above it (v grows), 0.01 below it (v shrinks).
    opt.step({"x": torch.tensor([0.0, 0.0])}, {"x": torch.tensor([1.0, 0.1])})
    torch.testing.assert_close(opt.state_dict()["opt.v.x"], torch.tensor([0.75, 0.245]))


def test_none_is_exactly_the_combined_weights() -> None:
    opt = make_server_optimizer("none", LAYOUT)
    assert isinstance(opt, NoServerOptimizer) and opt.config == {"strategy": "none"}
    combined = {k: v + DELTAS[0][k] for k, v in G0.items()}
    got = opt.step(G0, combined)
    assert all(got[k] is combined[k] for k in combined)  # the same tensors: not even a copy
    assert opt.state_dict() == {}


def test_fedavgm_with_its_defaults_is_fedavg_bit_for_bit() -> None:
    uploads = [(torch.full((3,), 0.1 * i) + 1 / 3, i) for i in (1, 2, 5)]
    strategy = make_strategy("weighted", {"b": ((3,), torch.float32)})
    for tensor, samples in uploads:
        strategy.add({"b": tensor}, samples)
    mean = strategy.result()
    for hyper in ({}, {"server_lr": 1.0, "server_momentum": 0.0}):
        opt = make_server_optimizer("fedavgm", {"b": ((3,), torch.float32)}, **hyper)
        got = opt.step({"b": torch.tensor([0.3, -7.0, 1e-3])}, mean)
        assert torch.equal(got["b"], mean["b"])
        assert opt.state_dict() == {}  # momentum 0: nothing to keep


def test_fedavgm_without_momentum_keeps_no_state_but_scales_the_step() -> None:
    opt = FedAvgM(LAYOUT, server_lr=0.5)
    combined = {k: v + DELTAS[0][k] for k, v in G0.items()}
    got = opt.step(G0, combined)
    for key in G0:
        torch.testing.assert_close(got[key], G0[key] + 0.5 * DELTAS[0][key])
    assert opt.state_dict() == {}


@pytest.mark.parametrize("name", sorted(WITH_STATE))
def test_a_restart_mid_run_continues_exactly(name: str) -> None:
    uninterrupted = make_server_optimizer(name, LAYOUT, **WITH_STATE[name])
    first = list(_steps(uninterrupted, G0, DELTAS[:2]))
    g = first[-1][1]
    # The checkpoint: the round's weights and the optimizer's state in one safetensors file,
    # and its config as JSON (what a run's row would hold).
    state = uninterrupted.state_dict()
    assert state and all(k.startswith("opt.") for k in state)
    assert not set(state) & set(g)
    blob = save_safetensors({**g, **state})
    config = json.loads(json.dumps(uninterrupted.config))

    loaded = load_safetensors(blob)
    restarted = server_optimizer_from_config(config, LAYOUT)
    restarted.load_state_dict({k: v for k, v in loaded.items() if k.startswith("opt.")})
    resumed_g = {k: loaded[k] for k in LAYOUT}
    later = [DELTAS[2], DELTAS[0]]
    for (_, a), (_, b) in zip(
        _steps(uninterrupted, g, later), _steps(restarted, resumed_g, later), strict=True
    ):
        assert all(torch.equal(a[k], b[k]) for k in LAYOUT)
    after_a, after_b = uninterrupted.state_dict(), restarted.state_dict()
    assert after_a.keys() == after_b.keys()
    assert all(torch.equal(after_a[k], after_b[k]) for k in after_a)


def test_a_state_dict_is_a_snapshot_and_loading_copies() -> None:
    opt = FedAdam(LAYOUT)
    snapshot = {k: v for k, v in opt.state_dict().items()}
    before = {k: v.clone() for k, v in snapshot.items()}
    list(_steps(opt, G0, DELTAS[:1]))
    assert all(torch.equal(snapshot[k], before[k]) for k in snapshot)  # a step replaced them
    source = {k: v.clone() for k, v in opt.state_dict().items()}
    other = FedAdam(LAYOUT)
    other.load_state_dict(source)
    for tensor in source.values():
        tensor.fill_(7.0)
    assert not any(torch.equal(v, source[k]) for k, v in other.state_dict().items())


@pytest.mark.parametrize(
    ("state", "fragment"),
    [
        ({}, "keys do not match"),
        ({"opt.m.w": torch.zeros(2, 2)}, "keys do not match"),
        (
            {
                "opt.m.w": torch.zeros(4),
                "opt.m.b": torch.zeros(3),
                **{"opt.v.w": torch.zeros(2, 2), "opt.v.b": torch.zeros(3)},
            },
            "opt.m.w: shape",
        ),
        (
            {
                "opt.m.w": torch.zeros(2, 2),
                "opt.m.b": torch.zeros(3),
                "opt.v.w": torch.full((2, 2), math.nan),
                "opt.v.b": torch.zeros(3),
            },
            "opt.v.w: contains NaN",
        ),
        (
            {
                "opt.m.w": torch.zeros(2, 2, dtype=torch.int64),
                "opt.m.b": torch.zeros(3),
                "opt.v.w": torch.zeros(2, 2),
                "opt.v.b": torch.zeros(3),
            },
            "opt.m.w: dtype",
        ),
    ],
)
def test_a_state_that_does_not_fit_is_refused(
    state: dict[str, torch.Tensor], fragment: str
) -> None:
    opt = FedYogi(LAYOUT)
    before = opt.state_dict()
    with pytest.raises(WeightsError, match=fragment):
        opt.load_state_dict(state)
    assert opt.state_dict() == before


def test_state_of_another_optimizer_is_refused() -> None:
    momentum = FedAvgM(LAYOUT, server_momentum=0.9).state_dict()
    with pytest.raises(WeightsError, match="keys do not match"):
        FedAdam(LAYOUT).load_state_dict(momentum)
    with pytest.raises(WeightsError, match="keys do not match"):
        NoServerOptimizer().load_state_dict(momentum)


def test_a_step_that_is_not_finite_changes_nothing() -> None:
    opt = FedAdam(LAYOUT)
    list(_steps(opt, G0, DELTAS[:1]))
    before = {k: v.clone() for k, v in opt.state_dict().items()}
    big = {"w": torch.full((2, 2), 3e38), "b": torch.zeros(3)}
    with pytest.raises(StepRefused, match="not finite") as caught:
        opt.step({"w": -big["w"], "b": big["b"]}, big)  # delta = 6e38: inf in float32
    assert isinstance(caught.value, AggregationError)
    assert all(torch.equal(v, before[k]) for k, v in opt.state_dict().items())


def test_weights_that_do_not_fit_the_layout_are_refused() -> None:
    with pytest.raises(WeightsError, match="keys do not match"):
        FedAdam(LAYOUT).step(G0, {"w": G0["w"]})
    with pytest.raises(WeightsError, match="NaN"):
        FedAdam(LAYOUT).step(G0, {"w": G0["w"], "b": torch.full((3,), math.nan)})


def test_half_precision_global_weights_are_read_as_float32() -> None:
    # The published weights may travel in bfloat16; the step still works and yields float32.
    g = {k: v.to(torch.bfloat16) for k, v in G0.items()}
    combined = {k: v.float() + DELTAS[0][k] for k, v in g.items()}
    got = FedAdam(LAYOUT).step(g, combined)
    assert all(v.dtype == torch.float32 for v in got.values())


@pytest.mark.parametrize(
    ("name", "hyper", "fragment"),
    [
        ("adamw", {}, "strategy: unknown server optimizer 'adamw'"),
        (["fedadam"], {}, "strategy: unknown server optimizer"),
        ("fedadam", {"server_lr": 0}, r"server_lr: must be within \(0, 100\]"),
        ("fedadam", {"server_lr": -0.1}, "server_lr: must be within"),
        ("fedadam", {"server_lr": 1e3}, "server_lr: must be within"),
        ("fedadam", {"server_lr": math.nan}, "server_lr: expected a finite number"),
        ("fedadam", {"server_lr": "0.1"}, "server_lr: expected a finite number"),
        ("fedadam", {"server_lr": True}, "server_lr: expected a finite number"),
        ("fedadam", {"server_lr": 10**400}, "server_lr: expected a finite number"),
        ("fedavgm", {"server_momentum": 1.0}, r"server_momentum: must be within \[0, 1\)"),
        ("fedavgm", {"server_momentum": -0.1}, "server_momentum: must be within"),
        ("fedadam", {"beta1": 1.0}, r"beta1: must be within \[0, 1\)"),
        ("fedyogi", {"beta2": -0.01}, "beta2: must be within"),
        ("fedyogi", {"beta2": math.inf}, "beta2: expected a finite number"),
        ("fedadam", {"tau": 0}, r"tau: must be within \(0, 1\]"),
        ("fedadagrad", {"tau": 2.0}, "tau: must be within"),
        ("fedadam", {"server_momentum": 0.9}, "server_momentum: fedadam does not use it"),
        ("fedadagrad", {"beta2": 0.99}, "beta2: fedadagrad does not use it"),
        ("fedavgm", {"tau": 1e-3}, "tau: fedavgm does not use it"),
        ("none", {"server_lr": 1.0}, "server_lr: none does not use it"),
    ],
)
def test_bad_hyper_parameters_are_refused_naming_the_field(
    name: object, hyper: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ValueError, match=fragment):
        make_server_optimizer(name, LAYOUT, **hyper)  # type: ignore[arg-type]


def test_the_classes_check_their_bounds_too() -> None:
    with pytest.raises(ValueError, match="server_lr: must be within"):
        FedAdagrad(LAYOUT, server_lr=-1.0)
    with pytest.raises(ValueError, match="strategy: missing"):
        server_optimizer_from_config({"server_lr": 0.1}, LAYOUT)


def test_flowers_defaults_and_a_config_that_rebuilds_the_same_optimizer() -> None:
    defaults = {name: make_server_optimizer(name, LAYOUT).config for name in SERVER_OPTIMIZERS}
    assert defaults == {
        "none": {"strategy": "none"},
        "fedavgm": {"strategy": "fedavgm", "server_lr": 1.0, "server_momentum": 0.0},
        "fedadagrad": {"strategy": "fedadagrad", "server_lr": 0.1, "beta1": 0.0, "tau": 1e-3},
        "fedadam": {
            "strategy": "fedadam",
            "server_lr": 0.1,
            "beta1": 0.9,
            "beta2": 0.99,
            "tau": 1e-3,
        },
        "fedyogi": {
            "strategy": "fedyogi",
            "server_lr": 0.01,
            "beta1": 0.9,
            "beta2": 0.99,
            "tau": 1e-3,
        },
    }
    for config in defaults.values():
        assert set(config) - {"strategy"} <= set(HYPER_FIELDS)
        assert server_optimizer_from_config(json.loads(json.dumps(config)), LAYOUT).config == config


def test_a_median_combined_update_then_fedadam() -> None:
    layout: Layout = {"b": ((3,), torch.float32)}
    g = {"b": torch.tensor([1.0, 2.0, 3.0])}
    honest = [torch.tensor([1.1, 2.0, 2.9]), torch.tensor([1.2, 2.1, 3.0])]
    results = []
    for outlier in (1e6, -1e6):  # an attacker's update: the median ignores its size
        median = CoordinateMedian(layout)
        for tensor in [*honest, torch.full((3,), outlier)]:
            median.add({"b": tensor}, 1)
        combined = median.result()
        results.append(FedAdam(layout).step(g, combined))
    # Per coordinate, the median of {1.1, 1.2, 1e6} is 1.2, and of {1.1, 1.2, -1e6} 1.1:
    for got, medians in zip(results, ([1.2, 2.1, 3.0], [1.1, 2.0, 2.9]), strict=True):
        for i, (w, c) in enumerate(zip([1.0, 2.0, 3.0], medians, strict=True)):
            d = c - w
            m, v = 0.1 * d, 0.99 * 1e-6 + 0.01 * d * d
            want = w + 0.1 * m / (math.sqrt(v) + 1e-3)
            assert math.isclose(float(got["b"][i]), want, rel_tol=1e-5, abs_tol=1e-6)
            assert abs(float(got["b"][i]) - w) < 0.11  # a FedAdam step is at most ~eta


def test_the_optimizer_classes_are_what_the_factory_builds() -> None:
    kinds = {name: type(make_server_optimizer(name, LAYOUT)) for name in SERVER_OPTIMIZERS}
    assert kinds == {
        "none": NoServerOptimizer,
        "fedavgm": FedAvgM,
        "fedadagrad": FedAdagrad,
        "fedadam": FedAdam,
        "fedyogi": FedYogi,
    }
    assert all(make_server_optimizer(n, LAYOUT).name == n for n in SERVER_OPTIMIZERS)
    assert set(ADAPTIVE) < set(SERVER_OPTIMIZERS)
