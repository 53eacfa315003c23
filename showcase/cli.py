"""``fedavg-showcase``: serve the drawing app (Panel, port 7860 by default)."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from node.shared.logs import configure_logging
from showcase.errors import SettingsError
from showcase.models import ModelCache, ModelSource
from showcase.settings import Settings
from showcase.sources import DirectorySource, OrchestratorSource

log = structlog.get_logger(__name__)


def parse_args(argv: Sequence[str] | None, env: Mapping[str, str]) -> Settings:
    """Settings from the environment with command-line flags on top."""
    parser = argparse.ArgumentParser(
        prog="fedavg-showcase",
        description="Draw a digit (or upload an image) in the browser and see what a saved "
        "federated model predicts.",
    )
    parser.add_argument("--host", help="address to listen on (SHOWCASE_HOST; 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (SHOWCASE_PORT; 7860)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--home",
        type=Path,
        help="data directory (FEDAVG_HOME): serve the models in <home>/models, as the "
        "server saves them there",
    )
    where.add_argument(
        "--models-dir",
        type=Path,
        help="folder of saved .safetensors models (FEDAVG_MODELS_DIR; <FEDAVG_HOME>/models)",
    )
    where.add_argument(
        "--orchestrator",
        metavar="URL",
        help="orchestrator base URL(s), comma-separated, whose /models to use (ORCHESTRATOR_URL)",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="another host:port browsers may use to reach the app (SHOWCASE_ALLOW_ORIGIN)",
    )
    args = parser.parse_args(argv)
    if args.home is not None:
        env = {**env, "FEDAVG_HOME": str(args.home)}
    try:
        settings = Settings.from_env(env)
        return settings.with_overrides(
            host=args.host,
            port=args.port,
            models_dir=settings.models_dir if args.home is not None else args.models_dir,
            orchestrator=args.orchestrator,
            allow_origins=tuple(args.allow_origin),
        )
    except SettingsError as exc:  # one line, as the server and nodes say it
        print(f"fedavg-showcase: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def build_source(settings: Settings) -> ModelSource:
    if settings.orchestrator_urls:
        return OrchestratorSource(settings.orchestrator_urls, settings.max_upload_bytes)
    return DirectorySource(settings.models_dir, settings.max_upload_bytes)


def serve(
    settings: Settings,
    *,
    source: ModelSource | None = None,
    threaded: bool = False,
) -> Any:
    """Start the Panel server. Threaded: returns a thread with ``.stop()`` (for tests)."""
    import panel as pn  # here, not at the top: keeps `--help` and config errors fast

    from showcase.app import create_page

    source = source or build_source(settings)
    cache = ModelCache(max_bytes=settings.max_upload_bytes)
    log.info(
        "showcase_starting",
        url=f"http://{settings.host}:{settings.port}/",
        models=source.description,
    )

    def page() -> Any:  # Panel serves a plain function as "/" (a partial would be shown as text)
        return create_page(settings, source, cache)

    try:
        return pn.serve(  # type: ignore[no-untyped-call]
            page,
            port=settings.port,
            address=settings.host,
            websocket_origin=settings.websocket_origins,
            websocket_max_message_size=settings.websocket_max_message_bytes,
            show=False,
            threaded=threaded,
            title="fedavg · try the model",
        )
    except OSError as exc:  # binding the port: anything else is a bug, with its traceback
        if exc.errno == errno.EADDRINUSE:
            raise SettingsError(
                f"port {settings.port} is in use on {settings.host}: choose another with "
                "--port N (SHOWCASE_PORT), or stop the program that holds it"
            ) from exc
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EACCES):
            raise SettingsError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror} "
                "(check --host/SHOWCASE_HOST and --port/SHOWCASE_PORT)"
            ) from exc
        raise


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_args(argv, os.environ)
    configure_logging(settings.log_format)
    try:
        serve(settings)
    except SettingsError as exc:
        print(f"fedavg-showcase: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
