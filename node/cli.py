"""``fedavg-node``: a worker that trains what the orchestrator pushes."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
from pathlib import Path

import structlog
import torch

from node.agent import Agent, JoinRefused
from node.identity import IdentityError, load_or_create
from node.settings import NodeSettings, NodeSettingsError
from node.shared.logs import configure_logging
from node.shared.model import ModelSpec
from node.trainer import measure_capacity, resolve_device

log = structlog.get_logger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fedavg-node",
        description="A fedavg worker: joins the orchestrator, trains its shard, uploads weights.",
        epilog="Environment: ORCHESTRATOR_URL, NODE_NAME, NODE_ID, FEDAVG_DEVICE, "
        "FEDAVG_TORCH_THREADS, VALIDATION_SPLIT, FEDAVG_NODE_TOKEN, FEDAVG_CA_CERT, "
        "FEDAVG_CACHE_DIR, FEDAVG_RECONNECT_MAX, NODE_CAPACITY. Flags win.",
    )
    parser.add_argument("--orchestrator", help="URL, or several comma-separated for failover")
    parser.add_argument("--name", help="display name (NODE_NAME, default: host name)")
    parser.add_argument(
        "--node-id",
        help="this node's id (NODE_ID; default: the one saved in the cache dir, else a new one)",
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), help="FEDAVG_DEVICE (default auto)"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (FEDAVG_TORCH_THREADS)")
    parser.add_argument(
        "--capacity",
        type=float,
        help="samples/s to announce instead of measuring them at start-up (NODE_CAPACITY): "
        "for a reproducible shard plan; the server bounds every claim",
    )
    parser.add_argument("--ca-cert", help="CA bundle to trust for https:// (FEDAVG_CA_CERT)")
    parser.add_argument(
        "--cache-dir", help="where shards and the node's identity are kept (FEDAVG_CACHE_DIR)"
    )
    parser.add_argument(
        "--exit-after-job",
        action="store_true",
        default=None,
        help="exit once a job is done instead of waiting for the next",
    )
    parser.add_argument("--log-format", choices=("auto", "json", "console"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        settings = NodeSettings.from_env(
            os.environ,
            orchestrator=args.orchestrator,
            name=args.name,
            node_id=args.node_id,
            device=args.device,
            threads=args.threads,
            capacity=args.capacity,
            exit_after_job=args.exit_after_job,
            log_format=args.log_format,
            ca_cert=None if args.ca_cert is None else Path(args.ca_cert),
            cache_dir=None if args.cache_dir is None else Path(args.cache_dir),
        )
        device = resolve_device(settings.device)
        identity = load_or_create(
            settings.cache_dir,
            settings.node_id if settings.explicit_node_id else None,
            generated_id=settings.node_id,
        )
        settings = dataclasses.replace(settings, node_id=identity.node_id)
    except (NodeSettingsError, IdentityError, OSError, RuntimeError) as exc:
        print(f"fedavg-node: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    configure_logging(settings.log_format)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    torch.set_num_interop_threads(1)
    capacity = settings.capacity or measure_capacity(ModelSpec(), device)
    log.info(
        "node_starting",
        node_id=settings.node_id,
        name=settings.name,
        device=str(device),
        capacity=round(capacity, 1),
        threads=torch.get_num_threads(),
        orchestrators=list(settings.orchestrators),
    )
    agent = Agent(settings, capacity, device, secret=identity.secret)
    try:
        asyncio.run(_run(agent))
    except JoinRefused as exc:
        log.error("join_refused", error=str(exc))
        raise SystemExit(3) from exc
    except KeyboardInterrupt:
        pass
    finally:
        agent.wandb.close()


async def _run(agent: Agent) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop)
    await agent.run()


if __name__ == "__main__":
    main()
