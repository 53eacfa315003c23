"""``fedavg-server``: run the orchestrator."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import errno
import os
import signal
import ssl
import sys
from pathlib import Path
from typing import get_args

import structlog
import torch
from aiohttp import web

from node.shared.errors import FedavgError
from node.shared.logs import configure_logging
from node.shared.protocol import WireDtype
from server import failpoints
from server.settings import Settings, SettingsError
from server.web.app import create_app
from server.web.connections import CONNECTIONS, LimitedSite, raise_fd_limit

log = structlog.get_logger(__name__)

EXIT_BAD_SETTING = 2  # a bad flag or variable, or an address we cannot listen on


class ListenError(FedavgError):
    """The address or port cannot be listened on (in use, not ours, not allowed)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fedavg-server",
        description="The fedavg orchestrator: nodes, REST API and dashboard on one port.",
        epilog="Every flag has an environment variable too (FEDAVG_HOST, FEDAVG_PORT, "
        "FEDAVG_HOME, ...); flags win. See README.md for the full list.",
    )
    parser.add_argument("--host", help="address to listen on (FEDAVG_HOST, default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, help="port (FEDAVG_PORT, default 11999; 0 picks a free one)"
    )
    parser.add_argument("--home", type=Path, help="data directory (FEDAVG_HOME)")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain (FEDAVG_TLS_CERT)")
    parser.add_argument("--tls-key", type=Path, help="PEM private key (FEDAVG_TLS_KEY)")
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow a non-loopback address without join/admin tokens",
    )
    parser.add_argument(
        "--log-format", choices=("auto", "json", "console"), help="FEDAVG_LOG_FORMAT"
    )
    parser.add_argument(
        "--wire-dtype",
        choices=get_args(WireDtype),
        help="how weights travel and are checkpointed (FEDAVG_WIRE_DTYPE, default float32): "
        "a half type halves the bytes; training and the final model stay float32",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        settings = Settings.from_env(
            os.environ,
            host=args.host,
            port=args.port,
            home=args.home,
            insecure=args.insecure,
            log_format=args.log_format,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            wire_dtype=args.wire_dtype,
        )
        ssl_context = settings.ssl_context()
        failpoints.arm(settings.failpoints)
    except (SettingsError, ValueError) as exc:
        print(f"fedavg-server: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_SETTING) from exc
    configure_logging(settings.log_format)
    # One intra-op thread: the orchestrator's tensor work (folds, copies, hashing) is bound
    # by memory, not compute, and evaluation runs in one niced background thread, so the
    # cores stay with the round's critical path and the nodes' training.
    torch.set_num_threads(1)
    _return_big_frees_to_the_os()
    log.info(
        "server_starting",
        host=settings.host,
        port=settings.port,
        home=str(settings.home),
        aggregation=settings.aggregation,
        epoch_sync_timeout=settings.round_deadline_s,
    )
    fd_limit = raise_fd_limit()  # before create_app: the connection cap follows it
    try:
        asyncio.run(serve(create_app(settings), settings, ssl_context, fd_limit))
    except ListenError as exc:
        print(f"fedavg-server: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_SETTING) from exc


async def serve(
    app: web.Application, settings: Settings, ssl_context: ssl.SSLContext | None, fd_limit: int
) -> None:
    """Run ``app`` until SIGINT/SIGTERM, as ``web.run_app`` would, but with every connection
    passing the app's ``ConnectionLimiter`` first (run_app has no hook for that)."""
    runner = web.AppRunner(
        app,
        access_log=None,
        # Also the wait for each request head after the first on a kept-alive connection.
        keepalive_timeout=settings.header_timeout_s,
        # Compressed bodies are refused (server/guard.py); never inflate one either.
        auto_decompress=False,
        shutdown_timeout=10.0,
    )
    await runner.setup()
    try:
        limiter = app[CONNECTIONS]
        site = LimitedSite(
            runner,
            settings.host,
            settings.port,
            limiter,
            ssl_context=ssl_context,
            backlog=1024,  # hundreds of nodes may (re)connect at once after a restart
        )
        await _listen(site, settings)
        log.info(
            "connection_limits",
            fd_limit=fd_limit,
            max_connections=limiter.max_total,
            max_pending=limiter.max_pending,
            max_pending_per_peer=limiter.max_pending_per_peer,
            header_timeout=limiter.header_timeout_s,
        )
        _announce(f"======== Running on {site.name} ========\n(Press CTRL+C to quit)")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


async def _listen(site: LimitedSite, settings: Settings) -> None:
    try:
        await site.start()
    except OSError as exc:
        where = f"{settings.host}:{settings.port}"
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(
                f"port {settings.port} is in use on {settings.host}: choose another with "
                "--port N (FEDAVG_PORT), or stop the program that holds it"
            ) from exc
        raise ListenError(
            f"cannot listen on {where}: {exc.strerror or exc} "
            "(check --host/FEDAVG_HOST and --port/FEDAVG_PORT)"
        ) from exc


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def _return_big_frees_to_the_os() -> None:
    """Serve allocations of 1 MiB and more with their own mappings, given back on free.

    glibc raises its mmap threshold (up to 32 MiB) each time a big block is freed, after
    which model-sized tensors come from the heap, whose freed holes are rarely returned:
    the idle RSS then creeps up job after job. A fixed threshold turns that off. Not glibc
    (musl, macOS): nothing to do.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 20)


def _announce(message: str) -> None:
    # "======== Running on http://host:port ========", as aiohttp prints it; tests and the
    # demo read it.
    print(message, flush=True)


if __name__ == "__main__":
    main()
