"""What a job asks for: its rounds, its model spec and its local-training settings.

``POST /train/{dataset}`` takes the seed's query (``?epochs=5``, now also ``&model=cnn``)
and, optionally, a JSON body with a whole spec and the training settings. The server's
settings are the defaults; the dataset supplies what only it knows (input shape, classes,
per-channel normalisation) wherever the request leaves it out. Everything is checked here,
before a shard is written, and each error names its field the way the request spells it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from node.shared.errors import SpecError
from node.shared.model import ARCHS, ModelSpec
from node.shared.protocol import TrainConfig
from server.core.aggregation import STRATEGIES
from server.core.partition import IID, Partition, PartitionError, parse_partition
from server.core.sampling import (
    EVERYONE,
    SAMPLING_FIELDS,
    Sampling,
    SamplingError,
    parse_sampling,
)
from server.core.server_opt import HYPER_FIELDS, make_server_optimizer

TRAIN_FIELDS: Final = (
    "optimizer",
    "lr",
    "batch_size",
    "local_epochs",
    "max_batches",
    "proximal_mu",
    "keep_optimizer_state",
)
"""The local-training settings a job may choose (seed and wire dtype stay the server's)."""

BODY_FIELDS: Final = (
    "rounds",
    "model",
    "train",
    "partition",
    "aggregation",
    "strategy",
    *HYPER_FIELDS,
    *SAMPLING_FIELDS,
)


class JobRequestError(ValueError):
    """A request a job cannot start from; the message names the field."""


@dataclass(frozen=True, slots=True)
class DataSchema:
    """What the job's dataset fixes about any model trained on it."""

    input_shape: tuple[int, ...]
    num_classes: int
    norm_mean: tuple[float, ...]
    norm_std: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class JobDefaults:
    """The server's settings, which every field a request leaves out falls back to."""

    spec: ModelSpec
    train: TrainConfig
    rounds: int
    max_rounds: int
    max_params: int
    partition: Partition = IID
    aggregation: str = "weighted"
    server_opt: Mapping[str, Any] = field(default_factory=lambda: {"strategy": "none"})
    sampling: Sampling = EVERYONE


@dataclass(frozen=True, slots=True)
class JobRequest:
    rounds: int
    spec: ModelSpec
    train: TrainConfig
    partition: Partition = IID
    aggregation: str = "weighted"  # how a round's updates are combined
    server_opt: Mapping[str, Any] = field(default_factory=lambda: {"strategy": "none"})
    sampling: Sampling = EVERYONE  # which connected nodes each round trains


def job_request(
    defaults: JobDefaults,
    data: DataSchema,
    query: Mapping[str, str],
    body: Mapping[str, Any] | None,
) -> JobRequest:
    """The checked request: the query's ``epochs`` and ``model``, then the body's fields."""
    body = body or {}
    unknown = sorted(set(body) - set(BODY_FIELDS))
    if unknown:
        raise JobRequestError(
            f"{unknown[0]}: unknown field (the body takes {', '.join(BODY_FIELDS)})"
        )
    rounds = _rounds(defaults, query.get("epochs"), body.get("rounds"))
    model = _one_of("model", query.get("model"), body.get("model"))
    spec = model_spec(defaults, data, model)
    train = train_config(defaults.train, body.get("train"))
    partition = _partition(defaults.partition, query.get("partition"), body.get("partition"))
    aggregation = _one_of("aggregation", query.get("aggregation"), body.get("aggregation"))
    if aggregation is not None and aggregation not in STRATEGIES:
        raise JobRequestError(
            f"aggregation: one of {', '.join(STRATEGIES)}, got {str(aggregation)[:40]!r}"
        )
    return JobRequest(
        rounds=rounds,
        spec=spec,
        train=train,
        partition=partition,
        aggregation=aggregation or defaults.aggregation,
        server_opt=server_opt_config(defaults.server_opt, query, body),
        sampling=_sampling(defaults.sampling, query, body),
    )


def _sampling(default: Sampling, query: Mapping[str, str], body: Mapping[str, Any]) -> Sampling:
    """``fraction`` and ``min_nodes`` from the query or the body (not both), else the
    settings'."""
    fraction = _one_of("fraction", query.get("fraction"), body.get("fraction"))
    min_nodes = _one_of("min_nodes", query.get("min_nodes"), body.get("min_nodes"))
    try:
        return parse_sampling(fraction, min_nodes, default)
    except SamplingError as exc:
        raise JobRequestError(str(exc)) from None


def server_opt_config(
    default: Mapping[str, Any], query: Mapping[str, str], body: Mapping[str, Any]
) -> dict[str, Any]:
    """The server optimizer a job asks for (``strategy`` and its hyper-parameters, from
    the query or the body), with Flower's defaults for what it leaves out; the settings'
    when it names none. Checked here, so a bad one starts no job."""
    chosen: dict[str, Any] = {}
    for name in ("strategy", *HYPER_FIELDS):
        raw = query.get(name)
        from_query: Any = raw
        if raw is not None and name != "strategy":
            try:
                from_query = float(raw)
            except ValueError:
                raise JobRequestError(f"{name}={raw[:40]!r} is not a number") from None
        value = _one_of(name, from_query, body.get(name))
        if value is not None:
            chosen[name] = value
    if not chosen:
        return dict(default)
    if "strategy" not in chosen:
        # Hyper-parameters alone tune the server's own optimizer.
        chosen = {**default, **chosen}
    name = chosen.pop("strategy")
    hyper = {k: v for k, v in chosen.items() if k in HYPER_FIELDS}
    if name == default.get("strategy") and not hyper:
        return dict(default)
    try:
        return dict(make_server_optimizer(name, {}, **hyper).config)
    except ValueError as exc:
        raise JobRequestError(str(exc)) from exc


def _partition(default: Partition, query: str | None, body: Any) -> Partition:
    """How the shards split the labels (``iid``, ``dirichlet:0.5``, ``classes:2``); the query
    and the body are compared once parsed, so ``dirichlet:.5`` agrees with ``dirichlet:0.5``."""
    try:
        parsed = [None if v is None else parse_partition(v) for v in (query, body)]
    except PartitionError as exc:
        raise JobRequestError(str(exc)) from exc
    from_query, from_body = parsed
    if from_query is not None and from_body is not None and from_query != from_body:
        raise JobRequestError(
            f"partition: the query says {str(from_query)!r} and the body {str(from_body)!r}"
        )
    return from_body or from_query or default


def model_spec(defaults: JobDefaults, data: DataSchema, model: Any) -> ModelSpec:
    """The spec for ``model``: None (the server's default spec), an arch name (that arch's
    defaults, or the server's sizes when it is the server's arch) or a spec object. Fields
    it leaves out that only the dataset knows come from ``data``."""
    if model is None or model == defaults.spec.arch:
        fields = _sized_by_data(defaults.spec.to_dict())
    elif isinstance(model, str):
        if model not in ARCHS:
            raise JobRequestError(f"model: unknown arch {model[:40]!r} (one of {', '.join(ARCHS)})")
        fields = {"arch": model}
    elif isinstance(model, dict):
        fields = dict(model)
    else:
        raise JobRequestError("model: an arch name or a model spec object")
    fields.setdefault("input_shape", list(data.input_shape))
    fields.setdefault("num_classes", data.num_classes)
    if "norm_mean" not in fields and "norm_std" not in fields:
        fields["norm_mean"], fields["norm_std"] = list(data.norm_mean), list(data.norm_std)
    try:
        spec = ModelSpec.from_dict(fields)
        spec.check_input(data.input_shape)
    except SpecError as exc:
        raise JobRequestError(f"model.{exc}") from exc
    try:
        spec.check_budget(defaults.max_params)
    except SpecError as exc:
        raise JobRequestError(f"model.{exc} (the server's FEDAVG_MAX_PARAMS)") from exc
    if spec.num_classes != data.num_classes:
        raise JobRequestError(
            f"model.num_classes: the model has {spec.num_classes} outputs, "
            f"the dataset has {data.num_classes} classes"
        )
    return spec


def _sized_by_data(spec: dict[str, Any]) -> dict[str, Any]:
    """The server's spec without the fields the dataset decides (they default to the data)."""
    return {
        k: v
        for k, v in spec.items()
        if k not in ("input_shape", "num_classes", "norm_mean", "norm_std")
    }


def train_config(defaults: TrainConfig, train: Any) -> TrainConfig:
    """``defaults`` with the body's ``train`` fields over it."""
    if train is None:
        return defaults
    if not isinstance(train, dict):
        raise JobRequestError("train: an object of " + ", ".join(TRAIN_FIELDS))
    for name, value in train.items():
        if name not in TRAIN_FIELDS:
            raise JobRequestError(f"train.{name}: unknown field (one of {', '.join(TRAIN_FIELDS)})")
        _check_type(name, value)
    try:
        return dataclasses.replace(defaults, **train)
    except ValueError as exc:  # TrainConfig's own checks, several at once
        raise JobRequestError(f"train: {exc}") from exc


def train_view(config: TrainConfig) -> dict[str, Any]:
    """The settings a job chose, as its views and answers show them."""
    return {name: getattr(config, name) for name in TRAIN_FIELDS}


_TRAIN_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "optimizer": (str,),
    "lr": (int, float),
    "batch_size": (int,),
    "local_epochs": (int,),
    "max_batches": (int, type(None)),
    "proximal_mu": (int, float),
    "keep_optimizer_state": (bool,),
}


def _check_type(name: str, value: Any) -> None:
    types = _TRAIN_TYPES[name]
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        kinds = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise JobRequestError(f"train.{name}: expected {kinds}, got {str(value)[:40]!r}")
    if name == "optimizer" and value not in ("adam", "sgd"):
        raise JobRequestError(f"train.optimizer: one of adam, sgd, got {str(value)[:40]!r}")


def _rounds(defaults: JobDefaults, query: str | None, body: Any) -> int:
    if query is not None:
        try:
            from_query: int | None = int(query)
        except ValueError:
            raise JobRequestError(f"epochs={query[:40]!r} is not an integer") from None
    else:
        from_query = None
    if body is not None and (isinstance(body, bool) or not isinstance(body, int)):
        raise JobRequestError(f"rounds: {body!r} is not an integer")
    rounds = _one_of("rounds", from_query, body)
    if rounds is None:
        return defaults.rounds
    if not 1 <= rounds <= defaults.max_rounds:
        name = "rounds" if body is not None else "epochs"  # the seed's query name
        raise JobRequestError(f"{name} must be within 1..{defaults.max_rounds}, got {rounds}")
    return int(rounds)


def _one_of(name: str, query: Any, body: Any) -> Any:
    """A field the query and the body may both carry, as long as they agree."""
    if query is not None and body is not None and query != body:
        raise JobRequestError(f"{name}: the query says {query!r} and the body {body!r}")
    return body if body is not None else query
