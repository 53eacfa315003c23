"""Server optimizers: how a round's combined update moves the global model (FedOpt).

A round's updates are first combined by a :class:`server.core.aggregation.Strategy`
(weighted or uniform mean, median, trimmed mean). A server optimizer then takes one step
from the round's global weights ``g`` along the pseudo-gradient ``delta = combined - g``
(Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2: with a mean combine,
``mean(w_i) - g`` is the average of the clients' deltas). So a robust combine composes with
any optimizer: the median's ``delta`` is a robust pseudo-gradient.

``none`` is FedAvg itself: the combined weights, unchanged, bit for bit. Every other
optimizer works in float32 on CPU tensors keyed by parameter name, and its state (momentum,
moments) is a flat ``dict[str, Tensor]`` with prefixed keys (``opt.momentum.*``,
``opt.m.*``, ``opt.v.*``) that can share a safetensors file with other tensors, plus a small
JSON-able :attr:`ServerOptimizer.config`; a restart that loads both continues exactly.

Defaults are Flower's (``flwr/serverapp/strategy/fedavgm.py``, ``fedadam.py``,
``fedyogi.py``, ``fedadagrad.py``). Two places where Flower departs from the paper, and we
follow the paper: Flower starts ``v`` at 0 where Algorithm 2 asks for ``v_{-1} >= tau^2``
(we use ``tau^2``), and Flower's FedAdam adds Adam's bias correction, which Algorithm 2 has
not. Flower's client learning rate ``eta_l`` is the node's ``TrainConfig.lr`` here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import torch

from node.shared.protocol import FLOAT_MAX
from node.shared.weights import Layout, all_finite, check_state
from server.core.aggregation import AggregationError

SERVER_OPTIMIZERS: Final = ("none", "fedavgm", "fedadagrad", "fedadam", "fedyogi")
HYPER_FIELDS: Final = ("server_lr", "server_momentum", "beta1", "beta2", "tau")

MAX_SERVER_LR: Final = 100.0
MAX_TAU: Final = 1.0

Config = dict[str, str | float]
"""An optimizer's name (``strategy``) and hyper-parameters: JSON as it is."""


class StepRefused(AggregationError):
    """The step's new weights or state are not finite; the optimizer's state is unchanged,
    so the caller keeps the round's starting weights and may go on."""


class ServerOptimizer(Protocol):
    """What the round close needs from a server optimizer."""

    name: str

    @property
    def config(self) -> Config:
        """``{"strategy": name, **hyper-parameters}``: :func:`server_optimizer_from_config`
        builds the same optimizer from it."""
        ...

    def step(
        self, global_weights: Mapping[str, torch.Tensor], combined: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The next global weights from the round's ``global_weights`` (what the nodes trained
        from) and the ``combined`` update; the state advances only when the step succeeds.

        Raises:
            StepRefused: The result would not be finite (nothing changes).
            node.shared.errors.WeightsError: The tensors do not fit the layout.
        """
        ...

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The optimizer's state, float32, keys prefixed ``opt.``. A step replaces these
        tensors rather than writing into them, so the dict is a snapshot as it is."""
        ...

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Continue from ``state`` (copied), as saved by :meth:`state_dict`.

        Raises:
            node.shared.errors.WeightsError: Wrong keys, shapes or dtypes, or not finite.
        """
        ...


class NoServerOptimizer:
    """FedAvg (McMahan et al. 2017): the combined weights are the next global weights.

    ``step`` returns ``combined``'s own tensors, not a copy and not ``g + (combined - g)``,
    so today's FedAvg is unchanged bit for bit. No state, no hyper-parameters.
    """

    __slots__ = ("name",)

    def __init__(self) -> None:
        self.name = "none"

    @property
    def config(self) -> Config:
        return {"strategy": self.name}

    def step(
        self, global_weights: Mapping[str, torch.Tensor], combined: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return dict(combined)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        check_state(state, {})


class _Stepped:
    """The shared mechanics: buffers per prefix, the step's checks and its atomic commit."""

    __slots__ = ("_buffers", "_hyper", "_layout", "name")

    def __init__(
        self, name: str, layout: Layout, hyper: dict[str, float], fills: dict[str, float]
    ) -> None:
        self.name = name
        self._layout = layout
        self._hyper = {field: _bounded(field, value) for field, value in hyper.items()}
        self._buffers: dict[str, dict[str, torch.Tensor]] = {
            prefix: {
                k: torch.full(shape, fill, dtype=torch.float32) for k, (shape, _) in layout.items()
            }
            for prefix, fill in fills.items()
        }

    @property
    def config(self) -> Config:
        return {"strategy": self.name, **self._hyper}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {prefix + k: t for prefix, ts in self._buffers.items() for k, t in ts.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        expected = {
            prefix + k: (shape, torch.float32)
            for prefix in self._buffers
            for k, (shape, _) in self._layout.items()
        }
        check_state(state, expected)
        self._buffers = {
            prefix: {
                k: state[prefix + k].detach().to("cpu", torch.float32, copy=True).contiguous()
                for k in self._layout
            }
            for prefix in self._buffers
        }

    def step(
        self, global_weights: Mapping[str, torch.Tensor], combined: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        check_state(global_weights, self._layout)
        check_state(combined, self._layout)
        out: dict[str, torch.Tensor] = {}
        new: dict[str, dict[str, torch.Tensor]] = {prefix: {} for prefix in self._buffers}
        for key in self._layout:
            g = global_weights[key].detach().to("cpu", torch.float32)
            delta = combined[key].detach().to("cpu", torch.float32) - g
            move, buffers = self._update(delta, {p: b[key] for p, b in self._buffers.items()})
            out[key] = (g + move).contiguous()
            for prefix, tensor in buffers.items():
                new[prefix][key] = tensor
        everything = [*out.values(), *(t for ts in new.values() for t in ts.values())]
        if not all(all_finite(t) for t in everything):
            raise StepRefused(f"the {self.name} step is not finite; its state is unchanged")
        self._buffers = new
        return out

    def _update(
        self, delta: torch.Tensor, old: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


class FedAvgM(_Stepped):
    """FedAvg with server momentum (Hsu et al. 2019, "Measuring the Effects of Non-Identical
    Data Distribution for Federated Visual Classification").

    ``v <- beta * v + delta`` (``v`` starts at 0), then ``w <- g + eta * v``: SGD with
    momentum on the pseudo-gradient ``-delta``, as ``torch.optim.SGD`` writes it. ``eta`` is
    ``server_lr`` (default 1.0) and ``beta`` ``server_momentum`` (default 0.0), Flower's
    ``server_learning_rate`` and ``server_momentum``. With the defaults it is FedAvg, and
    like Flower it then returns the combined weights as they are; with ``beta = 0`` it
    keeps no state.
    """

    __slots__ = ()

    def __init__(
        self, layout: Layout, *, server_lr: float = 1.0, server_momentum: float = 0.0
    ) -> None:
        fills = {"opt.momentum.": 0.0} if server_momentum != 0 else {}
        hyper = {"server_lr": server_lr, "server_momentum": server_momentum}
        super().__init__("fedavgm", layout, hyper, fills)

    def step(
        self, global_weights: Mapping[str, torch.Tensor], combined: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        if self._hyper["server_lr"] == 1.0 and self._hyper["server_momentum"] == 0.0:
            return dict(combined)
        return super().step(global_weights, combined)

    def _update(
        self, delta: torch.Tensor, old: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        eta, beta = self._hyper["server_lr"], self._hyper["server_momentum"]
        if not old:
            return eta * delta, {}
        v = beta * old["opt.momentum."] + delta
        return eta * v, {"opt.momentum.": v}


class _Adaptive(_Stepped):
    """Reddi et al. 2021, Algorithm 2: ``m <- beta1 * m + (1 - beta1) * delta``, a second
    moment ``v`` by the subclass's rule, then ``w <- g + eta * m / (sqrt(v) + tau)``.

    ``m`` starts at 0 and ``v`` at ``tau^2`` (the paper's ``v_{-1} >= tau^2``; Flower starts
    it at 0). No bias correction, as in the paper (Flower's FedAdam has one).
    """

    __slots__ = ()

    def __init__(self, name: str, layout: Layout, hyper: dict[str, float]) -> None:
        super().__init__(name, layout, hyper, {"opt.m.": 0.0, "opt.v.": hyper["tau"] ** 2})

    def _update(
        self, delta: torch.Tensor, old: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        beta1, eta, tau = self._hyper["beta1"], self._hyper["server_lr"], self._hyper["tau"]
        m = beta1 * old["opt.m."] + (1 - beta1) * delta
        v = self._second_moment(old["opt.v."], delta * delta)
        return eta * m / (v.sqrt() + tau), {"opt.m.": m, "opt.v.": v}

    def _second_moment(self, v: torch.Tensor, delta2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class FedAdagrad(_Adaptive):
    """FedAdagrad (Reddi et al. 2021): ``v <- v + delta^2``.

    Flower's defaults: ``server_lr`` (eta) 0.1, ``beta1`` 0.0 (Flower fixes it; the paper's
    Algorithm 2 lets it vary), ``tau`` 1e-3 (``eta_l`` 0.1 is the nodes' lr). No ``beta2``.
    """

    __slots__ = ()

    def __init__(
        self, layout: Layout, *, server_lr: float = 0.1, beta1: float = 0.0, tau: float = 1e-3
    ) -> None:
        super().__init__("fedadagrad", layout, {"server_lr": server_lr, "beta1": beta1, "tau": tau})

    def _second_moment(self, v: torch.Tensor, delta2: torch.Tensor) -> torch.Tensor:
        return v + delta2


class FedAdam(_Adaptive):
    """FedAdam (Reddi et al. 2021): ``v <- beta2 * v + (1 - beta2) * delta^2``.

    Flower's defaults: ``server_lr`` (eta) 0.1, ``beta1`` 0.9, ``beta2`` 0.99, ``tau`` 1e-3
    (``eta_l`` 0.1 is the nodes' lr).
    """

    __slots__ = ()

    def __init__(
        self,
        layout: Layout,
        *,
        server_lr: float = 0.1,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        hyper = {"server_lr": server_lr, "beta1": beta1, "beta2": beta2, "tau": tau}
        super().__init__("fedadam", layout, hyper)

    def _second_moment(self, v: torch.Tensor, delta2: torch.Tensor) -> torch.Tensor:
        beta2 = self._hyper["beta2"]
        return beta2 * v + (1 - beta2) * delta2


class FedYogi(_Adaptive):
    """FedYogi (Reddi et al. 2021; Yogi: Zaheer et al. 2018):
    ``v <- v - (1 - beta2) * delta^2 * sign(v - delta^2)``, which moves ``v`` towards
    ``delta^2`` by a step of at most ``(1 - beta2) * delta^2``, and keeps it positive.

    Flower's defaults: ``server_lr`` (eta) 0.01, ``beta1`` 0.9, ``beta2`` 0.99, ``tau`` 1e-3
    (``eta_l`` 0.0316 is the nodes' lr).
    """

    __slots__ = ()

    def __init__(
        self,
        layout: Layout,
        *,
        server_lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        hyper = {"server_lr": server_lr, "beta1": beta1, "beta2": beta2, "tau": tau}
        super().__init__("fedyogi", layout, hyper)

    def _second_moment(self, v: torch.Tensor, delta2: torch.Tensor) -> torch.Tensor:
        beta2 = self._hyper["beta2"]
        return v - (1 - beta2) * delta2 * torch.sign(v - delta2)


_ACCEPTS: Final[dict[str, tuple[str, ...]]] = {
    "none": (),
    "fedavgm": ("server_lr", "server_momentum"),
    "fedadagrad": ("server_lr", "beta1", "tau"),
    "fedadam": ("server_lr", "beta1", "beta2", "tau"),
    "fedyogi": ("server_lr", "beta1", "beta2", "tau"),
}

_CLASSES: Final[dict[str, Callable[..., ServerOptimizer]]] = {
    "fedavgm": FedAvgM,
    "fedadagrad": FedAdagrad,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
}

_BOUNDS: Final[dict[str, tuple[str, Callable[[float], bool]]]] = {
    "server_lr": (f"within (0, {MAX_SERVER_LR:g}]", lambda x: 0 < x <= MAX_SERVER_LR),
    "server_momentum": ("within [0, 1)", lambda x: 0 <= x < 1),
    "beta1": ("within [0, 1)", lambda x: 0 <= x < 1),
    "beta2": ("within [0, 1)", lambda x: 0 <= x < 1),
    "tau": (f"within (0, {MAX_TAU:g}]", lambda x: 0 < x <= MAX_TAU),
}


def make_server_optimizer(name: str, layout: Layout, **hyper: Any) -> ServerOptimizer:
    """A fresh optimizer by name (one per job), with the hyper-parameters given and
    Flower's defaults for the rest; ``layout`` is the model's (float32) state layout.

    Raises:
        ValueError: An unknown name, a hyper-parameter the optimizer does not use, or one
            that is not a finite number within its bounds; the message starts with the
            field (``strategy``, ``server_lr``, ``server_momentum``, ``beta1``, ``beta2``,
            ``tau``).
    """
    if not isinstance(name, str) or name not in _ACCEPTS:
        raise ValueError(
            f"strategy: unknown server optimizer {str(name)[:40]!r}; "
            f"choose one of {', '.join(SERVER_OPTIMIZERS)}"
        )
    for field in hyper:
        if field not in _ACCEPTS[name]:
            uses = ", ".join(_ACCEPTS[name]) or "no hyper-parameters"
            raise ValueError(f"{field}: {name} does not use it (it takes {uses})")
    if name == "none":
        return NoServerOptimizer()
    optimizer: ServerOptimizer = _CLASSES[name](layout, **hyper)  # bounds checked there
    return optimizer


def server_optimizer_from_config(config: Mapping[str, Any], layout: Layout) -> ServerOptimizer:
    """The optimizer a :attr:`ServerOptimizer.config` describes (a checkpoint's, say)."""
    fields = dict(config)
    if "strategy" not in fields:
        raise ValueError("strategy: missing (one of " + ", ".join(SERVER_OPTIMIZERS) + ")")
    return make_server_optimizer(fields.pop("strategy"), layout, **fields)


def _bounded(field: str, value: Any) -> float:
    """``value`` as a float, when it is a finite number within ``field``'s bounds."""
    number = float(value) if isinstance(value, int | float) and abs(value) <= FLOAT_MAX else None
    if isinstance(value, bool) or number is None or not math.isfinite(number):
        raise ValueError(f"{field}: expected a finite number, got {str(value)[:40]!r}")
    bound, holds = _BOUNDS[field]
    if not holds(number):
        raise ValueError(f"{field}: must be {bound}, got {number!r}")
    return number
