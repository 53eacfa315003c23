"""Model specs: the one description of the architecture that server, nodes and showcase share.

The server owns the spec, pushes it to nodes in the ``train`` frame and writes it into every
weights file, so no environment variable on two machines ever has to agree.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from node.shared.errors import SpecError

MAX_LAYER_WIDTH = 65_536
MAX_LAYERS = 16
MAX_INPUT_ELEMENTS = 1 << 20


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """An MLP classifier over fixed-size images (the seed's model by default)."""

    arch: str = "mlp"
    input_shape: tuple[int, ...] = (1, 28, 28)
    hidden: tuple[int, ...] = (256, 128, 64)
    dropout: tuple[float, ...] = (0.3, 0.2)
    num_classes: int = 10
    # Inputs are uint8 pixels; the model sees (x / 255 - mean) / std, exactly as in training.
    norm_mean: float = 0.1307
    norm_std: float = 0.3081

    def __post_init__(self) -> None:
        if self.arch != "mlp":
            raise SpecError(f"unknown arch {self.arch!r} (only 'mlp')")
        if not self.input_shape or any(d < 1 for d in self.input_shape):
            raise SpecError("input_shape must be positive")
        if math.prod(self.input_shape) > MAX_INPUT_ELEMENTS:
            raise SpecError("input_shape too large")
        if len(self.hidden) > MAX_LAYERS or any(not 1 <= h <= MAX_LAYER_WIDTH for h in self.hidden):
            raise SpecError(
                f"hidden layers must be 1..{MAX_LAYER_WIDTH} wide, at most {MAX_LAYERS}"
            )
        if len(self.dropout) > len(self.hidden) or any(not 0 <= p < 1 for p in self.dropout):
            raise SpecError("dropout: one probability in [0, 1) per hidden layer at most")
        if not 2 <= self.num_classes <= MAX_LAYER_WIDTH:
            raise SpecError("num_classes must be at least 2")
        if not (
            math.isfinite(self.norm_mean) and math.isfinite(self.norm_std) and self.norm_std > 0
        ):
            raise SpecError("norm_std must be positive and both norms finite")

    @property
    def input_size(self) -> int:
        return math.prod(self.input_shape)

    def to_dict(self) -> dict[str, Any]:
        """JSON-native form (lists, not tuples), so it survives a round trip unchanged."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> ModelSpec:
        if not isinstance(data, dict):
            raise SpecError("model spec must be an object")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise SpecError(f"unknown model spec fields: {sorted(unknown)}")
        try:
            return cls(
                arch=str(data.get("arch", "mlp")),
                input_shape=tuple(_ints(data.get("input_shape", (1, 28, 28)))),
                hidden=tuple(_ints(data.get("hidden", (256, 128, 64)))),
                dropout=tuple(float(p) for p in data.get("dropout", (0.3, 0.2))),
                num_classes=_int(data.get("num_classes", 10)),
                norm_mean=float(data.get("norm_mean", 0.1307)),
                norm_std=float(data.get("norm_std", 0.3081)),
            )
        except (TypeError, ValueError, OverflowError) as exc:  # float() of a huge JSON int
            raise SpecError(f"bad model spec: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"model spec is not JSON: {exc}") from exc
        except RecursionError:  # deeply nested: json recurses once per level
            raise SpecError("model spec is nested too deeply") from None
        return cls.from_dict(data)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _ints(values: Any) -> list[int]:
    if not isinstance(values, list | tuple):
        raise TypeError("expected a list of integers")
    return [_int(v) for v in values]


def build_model(spec: ModelSpec) -> nn.Sequential:
    """The network a spec describes; parameter names are stable across processes."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = spec.input_size
    for i, hidden in enumerate(spec.hidden):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        if i < len(spec.dropout) and spec.dropout[i] > 0:
            layers.append(nn.Dropout(spec.dropout[i]))
        width = hidden
    layers.append(nn.Linear(width, spec.num_classes))
    return nn.Sequential(*layers)


def model_with_state(
    spec: ModelSpec,
    state: Mapping[str, torch.Tensor],
    device: torch.device | str = "cpu",
    *,
    share: bool = False,
) -> nn.Sequential:
    """The architecture holding ``state``, never randomly initialised first (for a large
    model that costs more than the training step that follows).

    With ``share``, parameters already on ``device`` in the model's dtype *are* the given
    tensors, not copies: evaluation reads a file's tensors where they lie, and a node trains
    a download it owns in place. Anything else is copied over.
    """
    with torch.device("meta"):
        model = build_model(spec)
    target = torch.device(device)
    wanted = model.state_dict()
    if (
        share
        and state.keys() == wanted.keys()
        and all(state[k].device == target and state[k].dtype == wanted[k].dtype for k in wanted)
    ):
        model.load_state_dict(dict(state), assign=True)
        return model
    model = model.to_empty(device=target)
    model.load_state_dict(dict(state))
    return model


def normalize(pixels: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """uint8 pixels (any leading batch shape) to the float input the model was trained on."""
    return (pixels.to(torch.float32) / 255.0 - spec.norm_mean) / spec.norm_std


def init_state(spec: ModelSpec, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic initial weights: the same seed gives the same round-0 model everywhere."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = build_model(spec)
    finally:
        torch.random.set_rng_state(generator_state)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def parameter_count(spec: ModelSpec) -> int:
    widths = [spec.input_size, *spec.hidden, spec.num_classes]
    return sum(a * b + b for a, b in itertools.pairwise(widths))
