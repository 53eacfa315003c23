"""The orchestrator's configuration: built once from the environment and flags, then passed on."""

from __future__ import annotations

import ipaddress
import math
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, get_args

from node.errors import FedavgError, SpecError
from node.logs import LogFormat
from node.model import ModelSpec
from node.protocol import TrainConfig, WireDtype
from node.settings import default_home
from node.wandb_sink import wandb_mode

AGGREGATIONS = ("weighted", "uniform", "median", "trimmed_mean")
MiB = 1024 * 1024


class SettingsError(FedavgError):
    """A configuration value that makes no sense; raised at start-up, never later."""


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 11999
    home: Path = field(default_factory=lambda: default_home(os.environ))
    datasets_dir: Path | None = None
    models_dir: Path | None = None
    epoch_sync_timeout: float = 120.0
    default_epochs: int = 5
    max_epochs: int = 1000
    shard_overlap: float = 0.15
    aggregation: str = "weighted"
    model_spec: ModelSpec = field(default_factory=ModelSpec)
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
    log_format: LogFormat = "auto"
    wandb_mode: str | None = None  # None: W&B off (no WANDB_API_KEY / WANDB_MODE)
    wandb_project: str = "fedavg"
    failpoints: str = ""  # crash tests only: see server/failpoints.py
    tls_cert: Path | None = None
    tls_key: Path | None = None

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
    def db_path(self) -> Path:
        return self.home / "fedavg.sqlite3"

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], *, wire_dtype: str | None = None, **overrides: Any
    ) -> Settings:
        """Read every FEDAVG_* / seed variable; flags (``overrides``, None = unset) win."""
        defaults = cls()
        spec_defaults = defaults.model_spec
        try:
            hidden = tuple(
                int(env.get(f"MODEL_HIDDEN_{i + 1}", str(h)))
                for i, h in enumerate(spec_defaults.hidden)
            )
            dropout = tuple(
                float(env.get(f"MODEL_DROPOUT_{i + 1}", str(p)))
                for i, p in enumerate(spec_defaults.dropout)
            )
            spec = replace(spec_defaults, hidden=hidden, dropout=dropout)
            train = _train_config(
                lr=float(env.get("FEDAVG_LR", "1e-3")),
                batch_size=int(env.get("FEDAVG_BATCH_SIZE", "32")),
                local_epochs=int(env.get("FEDAVG_LOCAL_EPOCHS", "1")),
                max_batches=int(env["FEDAVG_MAX_BATCHES"])
                if env.get("FEDAVG_MAX_BATCHES")
                else None,
                optimizer=_choice(
                    env.get("FEDAVG_OPTIMIZER", "adam"), ("adam", "sgd"), "FEDAVG_OPTIMIZER"
                ),
                wire_dtype=_choice(
                    wire_dtype or env.get("FEDAVG_WIRE_DTYPE", "float32"),
                    get_args(WireDtype),
                    "FEDAVG_WIRE_DTYPE",
                ),
            )
            values: dict[str, Any] = {
                "host": env.get("FEDAVG_HOST", defaults.host),
                "port": int(env.get("FEDAVG_PORT", str(defaults.port))),
                "home": Path(env["FEDAVG_HOME"]) if env.get("FEDAVG_HOME") else default_home(env),
                "datasets_dir": _path(env.get("FEDAVG_DATASETS_DIR")),
                "models_dir": _path(env.get("FEDAVG_MODELS_DIR")),
                "epoch_sync_timeout": float(env.get("EPOCH_SYNC_TIMEOUT", "120")),
                "default_epochs": int(env.get("DEFAULT_EPOCHS", "5")),
                "shard_overlap": float(env.get("SHARD_OVERLAP", "0.15")),
                "aggregation": env.get("AGGREGATION", "weighted"),
                "model_spec": spec,
                "train_config": train,
                "seed": int(env.get("FEDAVG_SEED", "0")),
                "mnist_download": _bool(
                    env.get("FEDAVG_MNIST_DOWNLOAD", "true"), "FEDAVG_MNIST_DOWNLOAD"
                ),
                "admin_token": env.get("FEDAVG_ADMIN_TOKEN") or None,
                "node_token": env.get("FEDAVG_NODE_TOKEN") or None,
                "heartbeat_s": float(env.get("FEDAVG_HEARTBEAT", "10")),
                "max_upload_bytes": int(env.get("FEDAVG_MAX_UPLOAD_MB", "512")) * MiB,
                "upload_slots": int(env.get("FEDAVG_UPLOAD_SLOTS", "4")),
                "idle_timeout_s": float(env.get("FEDAVG_IDLE_TIMEOUT", "60")),
                "log_format": _choice(
                    env.get("FEDAVG_LOG_FORMAT", "auto"),
                    ("auto", "json", "console"),
                    "FEDAVG_LOG_FORMAT",
                ),
                "wandb_mode": wandb_mode(env),
                "wandb_project": env.get("WANDB_PROJECT") or "fedavg",
                "failpoints": env.get("FEDAVG_FAILPOINTS", ""),
                "tls_cert": _path(env.get("FEDAVG_TLS_CERT")),
                "tls_key": _path(env.get("FEDAVG_TLS_KEY")),
            }
        except (ValueError, SpecError) as exc:
            raise SettingsError(f"bad setting: {exc}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append(f"port {self.port} is not 0..65535")
        if not (math.isfinite(self.epoch_sync_timeout) and self.epoch_sync_timeout > 0):
            problems.append("EPOCH_SYNC_TIMEOUT must be > 0 seconds")
        if not 1 <= self.default_epochs <= self.max_epochs:
            problems.append(f"DEFAULT_EPOCHS must be 1..{self.max_epochs}")
        if not 0 <= self.shard_overlap <= 1:
            problems.append("SHARD_OVERLAP must be within [0, 1]")
        if self.aggregation not in AGGREGATIONS:
            problems.append(f"AGGREGATION must be one of {', '.join(AGGREGATIONS)}")
        lr = self.train_config.lr
        if not (math.isfinite(lr) and lr > 0) or self.train_config.batch_size < 1:
            problems.append("FEDAVG_LR must be > 0 and FEDAVG_BATCH_SIZE >= 1")
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
        if not 1 <= self.upload_slots <= 256:
            problems.append("FEDAVG_UPLOAD_SLOTS must be 1..256")
        if (self.tls_cert is None) != (self.tls_key is None):
            problems.append(
                "TLS needs both FEDAVG_TLS_CERT and FEDAVG_TLS_KEY (--tls-cert/--tls-key)"
            )
        for tls_file in (self.tls_cert, self.tls_key):
            if tls_file is not None and not tls_file.is_file():
                problems.append(f"TLS file {tls_file} does not exist")
        if problems:
            raise SettingsError("; ".join(problems))

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.tls_cert is None or self.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except (ssl.SSLError, OSError) as exc:
            raise SettingsError(f"cannot load the TLS certificate/key: {exc}") from exc
        return context

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def _train_config(**values: Any) -> TrainConfig:
    try:
        return TrainConfig(**values)
    except ValueError as exc:
        raise ValueError(
            "local training: FEDAVG_LR must be > 0, FEDAVG_BATCH_SIZE >= 1 (at most 65536), "
            f"FEDAVG_LOCAL_EPOCHS >= 1 (at most 1000), FEDAVG_MAX_BATCHES >= 1 ({exc})"
        ) from exc


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={value!r} is not a boolean (true/false)")


def _choice(value: str, choices: tuple[str, ...], name: str) -> str:
    if value not in choices:
        raise ValueError(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value
