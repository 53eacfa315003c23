"""Model specs: the one description of the architecture that server, nodes and showcase share.

The server owns the spec, pushes it to nodes in the ``train`` frame and writes it into every
weights file, so no environment variable on two machines ever has to agree. A spec is data,
never code: it names an arch of :mod:`node.shared.zoo` and its sizes, and every field is
checked (bounds, then the exact parameter count) before anything is built.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from node.shared import zoo
from node.shared.errors import SpecError

MAX_LAYER_WIDTH = 65_536
MAX_LAYERS = 16
MAX_INPUT_ELEMENTS = 1 << 20
MAX_INPUT_CHANNELS = 64
MAX_CHANNELS = 2048
MAX_CONV_LAYERS = 6
MAX_KERNEL = 11
MAX_STAGES = 4
MAX_BLOCKS = 9  # per ResNet stage: ResNet-56 at three stages
MAX_PARAMS = 100_000_000
"""The hard ceiling every process enforces on any spec (servers may set a lower one)."""

ARCHS = tuple(zoo.BUILDERS)
NORMS = ("group", "batch", "none")


class _ArchDefault:
    """The default of a field whose default depends on the arch (see ``_ARCH_FIELDS``)."""

    def __repr__(self) -> str:
        return "<arch default>"


_DEFAULT: Any = _ArchDefault()

_ARCH_FIELDS: dict[str, dict[str, Any]] = {
    "mlp": {"hidden": (256, 128, 64), "dropout": (0.3, 0.2)},
    "cnn": {"channels": (32, 64), "kernel": 5, "hidden": (512,), "dropout": ()},
    "lenet5": {"channels": (6, 16), "kernel": 5, "hidden": (120, 84), "dropout": ()},
    "resnet": {"channels": (16, 32, 64), "depth": 20, "norm": "group"},
}
"""Per arch, the fields it uses beyond the common ones, with their defaults."""

_UNUSED: dict[str, Any] = {"hidden": (), "dropout": (), "channels": (), "kernel": 0, "depth": 0}
_UNUSED["norm"] = ""
_COMMON = ("arch", "input_shape", "num_classes", "norm_mean", "norm_std")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A classifier over fixed-size uint8 images (the seed's MLP by default).

    ``arch`` is one of ``mlp``, ``cnn`` (McMahan et al., 2017), ``lenet5`` and ``resnet``;
    fields an arch does not use stay empty (``()``, ``0``, ``""``) and are left out of
    :meth:`to_dict`, and a field left at its default gets that arch's default. Conv archs take
    ``input_shape`` as (C, H, W).

    ``norm`` is a ResNet's normalisation layer: ``group`` (the default), ``batch`` or
    ``none``. Under FedAvg, BatchNorm's running mean and variance are treated like any
    weight: each node updates them on its own batches, and the server averages them,
    weighted by samples, into statistics of no single node's data. Under non-IID data they
    disagree (the reason GroupNorm, which keeps no batch statistics, is the usual choice;
    Hsieh et al., 2020; FedBN instead keeps them local). BatchNorm's step counter is not
    kept: with a fixed momentum it changes nothing.
    """

    arch: str = "mlp"
    input_shape: tuple[int, ...] = (1, 28, 28)
    hidden: tuple[int, ...] = _DEFAULT
    dropout: tuple[float, ...] = _DEFAULT
    num_classes: int = 10
    # Inputs are uint8 pixels; the model sees (x / 255 - mean) / std, exactly as in training:
    # one value for every channel, or one per channel (a float is read as a 1-tuple).
    norm_mean: tuple[float, ...] | float = (0.1307,)
    norm_std: tuple[float, ...] | float = (0.3081,)
    channels: tuple[int, ...] = _DEFAULT
    kernel: int = _DEFAULT
    depth: int = _DEFAULT
    norm: str = _DEFAULT

    def __post_init__(self) -> None:
        if self.arch not in _ARCH_FIELDS:
            raise SpecError(f"arch: unknown {self.arch!r} (one of {', '.join(ARCHS)})")
        used = _ARCH_FIELDS[self.arch]
        for name, unused in _UNUSED.items():
            value = getattr(self, name)
            if isinstance(value, _ArchDefault):
                object.__setattr__(self, name, used.get(name, unused))
            elif name not in used and value != unused:
                raise SpecError(f"{name}: arch {self.arch!r} does not use it")
        for name in ("norm_mean", "norm_std"):
            object.__setattr__(self, name, _as_tuple(getattr(self, name)))
        _check_common(self)
        _CHECKS[self.arch](self)
        count = parameter_count(self)
        if count > MAX_PARAMS:
            raise SpecError(f"parameters: {count:,} is over the ceiling of {MAX_PARAMS:,}")

    @property
    def input_size(self) -> int:
        return math.prod(self.input_shape)

    @property
    def input_channels(self) -> int:
        """C of a (C, H, W) input; 1 for any other shape (an MLP over flat vectors)."""
        return self.input_shape[0] if len(self.input_shape) == 3 else 1

    def check_input(self, shape: tuple[int, ...] | list[int]) -> None:
        """Refuse data whose samples are not of ``input_shape`` (say, a dataset for a job)."""
        if tuple(shape) != self.input_shape:
            raise SpecError(
                f"input_shape: the model takes {list(self.input_shape)}, "
                f"the samples are {list(shape)}"
            )

    def check_budget(self, max_params: int) -> None:
        """Refuse a spec over ``max_params`` parameters (a server's own, lower ceiling)."""
        count = parameter_count(self)
        if count > max_params:
            raise SpecError(f"parameters: {count:,} is over the limit of {max_params:,}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-native form (lists, not tuples), so it survives a round trip unchanged.

        Only the fields the arch uses, and a single norm value as a float: an MLP's dict is
        exactly what it was before the zoo, so files saved then and nodes running then agree.
        """
        names = [f.name for f in fields(self) if f.name in _COMMON or f.name in self._used]
        out: dict[str, Any] = {}
        for name in names:
            value = getattr(self, name)
            if name in ("norm_mean", "norm_std") and len(value) == 1:
                value = value[0]
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @property
    def _used(self) -> dict[str, Any]:
        return _ARCH_FIELDS[self.arch]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> ModelSpec:
        """A checked spec from its JSON form; missing fields take the arch's defaults."""
        if not isinstance(data, dict):
            raise SpecError("model spec must be an object")
        unknown = set(data) - set(_PARSERS)
        if unknown:
            raise SpecError(f"unknown model spec fields: {sorted(unknown)}")
        arch = data.get("arch", "mlp")
        if arch in _ARCH_FIELDS:
            for name in sorted(set(data) - set(_COMMON) - set(_ARCH_FIELDS[arch])):
                raise SpecError(f"{name}: arch {arch!r} does not use it")
        values = {}
        for name, value in data.items():
            try:
                values[name] = _PARSERS[name](value)
            except (TypeError, ValueError, OverflowError) as exc:  # float() of a huge JSON int
                raise SpecError(f"bad model spec: {name}: {exc}") from exc
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"model spec is not JSON: {exc}") from exc
        except RecursionError:  # deeply nested: json recurses once per level
            raise SpecError("model spec is nested too deeply") from None
        return cls.from_dict(data)


def _check_common(spec: ModelSpec) -> None:
    if not spec.input_shape or any(d < 1 for d in spec.input_shape):
        raise SpecError("input_shape must be positive")
    if spec.input_size > MAX_INPUT_ELEMENTS:
        raise SpecError(f"input_shape: over {MAX_INPUT_ELEMENTS} elements")
    if not 2 <= spec.num_classes <= MAX_LAYER_WIDTH:
        raise SpecError(f"num_classes must be 2..{MAX_LAYER_WIDTH}")
    for name in ("norm_mean", "norm_std"):
        values = _as_tuple(getattr(spec, name))
        if len(values) not in (1, spec.input_channels):
            raise SpecError(
                f"{name}: one value, or one per input channel ({spec.input_channels}); "
                f"got {len(values)}"
            )
        if not all(math.isfinite(v) for v in values):
            raise SpecError(f"{name} must be finite")
    if not all(v > 0 for v in _as_tuple(spec.norm_std)):
        raise SpecError("norm_std must be positive")


def _check_dense(spec: ModelSpec) -> None:
    if len(spec.hidden) > MAX_LAYERS or any(not 1 <= h <= MAX_LAYER_WIDTH for h in spec.hidden):
        raise SpecError(f"hidden layers must be 1..{MAX_LAYER_WIDTH} wide, at most {MAX_LAYERS}")
    if len(spec.dropout) > len(spec.hidden) or any(not 0 <= p < 1 for p in spec.dropout):
        raise SpecError("dropout: one probability in [0, 1) per hidden layer at most")


def _check_image(spec: ModelSpec) -> None:
    """Conv archs see (C, H, W) images of a bounded number of channels."""
    if len(spec.input_shape) != 3:
        raise SpecError(
            f"input_shape: arch {spec.arch!r} takes (C, H, W), got {list(spec.input_shape)}"
        )
    if spec.input_channels > MAX_INPUT_CHANNELS:
        raise SpecError(f"input_shape: at most {MAX_INPUT_CHANNELS} channels")


def _check_widths(spec: ModelSpec, max_layers: int) -> None:
    if not 1 <= len(spec.channels) <= max_layers:
        raise SpecError(f"channels: 1..{max_layers} layers, got {len(spec.channels)}")
    if any(not 1 <= c <= MAX_CHANNELS for c in spec.channels):
        raise SpecError(f"channels: each 1..{MAX_CHANNELS}")


def _check_conv(spec: ModelSpec) -> None:
    """cnn and lenet5: a dense head after convolutions that each fit what they slide over."""
    _check_image(spec)
    _check_dense(spec)
    _check_widths(spec, MAX_CONV_LAYERS)
    if not 1 <= spec.kernel <= MAX_KERNEL:
        raise SpecError(f"kernel: 1..{MAX_KERNEL}, got {spec.kernel}")
    *inputs, (height, width) = zoo.feature_sizes(spec)
    for i, size in enumerate(inputs):
        if spec.kernel > min(size):
            raise SpecError(
                f"kernel: {spec.kernel} is larger than the {size[0]}x{size[1]} input "
                f"of convolution {i + 1}"
            )
    if height < 1 or width < 1:
        raise SpecError(
            f"channels: {len(spec.channels)} pooled layers leave nothing of a "
            f"{spec.input_shape[1]}x{spec.input_shape[2]} input"
        )


def _check_resnet(spec: ModelSpec) -> None:
    _check_image(spec)
    _check_widths(spec, MAX_STAGES)
    if min(spec.input_shape[1:]) < 3:
        raise SpecError("input_shape: a ResNet's 3x3 kernels need at least 3x3 inputs")
    stages = len(spec.channels)
    blocks, left = divmod(spec.depth - 2, 2 * stages)
    if left or not 1 <= blocks <= MAX_BLOCKS:
        depths = [2 * stages * n + 2 for n in range(1, MAX_BLOCKS + 1)]
        raise SpecError(f"depth: one of {depths} for {stages} stages, got {spec.depth}")
    if spec.norm not in NORMS:
        raise SpecError(f"norm: one of {', '.join(NORMS)}; got {spec.norm!r}")


_CHECKS: dict[str, Callable[[ModelSpec], None]] = {
    "mlp": _check_dense,
    "cnn": _check_conv,
    "lenet5": _check_conv,
    "resnet": _check_resnet,
}


def _as_tuple(value: tuple[float, ...] | float) -> tuple[float, ...]:
    """A norm field as the tuple it always is after ``__post_init__`` (the type admits a
    float so that ``ModelSpec(norm_mean=0.5)`` reads as it always did)."""
    return value if isinstance(value, tuple) else (value,)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _ints(values: Any) -> tuple[int, ...]:
    if not isinstance(values, list | tuple):
        raise TypeError("expected a list of integers")
    return tuple(_int(v) for v in values)


def _floats(values: Any) -> tuple[float, ...]:
    if not isinstance(values, list | tuple):
        raise TypeError("expected a list of numbers")
    return tuple(float(v) for v in values)


def _norm_values(value: Any) -> tuple[float, ...]:
    """One value for all channels (the only form before the zoo) or a list, one per channel."""
    return _floats(value) if isinstance(value, list | tuple) else (float(value),)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "arch": str,
    "input_shape": _ints,
    "hidden": _ints,
    "dropout": _floats,
    "num_classes": _int,
    "norm_mean": _norm_values,
    "norm_std": _norm_values,
    "channels": _ints,
    "kernel": _int,
    "depth": _int,
    "norm": _str,
}


def build_model(spec: ModelSpec) -> nn.Module:
    """The network a spec describes; parameter names are stable across processes."""
    return zoo.build(spec)


def model_with_state(
    spec: ModelSpec,
    state: Mapping[str, torch.Tensor],
    device: torch.device | str = "cpu",
    *,
    share: bool = False,
) -> nn.Module:
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
    """uint8 pixels to the float input the model was trained on.

    One mean and std apply to any shape (the MLP's [N, 28, 28] as well as [N, 1, 28, 28]);
    one per channel broadcast over [..., C, H, W].
    """
    # One new tensor, then in place: the same arithmetic without three more temporaries
    # (the server evaluates a test split every round, each node its shard).
    x = pixels.to(torch.float32, copy=True).div_(255.0)
    mean, std = _as_tuple(spec.norm_mean), _as_tuple(spec.norm_std)
    if len(mean) == len(std) == 1:
        return x.sub_(mean[0]).div_(std[0])
    view = (-1, 1, 1)
    return x.sub_(torch.tensor(mean, device=x.device).view(view)).div_(
        torch.tensor(std, device=x.device).view(view)
    )


def init_state(spec: ModelSpec, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic initial weights: the same seed gives the same round-0 model everywhere."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = build_model(spec)
    finally:
        torch.random.set_rng_state(generator_state)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


@functools.lru_cache(maxsize=256)  # every decoded frame and file checks its spec's budget
def parameter_count(spec: ModelSpec) -> int:
    """Exactly the built model's parameter count, from a model on the meta device (no memory,
    no initialisation): one source of truth for every arch."""
    with torch.device("meta"):
        model = build_model(spec)
    return sum(p.numel() for p in model.parameters())
