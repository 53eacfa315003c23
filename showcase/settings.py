"""The showcase's one config object, read once from the environment and the command line."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast, get_args

from node.shared.logs import LogFormat
from node.shared.paths import fedavg_home
from showcase.errors import SettingsError
from showcase.models import MAX_MODEL_BYTES

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_REFRESH_S = 5.0


def default_models_dir(env: Mapping[str, str]) -> Path:
    """Where the orchestrator saves final models: ``FEDAVG_MODELS_DIR``, else
    ``<FEDAVG_HOME>/models`` with FEDAVG_HOME defaulting to the user's data directory."""
    if env.get("FEDAVG_MODELS_DIR"):
        return Path(env["FEDAVG_MODELS_DIR"]).expanduser()
    return fedavg_home(env) / "models"


def parse_urls(text: str, source: str = "ORCHESTRATOR_URL") -> tuple[str, ...]:
    """A comma-separated list of orchestrator base URLs, each checked to be http(s);
    ``source`` (the variable or flag) is named when one is not."""
    urls = tuple(u.strip().rstrip("/") for u in text.split(",") if u.strip())
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SettingsError(f"{source}: {url!r} must look like http://host:port")
    return urls


def _port(text: str, source: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise SettingsError(f"{source} must be a port number, not {text!r}") from None
    if not 1 <= port <= 65535:
        raise SettingsError(f"{source} must be between 1 and 65535, not {port}")
    return port


def _log_format(text: str) -> LogFormat:
    if text not in get_args(LogFormat):
        raise SettingsError(f"FEDAVG_LOG_FORMAT must be auto, json or console, not {text!r}")
    return cast(LogFormat, text)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the app needs to start; flags override the environment."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    models_dir: Path = field(default_factory=lambda: default_models_dir({}))
    orchestrator_urls: tuple[str, ...] = ()
    """When set, models come from the orchestrator's REST API instead of ``models_dir``."""
    allow_origins: tuple[str, ...] = ()
    """Extra ``host:port`` origins the browser may use (e.g. the machine's LAN name)."""
    max_upload_bytes: int = MAX_MODEL_BYTES
    refresh_s: float = DEFAULT_REFRESH_S
    log_format: LogFormat = "auto"
    """JSON lines, a coloured console, or ``auto`` (console on a terminal), as everywhere."""

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise SettingsError(f"port must be between 1 and 65535, not {self.port}")
        if not self.host:
            raise SettingsError("host must not be empty")
        if self.max_upload_bytes < 1:
            raise SettingsError("max_upload_bytes must be positive")
        if not self.refresh_s > 0:
            raise SettingsError("refresh_s must be positive")
        if self.log_format not in get_args(LogFormat):
            raise SettingsError("log_format must be auto, json or console")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Settings from environment variables.

        ``ORCHESTRATOR_URL`` selects the REST API unless ``FEDAVG_MODELS_DIR`` names a
        folder explicitly (a node's env file often sets ORCHESTRATOR_URL for other reasons).
        """
        urls = parse_urls(env.get("ORCHESTRATOR_URL", ""))
        if env.get("FEDAVG_MODELS_DIR"):
            urls = ()
        origins = tuple(
            o.strip() for o in env.get("SHOWCASE_ALLOW_ORIGIN", "").split(",") if o.strip()
        )
        return cls(
            host=env.get("SHOWCASE_HOST", "") or DEFAULT_HOST,
            port=_port(env["SHOWCASE_PORT"], "SHOWCASE_PORT")
            if env.get("SHOWCASE_PORT")
            else DEFAULT_PORT,
            models_dir=default_models_dir(env),
            orchestrator_urls=urls,
            allow_origins=origins,
            log_format=_log_format(env.get("FEDAVG_LOG_FORMAT", "auto")),
        )

    def with_overrides(
        self,
        *,
        host: str | None = None,
        port: int | None = None,
        models_dir: Path | None = None,
        orchestrator: str | None = None,
        allow_origins: tuple[str, ...] = (),
    ) -> Settings:
        """Command-line values on top; ``--models-dir`` and ``--orchestrator`` each pick
        their own mode."""
        changes: dict[str, object] = {}
        if host is not None:
            changes["host"] = host
        if port is not None:
            changes["port"] = _port(str(port), "--port")
        if models_dir is not None:
            changes["models_dir"] = models_dir.expanduser()
            changes["orchestrator_urls"] = ()
        if orchestrator is not None:
            urls = parse_urls(orchestrator, "--orchestrator")
            if not urls:
                raise SettingsError("--orchestrator needs a URL")
            changes["orchestrator_urls"] = urls
        if allow_origins:
            changes["allow_origins"] = self.allow_origins + allow_origins
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def websocket_origins(self) -> list[str]:
        """Origins the Bokeh server accepts: this address, loopback names, and extras."""
        origins = {f"{self.host}:{self.port}", f"127.0.0.1:{self.port}", f"localhost:{self.port}"}
        return sorted(origins | set(self.allow_origins))

    @property
    def websocket_max_message_bytes(self) -> int:
        """Uploads travel base64-encoded over the page's WebSocket: make room for the limit."""
        return self.max_upload_bytes * 4 // 3 + 1024 * 1024
