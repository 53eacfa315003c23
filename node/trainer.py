"""Local training on a node: a round's epochs over its shard, validation, a capacity benchmark.

Plain synchronous torch; the round pipeline runs it in a worker thread so the socket's
heartbeat and the control frames keep flowing while a long round trains.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from node.shared.model import ModelSpec, build_model, model_with_state, normalize
from node.shared.protocol import TrainConfig


@dataclass(frozen=True, slots=True)
class Step:
    """How far a round's local training is: batch i of n of epoch e of E (all 1-based), and
    the running training loss."""

    batch: int
    batches: int
    epoch: int
    epochs: int
    loss: float


ProgressFn = Callable[[Step], None]


class Aborted(Exception):
    """Newer global weights arrived: this local epoch is worth nothing any more."""


OptimizerState = dict[str, Any]
"""An optimizer's ``state_dict()``: what a node keeps between rounds when asked to."""


@dataclass(frozen=True, slots=True)
class LocalResult:
    state: dict[str, torch.Tensor]
    samples: int
    metrics: dict[str, float]
    optimizer_state: OptimizerState | None = None  # with keep_optimizer_state only


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def split_validation(
    x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hold out ``fraction`` of the shard for validation, leaving at least one training sample."""
    n = len(y)
    n_val = min(int(n * fraction), max(0, n - 1))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def train_locally(
    spec: ModelSpec,
    global_state: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    *,
    device: torch.device,
    seed: int,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    on_progress: ProgressFn | None = None,
    should_abort: Callable[[], bool] = lambda: False,
    in_place: bool = False,
    optimizer_state: OptimizerState | None = None,
) -> LocalResult:
    """Train ``config.local_epochs`` epochs from ``global_state``; raises Aborted when
    ``should_abort`` says so. ``optimizer_state`` (the last round's, under
    ``config.keep_optimizer_state``) goes on where that round's optimizer stopped.

    With ``in_place``, a CPU model trains ``global_state``'s own tensors (the caller owns
    them, say a download nobody else reads) and the result's state is those tensors: no
    copy of the model is made at either end. Otherwise ``global_state`` is left as it was.
    """
    if len(y) == 0:
        raise ValueError("cannot train on an empty shard")
    started = time.perf_counter()
    torch.manual_seed(seed)  # dropout masks too: a round is reproducible for its seed
    model = model_with_state(spec, global_state, device, share=in_place)
    model.train()
    optimizer = _optimizer(list(model.parameters()), config, optimizer_state)
    anchors = proximal_anchors(model, config.proximal_mu)
    generator = torch.Generator().manual_seed(seed)
    x_dev, y_dev = x.to(device), y.to(device)
    tally = _Tally()
    batches = _batches_per_epoch(len(y), config)
    for epoch in range(1, config.local_epochs + 1):
        order = torch.randperm(len(y), generator=generator).to(device)
        for i in range(batches):
            if should_abort():
                raise Aborted
            idx = order[i * config.batch_size : (i + 1) * config.batch_size]
            xb, yb = normalize(x_dev[idx], spec), y_dev[idx]
            tally.add(*_step(model, optimizer, xb, yb, anchors, config.proximal_mu), yb)
            if on_progress is not None:
                on_progress(Step(i + 1, batches, epoch, config.local_epochs, tally.mean_loss))
    kept = optimizer if config.keep_optimizer_state else None
    return _result(model, spec, tally, val, len(y), device=device, started=started, kept=kept)


Anchors = list[tuple[nn.Parameter, torch.Tensor]]
"""FedProx's pairs: each trainable parameter and a detached copy of its global value."""


def proximal_anchors(model: nn.Module, mu: float) -> Anchors:
    """The global weights FedProx pulls towards, copied before the first step; none (and no
    copy, no cost) when ``mu`` is 0."""
    if mu == 0:
        return []
    return [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]


def proximal_term(anchors: Anchors, mu: float) -> torch.Tensor:
    """FedProx's ``(mu / 2) * sum ||w - w_global||^2`` (Li et al. 2020, eq. 2): its
    gradient is ``mu * (w - w_global)``, which keeps local training near the global model."""
    return (mu / 2) * torch.stack([torch.sum((p - a) ** 2) for p, a in anchors]).sum()


def _step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    xb: torch.Tensor,
    yb: torch.Tensor,
    anchors: Anchors,
    mu: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch; its loss and logits."""
    optimizer.zero_grad(set_to_none=True)
    logits = model(xb)
    loss = nn.functional.cross_entropy(logits, yb)
    _backward(loss, anchors, mu)
    optimizer.step()
    return loss, logits


def _backward(loss: torch.Tensor, anchors: Anchors, mu: float) -> None:
    """Back-propagate the batch's loss, plus the proximal term each batch under FedProx (the
    reported loss stays the data loss, comparable with plain FedAvg's)."""
    if anchors:
        loss = loss + proximal_term(anchors, mu)
    loss.backward()  # type: ignore[no-untyped-call]


def _optimizer(
    params: list[nn.Parameter], config: TrainConfig, kept: OptimizerState | None = None
) -> torch.optim.Optimizer:
    """The round's optimizer, going on from ``kept`` when the job keeps its state."""
    # Fused kernels update all of a step's parameters in one pass per tensor (CPU and CUDA
    # alike); the default per-tensor Adam costs more than the batch itself on a big MLP.
    optimizer: torch.optim.Optimizer
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=config.lr, fused=True)
    else:
        optimizer = torch.optim.SGD(params, lr=config.lr, fused=True)
    if kept is not None and config.keep_optimizer_state:
        optimizer.load_state_dict(kept)
    return optimizer


def _batches_per_epoch(samples: int, config: TrainConfig) -> int:
    batches = max(1, -(-samples // config.batch_size))
    return batches if config.max_batches is None else min(batches, config.max_batches)


@dataclass(slots=True)
class _Tally:
    """Running training loss (summed per sample) and accuracy over the batches so far."""

    loss: float = 0.0
    correct: int = 0
    seen: int = 0

    @property
    def mean_loss(self) -> float:
        return self.loss / max(1, self.seen)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, yb: torch.Tensor) -> None:
        self.loss += loss.item() * len(yb)
        self.correct += int((logits.argmax(1) == yb).sum())
        self.seen += len(yb)


def _result(
    model: nn.Module,
    spec: ModelSpec,
    tally: _Tally,
    val: tuple[torch.Tensor, torch.Tensor] | None,
    samples: int,
    *,
    device: torch.device,
    started: float,
    kept: torch.optim.Optimizer | None,
) -> LocalResult:
    """Metrics (validation included) and the trained state, on the CPU; ``kept``'s state
    when the job keeps its optimizer's."""
    metrics = {
        "train_loss": tally.mean_loss,
        "train_accuracy": tally.correct / max(1, tally.seen),
    }
    if val is not None and len(val[1]) > 0:
        metrics["val_loss"], metrics["val_accuracy"] = _evaluate(model, spec, *val, device=device)
    metrics["seconds"] = time.perf_counter() - started
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    optimizer_state = kept.state_dict() if kept is not None else None
    return LocalResult(state, samples, metrics, optimizer_state)


def _evaluate(
    model: nn.Module, spec: ModelSpec, x: torch.Tensor, y: torch.Tensor, *, device: torch.device
) -> tuple[float, float]:
    model.eval()
    with torch.inference_mode():
        logits = model(normalize(x.to(device), spec))
        loss = float(nn.functional.cross_entropy(logits, y.to(device)))
        accuracy = float((logits.argmax(1) == y.to(device)).float().mean())
    return loss, accuracy


def measure_capacity(spec: ModelSpec, device: torch.device, seconds: float = 0.5) -> float:
    """Training samples per second on the real model: forward, backward and an Adam step."""
    model = build_model(spec).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = 64
    xb = torch.randn(batch, *spec.input_shape, device=device)
    yb = torch.randint(0, spec.num_classes, (batch,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(xb), yb).backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    step()  # warm-up: allocations, kernels
    if device.type == "cuda":
        torch.cuda.synchronize()
    steps, started = 0, time.perf_counter()
    while True:
        step()
        steps += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and steps >= 3:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
    return steps * batch / elapsed
