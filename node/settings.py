"""A node's configuration: built once from the environment and flags, then passed around."""

from __future__ import annotations

import math
import secrets
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from node.local_datasets import DataSpec, parse_data_specs
from node.shared import env_values
from node.shared.errors import DataError, FedavgError
from node.shared.logs import LogFormat
from node.shared.paths import fedavg_home
from node.shared.wandb_sink import wandb_mode


class NodeSettingsError(FedavgError):
    """A node setting that makes no sense; raised at start-up."""


MAX_VIRTUAL = 1000  # virtual nodes in one process: each holds a socket and its shard

# The durations a node reads, by the variable that sets them (progress has none: a test knob).
SECONDS_VARIABLES = {
    "idle_timeout_s": "FEDAVG_IDLE_TIMEOUT",
    "heartbeat_s": "FEDAVG_HEARTBEAT",
    "max_backoff_s": "FEDAVG_RECONNECT_MAX",
    "progress_interval_s": "progress_interval_s",
}


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
    # The node's own datasets (NODE_DATA / --data NAME=PATH), read and checked at start-up.
    data: tuple[DataSpec, ...] = ()
    test_split: float = 0.2  # of each own dataset, held out to evaluate global models on
    share_label_counts: bool = False  # tell the server each own dataset's label histogram
    wandb_mode: str | None = None
    wandb_project: str = "fedavg"
    virtual: int = 1  # logical nodes in this process (NODE_VIRTUAL / --virtual; node/virtual.py)
    virtual_workers: int = 1  # of them, how many train a round at once

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
                "device": env_values.text(env, "FEDAVG_DEVICE", "auto"),
                "threads": env_values.optional_whole(env, "FEDAVG_TORCH_THREADS"),
                "capacity": env_values.optional_number(env, "NODE_CAPACITY"),
                "validation_split": env_values.number(env, "VALIDATION_SPLIT", 0.1),
                "cache_dir": env_values.optional_path(env, "FEDAVG_CACHE_DIR")
                or home / "node-cache",
                "node_token": env.get("FEDAVG_NODE_TOKEN") or None,
                "ca_cert": env_values.optional_path(env, "FEDAVG_CA_CERT"),
                "log_format": env_values.text(env, "FEDAVG_LOG_FORMAT", "auto"),
                "idle_timeout_s": env_values.number(env, "FEDAVG_IDLE_TIMEOUT", 60.0),
                "max_backoff_s": env_values.number(env, "FEDAVG_RECONNECT_MAX", 30.0),
                "heartbeat_s": env_values.number(env, "FEDAVG_HEARTBEAT", 10.0),
                "data": _data_specs(env),
                "test_split": env_values.number(env, "NODE_TEST_SPLIT", 0.2),
                "share_label_counts": env_values.boolean(env, "NODE_SHARE_LABEL_COUNTS", False),
                "wandb_mode": wandb_mode(env),
                "wandb_project": env.get("WANDB_PROJECT") or "fedavg",
                "virtual": env_values.whole(env, "NODE_VIRTUAL", 1),
                "virtual_workers": env_values.whole(env, "NODE_VIRTUAL_WORKERS", 1),
            }
        except ValueError as exc:
            raise NodeSettingsError(f"bad setting: {exc}") from exc
        values.update(flags)
        if values["virtual"] > 1 and not env.get("WANDB_MODE"):
            # An API key alone would start one W&B run per virtual node: noise. Only an
            # explicit WANDB_MODE turns W&B on for them.
            values["wandb_mode"] = None
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        problems = []
        if not self.orchestrators:
            problems.append("no orchestrator URL (ORCHESTRATOR_URL or --orchestrator)")
        for url in self.orchestrators:
            if not url.startswith(("http://", "https://")):
                problems.append(
                    f"ORCHESTRATOR_URL/--orchestrator {url!r} must start with http:// or https://"
                )
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            problems.append(f"FEDAVG_DEVICE/--device {self.device!r} must be auto, cpu or cuda")
        if self.threads is not None and self.threads < 1:
            problems.append("FEDAVG_TORCH_THREADS/--threads must be >= 1")
        if self.capacity is not None and not (math.isfinite(self.capacity) and self.capacity > 0):
            problems.append("NODE_CAPACITY/--capacity must be a finite number of samples/s > 0")
        if not 0 <= self.validation_split < 1:
            problems.append("VALIDATION_SPLIT must be within [0, 1)")
        if not self.node_id or len(self.node_id) > 128 or not self.name or len(self.name) > 128:
            problems.append("NODE_ID/--node-id and NODE_NAME/--name must be 1..128 characters")
        for name, variable in SECONDS_VARIABLES.items():
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{variable} must be a finite number of seconds > 0, got {value}")
        if not 0 < self.test_split < 1:
            problems.append("NODE_TEST_SPLIT/--test-split must be within (0, 1)")
        if self.log_format not in ("auto", "json", "console"):
            problems.append("FEDAVG_LOG_FORMAT/--log-format must be auto, json or console")
        problems += self._virtual_problems()
        if problems:
            raise NodeSettingsError("; ".join(problems))

    def _virtual_problems(self) -> list[str]:
        problems = []
        if not 1 <= self.virtual <= MAX_VIRTUAL:
            problems.append(f"NODE_VIRTUAL/--virtual must be 1..{MAX_VIRTUAL}, got {self.virtual}")
        elif not 1 <= self.virtual_workers <= self.virtual:
            problems.append(
                f"NODE_VIRTUAL_WORKERS/--virtual-workers must be 1..NODE_VIRTUAL "
                f"({self.virtual}), got {self.virtual_workers}"
            )
        if self.virtual > 1 and self.data:
            # N nodes announcing one dataset would count its samples N times.
            problems.append("NODE_DATA/--data cannot be used with NODE_VIRTUAL/--virtual > 1")
        return problems

    def with_data_flags(self, values: list[str] | None) -> NodeSettings:
        """``--data`` flags replace NODE_DATA's list when any is given."""
        if not values:
            return self
        try:
            settings = replace(self, data=parse_data_specs(values, "--data"))
        except DataError as exc:
            raise NodeSettingsError(str(exc)) from exc
        settings.validate()
        return settings

    def check_files(self) -> None:
        """The one check that reads the disk, run by the CLI at start-up: a CA bundle that
        cannot be loaded would fail every connection, retried for ever."""
        if self.ca_cert is None:
            return
        try:
            ssl.create_default_context(cafile=str(self.ca_cert))
        except OSError as exc:  # ssl.SSLError is one: not PEM, no certificate in it
            reason = exc.strerror or str(exc)
            raise NodeSettingsError(
                f"FEDAVG_CA_CERT/--ca-cert {self.ca_cert}: cannot load it as a CA bundle ({reason})"
            ) from exc


def _data_specs(env: Mapping[str, str]) -> tuple[DataSpec, ...]:
    """NODE_DATA: ``NAME=PATH`` entries separated by ``;`` (a path may hold commas)."""
    raw = env.get("NODE_DATA", "")
    try:
        return parse_data_specs([v for v in raw.split(";") if v.strip()], "NODE_DATA")
    except DataError as exc:
        raise ValueError(str(exc)) from None
