"""The orchestrator's configuration: built once from the environment and flags, then passed on."""

from __future__ import annotations

import ipaddress
import math
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

from node.shared import env_values
from node.shared.errors import FedavgError, SpecError
from node.shared.logs import LogFormat
from node.shared.model import ARCHS, MAX_PARAMS, ModelSpec, parameter_count
from node.shared.paths import default_home, fedavg_home
from node.shared.protocol import TrainConfig, WireDtype
from node.shared.wandb_sink import wandb_mode
from server.core.partition import IID, Partition, PartitionError, parse_partition
from server.core.sampling import EVERYONE, Sampling, SamplingError
from server.core.server_opt import make_server_optimizer
from server.core.shard_plan import MAX_SEED
from server.job.best import DEFAULT_BEST_METRIC, SETTABLE_METRICS

AGGREGATIONS = ("weighted", "uniform", "median", "trimmed_mean")
MiB = 1024 * 1024
DEFAULT_MAX_PARAMS = 20_000_000
MAX_IMPORT_MB, MAX_IMPORT_SAMPLES = 1 << 20, 100_000_000  # ceilings of the import limits


class SettingsError(FedavgError):
    """A configuration value that makes no sense; raised at start-up, never later."""


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 11999
    home: Path = field(default_factory=lambda: default_home(os.environ))
    datasets_dir: Path | None = None
    models_dir: Path | None = None
    round_deadline_s: float = 120.0
    default_rounds: int = 5
    max_rounds: int = 1000
    shard_overlap: float = 0.15
    partition: Partition = IID  # how a job's shards split the labels, unless it says
    # The server optimizer a job steps with after the combine, unless it says ("none": FedAvg).
    server_opt: Mapping[str, Any] = field(default_factory=lambda: {"strategy": "none"})
    sampling: Sampling = EVERYONE  # which connected nodes a job's rounds train, unless it says
    aggregation: str = "weighted"
    best_metric: str = DEFAULT_BEST_METRIC  # what a job's saved best round is chosen by
    model_spec: ModelSpec = field(default_factory=ModelSpec)
    max_params: int = DEFAULT_MAX_PARAMS  # a job's model may have at most this many parameters
    train_config: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    mnist_download: bool = True
    admin_token: str | None = None
    node_token: str | None = None
    insecure: bool = False
    heartbeat_s: float = 10.0
    max_upload_bytes: int = 512 * MiB
    upload_slots: int = 4  # uploads read and folded at once: bounds server memory
    idle_timeout_s: float = 60.0  # an upload with no new bytes for this long is dropped
    # An upload must also average this rate overall (after a grace of idle_timeout_s), so a
    # body that trickles a byte at a time cannot hold an upload slot for ever.
    min_upload_rate: int = 64 * 1024  # bytes/s
    max_capacity_ratio: float = 1.0  # no node's planned share above this x the median's
    max_update_ratio: float = 10.0  # ||upload - global|| above this x ||global||: refused
    max_missed_rounds: int = 2  # a node that misses this many rounds in a row is not waited for
    log_format: LogFormat = "auto"
    wandb_mode: str | None = None  # None: W&B off (no WANDB_API_KEY / WANDB_MODE)
    wandb_project: str = "fedavg"
    failpoints: str = ""  # crash tests only: see server/failpoints.py
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Who may talk to us (server/guard.py): Host names beyond loopback and the bind host
    # ("*" = any), and origins beyond our own whose pages may use the control API.
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    # Connection limits (server/connections.py): seconds to deliver a request head, all
    # connections at once (0 = derived from the file-descriptor limit), and connections per
    # peer address that have not completed a request head yet.
    header_timeout_s: float = 10.0
    max_connections: int = 0
    max_pending_per_peer: int = 64
    # What a participant may cost the server (STYLE 19): frames per node socket, and how
    # much the server remembers of nodes that have gone.
    node_frame_rate: float = 20.0  # frames/s per node socket, with bursts of twice that
    max_offline_nodes: int = 256  # disconnected nodes kept in the registry (and in /nodes)
    max_node_ids: int = 10_000  # id -> secret bindings kept in SQLite, least recently seen go
    max_events: int = 100_000  # timeline rows kept in SQLite, oldest go
    # POST /datasets/import: the folders data may be imported from (none: <home>/imports),
    # and what one import may read (server/datasets/imports.py, node/shared/local_data.py).
    import_roots: tuple[Path, ...] = ()
    import_max_bytes: int = 2048 * MiB
    import_max_samples: int = 1_000_000

    @property
    def datasets_path(self) -> Path:
        return self.datasets_dir or self.home / "datasets"

    @property
    def models_path(self) -> Path:
        return self.models_dir or self.home / "models"

    @property
    def runs_path(self) -> Path:
        return self.home / "runs"

    @property
    def import_root_paths(self) -> tuple[Path, ...]:
        return self.import_roots or (self.home / "imports",)

    @property
    def db_path(self) -> Path:
        return self.home / "fedavg.sqlite3"

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], *, wire_dtype: str | None = None, **overrides: Any
    ) -> Settings:
        """Read every FEDAVG_* / seed variable; flags (``overrides``, None = unset) win."""
        defaults = cls()
        try:
            # In this order, so the first bad value named is the one it has always been.
            values: dict[str, Any] = {
                **_model_values(env, defaults.model_spec, wire_dtype),
                **_job_values(env, defaults),
                **_upload_values(env),
                **_output_values(env),
                **_connection_values(env),
                **_import_values(env),
            }
        except (ValueError, SpecError) as exc:
            raise SettingsError(f"bad setting: {exc}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise :class:`SettingsError` naming every value that makes no sense, in one go."""
        problems = [
            *self._job_problems(),
            *self._transport_problems(),
            *self._round_problems(),
            *self._tls_problems(),
            *self._connection_problems(),
            *self._participant_problems(),
            *self._import_problems(),
        ]
        if problems:
            raise SettingsError("; ".join(problems))

    def _job_problems(self) -> list[str]:
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append(f"FEDAVG_PORT/--port {self.port} is not 0..65535")
        if not (math.isfinite(self.round_deadline_s) and self.round_deadline_s > 0):
            problems.append("EPOCH_SYNC_TIMEOUT must be > 0 seconds")
        if not 1 <= self.default_rounds <= self.max_rounds:
            problems.append(f"DEFAULT_EPOCHS must be 1..{self.max_rounds}")
        if not 0 <= self.shard_overlap <= 1:
            problems.append("SHARD_OVERLAP must be within [0, 1]")
        if not 0 <= self.seed <= MAX_SEED:
            problems.append(f"FEDAVG_SEED must be 0..{MAX_SEED}")
        if self.aggregation not in AGGREGATIONS:
            problems.append(f"AGGREGATION must be one of {', '.join(AGGREGATIONS)}")
        if self.best_metric not in SETTABLE_METRICS:
            problems.append(f"FEDAVG_BEST_METRIC must be one of {', '.join(SETTABLE_METRICS)}")
        return [*problems, *self._model_problems()]

    def _model_problems(self) -> list[str]:
        if not 1 <= self.max_params <= MAX_PARAMS:
            return [f"FEDAVG_MAX_PARAMS must be 1..{MAX_PARAMS}"]
        count = parameter_count(self.model_spec)
        if count > self.max_params:
            return [
                f"the model (MODEL_HIDDEN_*) has {count:,} parameters, "
                f"over FEDAVG_MAX_PARAMS={self.max_params}"
            ]
        return []

    def _transport_problems(self) -> list[str]:
        problems = []
        if (
            not (math.isfinite(self.heartbeat_s) and self.heartbeat_s > 0)
            or self.max_upload_bytes <= 0
        ):
            problems.append("FEDAVG_HEARTBEAT and FEDAVG_MAX_UPLOAD_MB must be > 0")
        if (
            not self.insecure
            and not self.is_loopback
            and not (self.admin_token and self.node_token)
        ):
            problems.append(
                f"refusing to listen on {self.host} (not loopback) without FEDAVG_ADMIN_TOKEN and "
                "FEDAVG_NODE_TOKEN: anyone on the network could join or start jobs. "
                "Set both tokens, or pass --insecure on a network you trust"
            )
        if not (math.isfinite(self.idle_timeout_s) and self.idle_timeout_s > 0):
            problems.append("FEDAVG_IDLE_TIMEOUT must be > 0 seconds")
        if self.min_upload_rate < 1:
            problems.append("FEDAVG_MIN_UPLOAD_KBPS must be > 0")
        return problems

    def _round_problems(self) -> list[str]:
        problems = []
        if not (math.isfinite(self.max_capacity_ratio) and self.max_capacity_ratio >= 1):
            problems.append("FEDAVG_MAX_CAPACITY_RATIO must be a number >= 1")
        if not (math.isfinite(self.max_update_ratio) and self.max_update_ratio >= 0):
            problems.append("FEDAVG_MAX_UPDATE_RATIO must be >= 0 (0 turns the check off)")
        if not 0 <= self.max_missed_rounds <= 1000:
            problems.append("FEDAVG_MAX_MISSED_ROUNDS must be 0..1000 (0: always wait)")
        if not 1 <= self.upload_slots <= 256:
            problems.append("FEDAVG_UPLOAD_SLOTS must be 1..256")
        return problems

    def _tls_problems(self) -> list[str]:
        problems = []
        if (self.tls_cert is None) != (self.tls_key is None):
            problems.append(
                "TLS needs both FEDAVG_TLS_CERT and FEDAVG_TLS_KEY (--tls-cert/--tls-key)"
            )
        for tls_file, named in ((self.tls_cert, "CERT"), (self.tls_key, "KEY")):
            if tls_file is not None and not tls_file.is_file():
                flag = f"--tls-{named.lower()}"
                problems.append(f"FEDAVG_TLS_{named}/{flag} {tls_file} does not exist")
        return problems

    def _participant_problems(self) -> list[str]:
        problems = []
        if not (math.isfinite(self.node_frame_rate) and 1 <= self.node_frame_rate <= 10_000):
            problems.append("FEDAVG_NODE_FRAME_RATE must be 1..10000 frames/s")
        if not 0 <= self.max_offline_nodes <= 1_000_000:
            problems.append("FEDAVG_MAX_OFFLINE_NODES must be 0..1000000")
        if not 1 <= self.max_node_ids <= 10_000_000:
            problems.append("FEDAVG_MAX_NODE_IDS must be 1..10000000")
        if not 10 <= self.max_events <= 100_000_000:
            problems.append("FEDAVG_MAX_EVENTS must be 10..100000000")
        return problems

    def _import_problems(self) -> list[str]:
        problems = [
            f"FEDAVG_IMPORT_ROOTS: {str(root)!r} is not an absolute path"
            for root in self.import_roots
            if not root.is_absolute()
        ]
        if not MiB <= self.import_max_bytes <= MAX_IMPORT_MB * MiB:
            problems.append(f"FEDAVG_IMPORT_MAX_MB must be 1..{MAX_IMPORT_MB}")
        if not 1 <= self.import_max_samples <= MAX_IMPORT_SAMPLES:
            problems.append(f"FEDAVG_IMPORT_MAX_SAMPLES must be 1..{MAX_IMPORT_SAMPLES}")
        return problems

    def _connection_problems(self) -> list[str]:
        problems = []
        for name in self.allowed_hosts:
            if name != "*" and not _HOST_NAME.fullmatch(name):
                problems.append(
                    f"FEDAVG_ALLOWED_HOSTS: {name!r} is not a host name (no scheme, port or "
                    "path; '*' allows any)"
                )
        for origin in self.allowed_origins:
            if origin_key(origin) is None:
                problems.append(
                    f"FEDAVG_ALLOWED_ORIGINS: {origin!r} is not an origin like "
                    "https://dashboard.example:8443 (scheme, host and optional port only)"
                )
        if not (math.isfinite(self.header_timeout_s) and self.header_timeout_s > 0):
            problems.append("FEDAVG_HEADER_TIMEOUT must be > 0 seconds")
        if not 0 <= self.max_connections <= 1_000_000:
            problems.append("FEDAVG_MAX_CONNECTIONS must be 'auto' (0) or 1..1000000")
        if not 1 <= self.max_pending_per_peer <= 100_000:
            problems.append("FEDAVG_MAX_PENDING_PER_PEER must be 1..100000")
        return problems

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.tls_cert is None or self.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except (ssl.SSLError, OSError) as exc:
            raise SettingsError(
                f"FEDAVG_TLS_CERT/FEDAVG_TLS_KEY (--tls-cert/--tls-key): cannot load "
                f"{self.tls_cert} with {self.tls_key}: {exc}"
            ) from exc
        return context

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def _model_values(
    env: Mapping[str, str], spec_defaults: ModelSpec, wire_dtype: str | None
) -> dict[str, Any]:
    """The model's arch, layer sizes and dropout (MODEL_*) and the local training (FEDAVG_LR,
    ...). A job may choose its own; these are the defaults. Input shape, classes and
    normalisation come from each job's dataset."""
    arch = env_values.choice(env, "MODEL_ARCH", spec_defaults.arch, ARCHS)
    if arch != spec_defaults.arch:
        spec_defaults = ModelSpec(arch=arch)
    spec = _model_spec(env, spec_defaults)
    train = _train_config(
        lr=env_values.number(env, "FEDAVG_LR", 1e-3),
        batch_size=env_values.whole(env, "FEDAVG_BATCH_SIZE", 32),
        local_epochs=env_values.whole(env, "FEDAVG_LOCAL_EPOCHS", 1),
        proximal_mu=env_values.number(env, "FEDAVG_PROXIMAL_MU", 0.0),
        max_batches=env_values.optional_whole(env, "FEDAVG_MAX_BATCHES"),
        optimizer=env_values.choice(env, "FEDAVG_OPTIMIZER", "adam", ("adam", "sgd")),
        wire_dtype=env_values.check_choice(
            wire_dtype or env.get("FEDAVG_WIRE_DTYPE") or "float32",
            "FEDAVG_WIRE_DTYPE",
            get_args(WireDtype),
        ),
    )
    return {
        "model_spec": spec,
        "max_params": env_values.whole(env, "FEDAVG_MAX_PARAMS", DEFAULT_MAX_PARAMS),
        "train_config": train,
    }


def _model_spec(env: Mapping[str, str], defaults: ModelSpec) -> ModelSpec:
    """MODEL_HIDDEN_i and MODEL_DROPOUT_i over the arch's defaults; a spec they make invalid
    is refused naming the ones that are set."""
    hidden = tuple(
        env_values.whole(env, f"MODEL_HIDDEN_{i + 1}", h) for i, h in enumerate(defaults.hidden)
    )
    dropout = tuple(
        env_values.number(env, f"MODEL_DROPOUT_{i + 1}", p) for i, p in enumerate(defaults.dropout)
    )
    try:
        return replace(defaults, hidden=hidden, dropout=dropout)
    except SpecError as exc:
        given = [
            f"{name}={value}"
            for name, value in sorted(env.items())
            if name.startswith(("MODEL_HIDDEN_", "MODEL_DROPOUT_")) and value
        ]
        raise ValueError(f"{', '.join(given) or 'MODEL_ARCH'}: {exc}") from None


def _job_values(env: Mapping[str, str], defaults: Settings) -> dict[str, Any]:
    """Where the server listens and keeps its files, how jobs run, and the tokens."""
    return {
        "host": env_values.text(env, "FEDAVG_HOST", defaults.host),
        "port": env_values.whole(env, "FEDAVG_PORT", defaults.port),
        "home": fedavg_home(env),
        "datasets_dir": env_values.optional_path(env, "FEDAVG_DATASETS_DIR"),
        "models_dir": env_values.optional_path(env, "FEDAVG_MODELS_DIR"),
        "round_deadline_s": env_values.number(env, "EPOCH_SYNC_TIMEOUT", 120.0),
        "default_rounds": env_values.whole(env, "DEFAULT_EPOCHS", 5),
        "shard_overlap": env_values.number(env, "SHARD_OVERLAP", 0.15),
        "partition": _partition(env.get("FEDAVG_PARTITION") or "iid"),
        "server_opt": _server_opt(env),
        "sampling": _sampling(env),
        "aggregation": env_values.text(env, "AGGREGATION", "weighted"),
        "best_metric": env_values.choice(
            env, "FEDAVG_BEST_METRIC", DEFAULT_BEST_METRIC, SETTABLE_METRICS
        ),
        "seed": env_values.whole(env, "FEDAVG_SEED", 0),
        "mnist_download": env_values.boolean(env, "FEDAVG_MNIST_DOWNLOAD", True),
        "admin_token": env.get("FEDAVG_ADMIN_TOKEN") or None,
        "node_token": env.get("FEDAVG_NODE_TOKEN") or None,
    }


def _upload_values(env: Mapping[str, str]) -> dict[str, Any]:
    """The heartbeat, what an upload may cost, and what a round accepts and waits for."""
    return {
        "heartbeat_s": env_values.number(env, "FEDAVG_HEARTBEAT", 10.0),
        "max_upload_bytes": env_values.whole(env, "FEDAVG_MAX_UPLOAD_MB", 512) * MiB,
        "upload_slots": env_values.whole(env, "FEDAVG_UPLOAD_SLOTS", 4),
        "idle_timeout_s": env_values.number(env, "FEDAVG_IDLE_TIMEOUT", 60.0),
        "min_upload_rate": _kib_per_s(env_values.number(env, "FEDAVG_MIN_UPLOAD_KBPS", 64.0)),
        "max_capacity_ratio": env_values.number(env, "FEDAVG_MAX_CAPACITY_RATIO", 1.0),
        "max_update_ratio": env_values.number(env, "FEDAVG_MAX_UPDATE_RATIO", 10.0),
        "max_missed_rounds": env_values.whole(env, "FEDAVG_MAX_MISSED_ROUNDS", 2),
    }


def _kib_per_s(kbps: float) -> int:
    # NaN and Inf cannot become bytes/s; 0 is refused by validate() with the variable's name.
    return int(kbps * 1024) if math.isfinite(kbps) else 0


def _output_values(env: Mapping[str, str]) -> dict[str, Any]:
    """Logs, W&B, crash-test failpoints and the TLS files."""
    return {
        "log_format": env_values.choice(
            env, "FEDAVG_LOG_FORMAT", "auto", ("auto", "json", "console")
        ),
        "wandb_mode": wandb_mode(env),
        "wandb_project": env.get("WANDB_PROJECT") or "fedavg",
        "failpoints": env.get("FEDAVG_FAILPOINTS", ""),
        "tls_cert": env_values.optional_path(env, "FEDAVG_TLS_CERT"),
        "tls_key": env_values.optional_path(env, "FEDAVG_TLS_KEY"),
    }


def _connection_values(env: Mapping[str, str]) -> dict[str, Any]:
    """Who may talk to us, connection limits, and what a participant may cost the server."""
    return {
        "allowed_hosts": _csv(env.get("FEDAVG_ALLOWED_HOSTS", "")),
        "allowed_origins": _csv(env.get("FEDAVG_ALLOWED_ORIGINS", "")),
        "header_timeout_s": env_values.number(env, "FEDAVG_HEADER_TIMEOUT", 10.0),
        "max_connections": _auto_int(
            env.get("FEDAVG_MAX_CONNECTIONS", "auto"), "FEDAVG_MAX_CONNECTIONS"
        ),
        "max_pending_per_peer": env_values.whole(env, "FEDAVG_MAX_PENDING_PER_PEER", 64),
        "node_frame_rate": env_values.number(env, "FEDAVG_NODE_FRAME_RATE", 20.0),
        "max_offline_nodes": env_values.whole(env, "FEDAVG_MAX_OFFLINE_NODES", 256),
        "max_node_ids": env_values.whole(env, "FEDAVG_MAX_NODE_IDS", 10_000),
        "max_events": env_values.whole(env, "FEDAVG_MAX_EVENTS", 100_000),
    }


def _import_values(env: Mapping[str, str]) -> dict[str, Any]:
    """Where imported data may come from, and what one import may read."""
    roots = re.split(r"[,:]", env.get("FEDAVG_IMPORT_ROOTS", ""))  # either separator
    return {
        "import_roots": tuple(Path(root.strip()) for root in roots if root.strip()),
        "import_max_bytes": env_values.whole(env, "FEDAVG_IMPORT_MAX_MB", 2048) * MiB,
        "import_max_samples": env_values.whole(env, "FEDAVG_IMPORT_MAX_SAMPLES", 1_000_000),
    }


# The variable behind each TrainConfig field, so a refused value is named as the user set it.
TRAIN_VARIABLES = {
    "lr": "FEDAVG_LR",
    "batch_size": "FEDAVG_BATCH_SIZE",
    "local_epochs": "FEDAVG_LOCAL_EPOCHS",
    "proximal_mu": "FEDAVG_PROXIMAL_MU",
    "max_batches": "FEDAVG_MAX_BATCHES",
    "optimizer": "FEDAVG_OPTIMIZER",
    "wire_dtype": "FEDAVG_WIRE_DTYPE",
}


def _train_config(**values: Any) -> TrainConfig:
    """TrainConfig owns the bounds; each value is tried alone first, so the error names the
    one variable that breaks them."""
    for name, value in values.items():
        try:
            TrainConfig(**{name: value})
        except ValueError as exc:
            raise ValueError(f"{TRAIN_VARIABLES[name]}={value!r}: {exc}") from None
    return TrainConfig(**values)


SERVER_OPT_VARIABLES = {
    "server_lr": "FEDAVG_SERVER_LR",
    "server_momentum": "FEDAVG_SERVER_MOMENTUM",
}


def _server_opt(env: Mapping[str, str]) -> dict[str, Any]:
    """FEDAVG_STRATEGY and its FEDAVG_SERVER_LR / FEDAVG_SERVER_MOMENTUM; Flower's defaults
    for the rest (a job may choose its own)."""
    name = env.get("FEDAVG_STRATEGY") or "none"
    hyper = {}
    for field_name, variable in SERVER_OPT_VARIABLES.items():
        value = env_values.optional_number(env, variable)
        if value is not None:
            hyper[field_name] = value
    try:
        return dict(make_server_optimizer(name, {}, **hyper).config)
    except ValueError as exc:
        field_name, _, reason = str(exc).partition(": ")
        variable = SERVER_OPT_VARIABLES.get(field_name, "FEDAVG_STRATEGY")
        raise ValueError(f"{variable}: {reason}") from None


def _sampling(env: Mapping[str, str]) -> Sampling:
    """FEDAVG_FRACTION (1: every node trains every round) and FEDAVG_MIN_NODES (1)."""
    fraction = env_values.number(env, "FEDAVG_FRACTION", 1.0)
    min_nodes = env_values.whole(env, "FEDAVG_MIN_NODES", 1)
    try:
        return Sampling(fraction, min_nodes)
    except SamplingError as exc:
        variable = "FEDAVG_MIN_NODES" if str(exc).startswith("min_nodes") else "FEDAVG_FRACTION"
        raise ValueError(f"{variable}: {exc}") from None


def _partition(value: str) -> Partition:
    try:
        return parse_partition(value)
    except PartitionError as exc:
        raise ValueError(f"FEDAVG_PARTITION: {exc.reason}") from None


def _csv(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _auto_int(value: str, name: str) -> int:
    if value.strip().lower() in ("", "auto"):
        return 0
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a whole number or 'auto'") from None


# A DNS name or IP literal as a Host header carries it, without the port ("[::1]" brackets ok).
_HOST_NAME = re.compile(r"[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]")
DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_key(origin: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of a browser Origin such as ``http://127.0.0.1:11999``, with
    the default port filled in and the host lower-cased; None when it is not such an origin
    (``null``, a path, a user, another scheme)."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.username is not None:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme]
