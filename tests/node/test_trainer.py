"""Local training: tiny batches, the validation split, learning, aborting, progress, capacity."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from node.shared.model import ModelSpec, build_model, init_state, model_with_state, normalize
from node.shared.protocol import TrainConfig
from node.trainer import (
    Aborted,
    LocalResult,
    Step,
    measure_capacity,
    proximal_anchors,
    proximal_term,
    resolve_device,
    split_validation,
    train_locally,
)

CPU = torch.device("cpu")
SPEC = ModelSpec(input_shape=(1, 4, 4), hidden=(16,), dropout=(0.2,), num_classes=2)


def _data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """An easy problem: class 1 images are bright, class 0 images dark."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    base = torch.where(y[:, None, None, None] == 1, 200, 40)
    noise = torch.randint(-30, 30, (n, 1, 4, 4), generator=gen)
    return (base + noise).clamp(0, 255).to(torch.uint8), y.to(torch.int64)


def _train(
    x: torch.Tensor, y: torch.Tensor, config: TrainConfig | None = None, **kwargs: object
) -> LocalResult:
    return train_locally(
        SPEC,
        init_state(SPEC, 0),
        x,
        y,
        config or TrainConfig(batch_size=4),
        device=CPU,
        seed=1,
        **kwargs,  # type: ignore[arg-type]
    )


def _finite(result: LocalResult) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in result.state.values()) and all(
        math.isfinite(v) for v in result.metrics.values()
    )


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_shard_of_one_sample_trains(optimizer: str) -> None:
    x, y = _data(1)
    result = _train(x, y, TrainConfig(batch_size=32, optimizer=optimizer))  # type: ignore[arg-type]
    assert result.samples == 1
    assert _finite(result)
    assert result.state.keys() == init_state(SPEC, 0).keys()


def test_a_last_batch_of_one_sample_trains() -> None:
    x, y = _data(9)
    seen: list[tuple[int, int]] = []
    result = _train(
        x, y, TrainConfig(batch_size=4), on_progress=lambda s: seen.append((s.batch, s.batches))
    )
    assert result.samples == 9
    assert _finite(result)
    assert seen == [(1, 3), (2, 3), (3, 3)]  # 4 + 4 + 1


def test_state_is_on_cpu_and_changed() -> None:
    x, y = _data(16)
    start = init_state(SPEC, 0)
    result = _train(x, y)
    assert all(v.device.type == "cpu" and v.is_contiguous() for v in result.state.values())
    assert any(not torch.equal(result.state[k], start[k]) for k in start)


def test_training_does_not_change_the_global_state_it_was_given() -> None:
    x, y = _data(16)
    start = init_state(SPEC, 0)
    copy = {k: v.clone() for k, v in start.items()}
    train_locally(SPEC, start, x, y, TrainConfig(batch_size=4), device=CPU, seed=1)
    assert all(torch.equal(start[k], copy[k]) for k in start)


def test_in_place_training_trains_the_given_tensors_to_the_same_result() -> None:
    x, y = _data(16)
    copied = train_locally(
        SPEC, init_state(SPEC, 0), x, y, TrainConfig(batch_size=4), device=CPU, seed=1
    )
    owned = init_state(SPEC, 0)
    shared = train_locally(
        SPEC, owned, x, y, TrainConfig(batch_size=4), device=CPU, seed=1, in_place=True
    )
    for key, value in shared.state.items():
        assert value.data_ptr() == owned[key].data_ptr()  # no copy at either end
        assert torch.equal(value, copied.state[key])
    assert shared.metrics.keys() == copied.metrics.keys()
    assert shared.metrics["train_loss"] == copied.metrics["train_loss"]


def test_split_validation_leaves_at_least_one_training_sample() -> None:
    for n in (1, 2, 3, 10):
        x, y = _data(n)
        for fraction in (0.0, 0.5, 0.9, 0.999):
            tx, ty, vx, vy = split_validation(x, y, fraction, seed=3)
            assert len(ty) >= 1
            assert len(ty) + len(vy) == n
            assert len(tx) == len(ty) and len(vx) == len(vy)
    x, y = _data(10)
    assert len(split_validation(x, y, 0.2, seed=0)[3]) == 2
    assert len(split_validation(x, y, 0.0, seed=0)[3]) == 0


def test_split_validation_is_deterministic_and_a_partition() -> None:
    x = torch.arange(20, dtype=torch.uint8).reshape(20, 1, 1, 1).expand(20, 1, 2, 2).contiguous()
    y = torch.arange(20, dtype=torch.int64)
    first = split_validation(x, y, 0.25, seed=5)
    again = split_validation(x, y, 0.25, seed=5)
    other = split_validation(x, y, 0.25, seed=6)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[3], other[3])
    _, ty, vx, vy = first
    assert sorted(ty.tolist() + vy.tolist()) == list(range(20))
    assert torch.equal(vx[:, 0, 0, 0].to(torch.int64), vy)  # x and y stay paired


def test_split_validation_does_not_touch_the_global_rng() -> None:
    x, y = _data(10)
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    split_validation(x, y, 0.3, seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_train_locally_learns_an_easy_problem() -> None:
    x, y = _data(128)
    vx, vy = _data(64, seed=9)
    model = build_model(SPEC).eval()
    model.load_state_dict(init_state(SPEC, 0))
    with torch.inference_mode():
        before = float(nn.functional.cross_entropy(model(normalize(vx, SPEC)), vy))
    result = _train(x, y, TrainConfig(lr=1e-2, batch_size=16, local_epochs=2), val=(vx, vy))
    assert result.metrics["val_loss"] < before / 2
    assert result.metrics["val_accuracy"] >= 0.9
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"} <= set(
        result.metrics
    )


def test_no_validation_metrics_without_validation_samples() -> None:
    x, y = _data(8)
    empty = (x[:0], y[:0])
    assert "val_loss" not in _train(x, y, val=empty).metrics
    assert "val_loss" not in _train(x, y).metrics


def test_train_locally_without_dropout_is_deterministic_for_a_seed() -> None:
    # The batch order comes from ``seed``; dropout masks come from torch's global RNG.
    spec = ModelSpec(input_shape=(1, 4, 4), hidden=(16,), dropout=(), num_classes=2)
    x, y = _data(32)
    config = TrainConfig(batch_size=4)
    a, b = (
        train_locally(spec, init_state(spec, 0), x, y, config, device=CPU, seed=1) for _ in range(2)
    )
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)


def test_aborted_when_should_abort_says_so() -> None:
    x, y = _data(40)
    calls = 0

    def abort_on_third() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 3

    with pytest.raises(Aborted):
        _train(x, y, should_abort=abort_on_third)
    assert calls == 3
    with pytest.raises(Aborted):
        _train(x, y, should_abort=lambda: True)


def test_progress_reports_increasing_batches_over_each_local_epoch() -> None:
    x, y = _data(10)
    seen: list[Step] = []
    _train(x, y, TrainConfig(batch_size=3, local_epochs=2), on_progress=seen.append)
    assert [(s.batch, s.batches) for s in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)] * 2
    assert [(s.epoch, s.epochs) for s in seen] == [(1, 2)] * 4 + [(2, 2)] * 4
    assert all(math.isfinite(s.loss) and s.loss > 0 for s in seen)


def test_measure_capacity_is_positive_and_finite() -> None:
    capacity = measure_capacity(SPEC, CPU, seconds=0.05)
    assert math.isfinite(capacity)
    assert capacity > 0


def test_measure_capacity_does_at_least_three_steps_however_short() -> None:
    # 3 steps of 64 samples in however long they took: a finite, positive rate even at 0 s.
    capacity = measure_capacity(SPEC, CPU, seconds=0.0)
    assert math.isfinite(capacity)
    assert capacity > 0


def test_resolve_device() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            resolve_device("cuda")


def _images(n: int, shape: tuple[int, int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes a convolution must find by place: ink on the left half, or on the right."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    channels, height, width = shape
    x = torch.randint(0, 60, (n, channels, height, width), generator=gen)
    left = x[y == 0]
    left[..., : width // 2] += 150
    right = x[y == 1]
    right[..., width // 2 :] += 150
    x[y == 0], x[y == 1] = left, right
    return x.clamp(0, 255).to(torch.uint8), y.to(torch.int64)


CONV_SPECS = {
    "cnn": ModelSpec(
        arch="cnn", input_shape=(1, 8, 8), channels=(4, 8), kernel=3, hidden=(16,), num_classes=2
    ),
    "lenet5": ModelSpec(
        arch="lenet5", input_shape=(1, 12, 12), channels=(4, 8), hidden=(16,), num_classes=2
    ),
    "resnet-group": ModelSpec(
        arch="resnet",
        input_shape=(3, 8, 8),
        channels=(4, 8),
        depth=6,
        norm="group",
        num_classes=2,
        norm_mean=(0.2, 0.3, 0.4),
        norm_std=0.3,
    ),
}


@pytest.mark.parametrize("spec", CONV_SPECS.values(), ids=CONV_SPECS.keys())
def test_conv_archs_learn_an_easy_problem(spec: ModelSpec) -> None:
    shape = (spec.input_shape[0], spec.input_shape[1], spec.input_shape[2])
    x, y = _images(128, shape, seed=0)
    vx, vy = _images(64, shape, seed=9)
    model = build_model(spec).eval()
    model.load_state_dict(init_state(spec, 0))
    with torch.inference_mode():
        before = float(nn.functional.cross_entropy(model(normalize(vx, spec)), vy))
    result = train_locally(
        spec,
        init_state(spec, 0),
        x,
        y,
        TrainConfig(lr=1e-2, batch_size=16, local_epochs=3),
        device=CPU,
        seed=1,
        val=(vx, vy),
    )
    assert result.metrics["val_loss"] < before / 2
    assert result.metrics["val_accuracy"] >= 0.9
    assert result.state.keys() == init_state(spec, 0).keys()


def test_a_conv_model_trains_its_download_in_place() -> None:
    spec = CONV_SPECS["resnet-group"]
    state = init_state(spec, 0)
    before = {k: v.clone() for k, v in state.items()}
    x, y = _images(32, (3, 8, 8), seed=2)
    result = train_locally(
        spec, state, x, y, TrainConfig(batch_size=8), device=CPU, seed=1, in_place=True
    )
    assert all(result.state[k].data_ptr() == state[k].data_ptr() for k in state)
    assert not all(torch.equal(before[k], state[k]) for k in state)


# -- FedProx ---------------------------------------------------------------------------------

NO_DROPOUT = ModelSpec(input_shape=(1, 4, 4), hidden=(16,), dropout=(), num_classes=2)


def _distance(state: dict[str, torch.Tensor], start: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(((state[k] - start[k]) ** 2).sum()) for k in start))


def _plain_sgd_epoch(
    x: torch.Tensor, y: torch.Tensor, config: TrainConfig, seed: int
) -> dict[str, torch.Tensor]:
    """The local loop as it was before FedProx, written out: one epoch of fused SGD."""
    torch.manual_seed(seed)
    model = model_with_state(NO_DROPOUT, init_state(NO_DROPOUT, 0), CPU)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, fused=True)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    for i in range(-(-len(y) // config.batch_size)):
        idx = order[i * config.batch_size : (i + 1) * config.batch_size]
        optimizer.zero_grad(set_to_none=True)
        logits = model(normalize(x[idx], NO_DROPOUT))
        nn.functional.cross_entropy(logits, y[idx]).backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fedprox_with_mu_zero_is_exactly_fedavg() -> None:
    x, y = _data(24)
    default = TrainConfig(batch_size=4, optimizer="sgd", lr=0.1)
    zero = TrainConfig(batch_size=4, optimizer="sgd", lr=0.1, proximal_mu=0.0)
    a, b = (
        train_locally(NO_DROPOUT, init_state(NO_DROPOUT, 0), x, y, c, device=CPU, seed=1)
        for c in (default, zero)
    )
    reference = _plain_sgd_epoch(x, y, zero, seed=1)
    for key, value in a.state.items():
        assert torch.equal(value, b.state[key])
        assert torch.equal(value, reference[key])  # bit for bit the loop without FedProx
    assert a.metrics["train_loss"] == b.metrics["train_loss"]
    assert proximal_anchors(build_model(NO_DROPOUT), 0.0) == []  # and no copy of the model


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fedprox_keeps_local_weights_closer_to_the_global_ones(optimizer: str) -> None:
    x, y = _data(32)
    start = init_state(SPEC, 0)
    distances = []
    for mu in (0.0, 1.0, 10.0):
        config = TrainConfig(
            batch_size=4,
            optimizer=optimizer,  # type: ignore[arg-type]
            lr=0.05,
            local_epochs=2,
            proximal_mu=mu,
        )
        result = train_locally(SPEC, start, x, y, config, device=CPU, seed=1)
        assert _finite(result)
        distances.append(_distance(result.state, start))
    assert distances[0] > distances[1] > distances[2] > 0


def test_fedprox_trains_in_place_to_the_same_result() -> None:
    # In place, the model's parameters are the download itself: the anchors must be copies.
    x, y = _data(16)
    config = TrainConfig(batch_size=4, optimizer="sgd", lr=0.1, proximal_mu=0.5)
    copied = train_locally(SPEC, init_state(SPEC, 0), x, y, config, device=CPU, seed=1)
    owned = init_state(SPEC, 0)
    shared = train_locally(SPEC, owned, x, y, config, device=CPU, seed=1, in_place=True)
    assert all(torch.equal(shared.state[k], copied.state[k]) for k in copied.state)


def test_the_proximal_terms_gradient_is_mu_times_the_distance_to_the_global_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    model[2].bias.requires_grad_(False)  # frozen: no anchor, no term
    mu = 0.3
    anchors = proximal_anchors(model, mu)
    assert len(anchors) == 3
    global_values = [a.clone() for _, a in anchors]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # some local steps later
    term = proximal_term(anchors, mu)
    moved = [p.detach() - g for (p, _), g in zip(anchors, global_values, strict=True)]
    expected = mu / 2 * sum(float((d**2).sum()) for d in moved)
    assert math.isclose(float(term.detach()), expected, rel_tol=1e-6)
    term.backward()  # type: ignore[no-untyped-call]
    for (p, _), d in zip(anchors, moved, strict=True):
        assert p.grad is not None
        torch.testing.assert_close(p.grad, mu * d)
    assert model[2].bias.grad is None
    assert all(torch.equal(a, g) for (_, a), g in zip(anchors, global_values, strict=True))


def test_a_kept_optimizer_state_goes_on_where_the_last_round_stopped() -> None:
    x, y = _data(40)
    keep = TrainConfig(batch_size=8, keep_optimizer_state=True)
    first = _train(x, y, keep)
    assert first.optimizer_state is not None
    steps = [s["step"] for s in first.optimizer_state["state"].values()]
    assert all(float(step) == 5 for step in steps)  # 40 samples, batch 8
    second = train_locally(
        SPEC, first.state, x, y, keep, device=CPU, seed=2, optimizer_state=first.optimizer_state
    )
    assert second.optimizer_state is not None
    assert all(float(s["step"]) == 10 for s in second.optimizer_state["state"].values())
    fresh = train_locally(SPEC, first.state, x, y, keep, device=CPU, seed=2)
    assert any(not torch.equal(second.state[k], fresh.state[k]) for k in fresh.state)


def test_without_keep_no_state_is_returned_or_used() -> None:
    x, y = _data(40)
    plain = TrainConfig(batch_size=8)
    kept = _train(x, y, TrainConfig(batch_size=8, keep_optimizer_state=True)).optimizer_state
    assert _train(x, y, plain).optimizer_state is None
    with_state = _train(x, y, plain, optimizer_state=kept)
    without = _train(x, y, plain)
    assert all(torch.equal(with_state.state[k], without.state[k]) for k in without.state)
