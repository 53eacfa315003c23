"""A node's configuration: built once from the environment and flags, then passed around."""

from __future__ import annotations

import math
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.shared.errors import FedavgError
from node.shared.logs import LogFormat
from node.shared.paths import fedavg_home
from node.shared.wandb_sink import wandb_mode


class NodeSettingsError(FedavgError):
    """A node setting that makes no sense; raised at start-up."""


@dataclass(frozen=True, slots=True)
class NodeSettings:
    orchestrators: tuple[str, ...]
    node_id: str  # when not explicit, a fresh candidate: the identity file's id wins
    name: str
    explicit_node_id: bool = False  # --node-id or NODE_ID was given
    device: str = "auto"
    threads: int | None = None
    capacity: float | None = None  # samples/s to announce; None: measure at start-up
    validation_split: float = 0.1
    cache_dir: Path = Path("fedavg-cache")
    node_token: str | None = None
    ca_cert: Path | None = None
    log_format: LogFormat = "auto"
    idle_timeout_s: float = 60.0
    heartbeat_s: float = 10.0  # this end's WebSocket pings: a dead orchestrator is noticed
    max_backoff_s: float = 30.0
    progress_interval_s: float = 0.25
    exit_after_job: bool = False
    wandb_mode: str | None = None
    wandb_project: str = "fedavg"

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> NodeSettings:
        flags = {k: v for k, v in overrides.items() if v is not None}
        urls = flags.pop("orchestrator", None) or env.get(
            "ORCHESTRATOR_URL", "http://127.0.0.1:11999"
        )
        orchestrators = tuple(u.strip().rstrip("/") for u in urls.split(",") if u.strip())
        name = flags.pop("name", None) or env.get("NODE_NAME") or socket.gethostname()
        given_id = flags.pop("node_id", None) or env.get("NODE_ID")
        node_id = given_id or f"{name}-{secrets.token_hex(3)}"
        home = fedavg_home(env)
        try:
            values: dict[str, Any] = {
                "orchestrators": orchestrators,
                "node_id": node_id,
                "name": name,
                "explicit_node_id": bool(given_id),
                "device": env.get("FEDAVG_DEVICE", "auto"),
                "threads": int(env["FEDAVG_TORCH_THREADS"])
                if env.get("FEDAVG_TORCH_THREADS")
                else None,
                "capacity": float(env["NODE_CAPACITY"]) if env.get("NODE_CAPACITY") else None,
                "validation_split": float(env.get("VALIDATION_SPLIT", "0.1")),
                "cache_dir": Path(env["FEDAVG_CACHE_DIR"])
                if env.get("FEDAVG_CACHE_DIR")
                else home / "node-cache",
                "node_token": env.get("FEDAVG_NODE_TOKEN") or None,
                "ca_cert": Path(env["FEDAVG_CA_CERT"]) if env.get("FEDAVG_CA_CERT") else None,
                "log_format": env.get("FEDAVG_LOG_FORMAT", "auto"),
                "max_backoff_s": float(env.get("FEDAVG_RECONNECT_MAX", "30")),
                "heartbeat_s": float(env.get("FEDAVG_HEARTBEAT", "10")),
                "wandb_mode": wandb_mode(env),
                "wandb_project": env.get("WANDB_PROJECT") or "fedavg",
            }
        except ValueError as exc:
            raise NodeSettingsError(f"bad setting: {exc}") from exc
        values.update(flags)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        problems = []
        if not self.orchestrators:
            problems.append("no orchestrator URL (ORCHESTRATOR_URL or --orchestrator)")
        for url in self.orchestrators:
            if not url.startswith(("http://", "https://")):
                problems.append(f"orchestrator URL {url!r} must start with http:// or https://")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            problems.append(f"device {self.device!r} must be auto, cpu or cuda")
        if self.threads is not None and self.threads < 1:
            problems.append("threads must be >= 1")
        if self.capacity is not None and not (math.isfinite(self.capacity) and self.capacity > 0):
            problems.append("NODE_CAPACITY must be a finite number of samples/s > 0")
        if self.max_backoff_s <= 0:
            problems.append("FEDAVG_RECONNECT_MAX must be > 0 seconds")
        if not 0 <= self.validation_split < 1:
            problems.append("VALIDATION_SPLIT must be within [0, 1)")
        if not self.node_id or len(self.node_id) > 128 or not self.name or len(self.name) > 128:
            problems.append("node id and name must be 1..128 characters")
        for name in ("idle_timeout_s", "heartbeat_s", "max_backoff_s", "progress_interval_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{name} must be a finite number of seconds > 0, got {value}")
        if self.log_format not in ("auto", "json", "console"):
            problems.append("FEDAVG_LOG_FORMAT must be auto, json or console")
        if problems:
            raise NodeSettingsError("; ".join(problems))
