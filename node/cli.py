"""``fedavg-node``: a worker that trains what the orchestrator pushes."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import time
from pathlib import Path

import structlog
import torch

from node.agent import Agent, JoinRefused
from node.identity import Identity, IdentityError, load_or_create
from node.local_datasets import NodeDataset, load_node_dataset
from node.settings import NodeSettings, NodeSettingsError
from node.shared.errors import DataError
from node.shared.logs import configure_logging
from node.shared.model import ModelSpec
from node.shared.protocol import OwnDataset
from node.trainer import measure_capacity, resolve_device
from node.virtual import VirtualNode, run_agents, virtual_agents, virtual_nodes

log = structlog.get_logger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fedavg-node",
        description="A fedavg worker: joins the orchestrator, trains its shard, uploads weights.",
        epilog="Environment: ORCHESTRATOR_URL, NODE_NAME, NODE_ID, FEDAVG_DEVICE, "
        "FEDAVG_TORCH_THREADS, VALIDATION_SPLIT, FEDAVG_NODE_TOKEN, FEDAVG_CA_CERT, "
        "FEDAVG_CACHE_DIR, FEDAVG_HOME, FEDAVG_RECONNECT_MAX, FEDAVG_IDLE_TIMEOUT, "
        "FEDAVG_HEARTBEAT, NODE_CAPACITY, NODE_DATA, NODE_TEST_SPLIT, NODE_SHARE_LABEL_COUNTS, "
        "NODE_VIRTUAL, NODE_VIRTUAL_WORKERS. "
        "Flags win. A bad value exits with status 2.",
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
        "--home", type=Path, help="data directory (FEDAVG_HOME; the cache dir is under it)"
    )
    parser.add_argument(
        "--cache-dir", help="where shards and the node's identity are kept (FEDAVG_CACHE_DIR)"
    )
    parser.add_argument(
        "--exit-after-job",
        action="store_true",
        default=None,
        help="exit once a job is done instead of waiting for the next",
    )
    _add_data_arguments(parser)
    _add_virtual_arguments(parser)
    parser.add_argument("--log-format", choices=("auto", "json", "console"))
    return parser.parse_args(argv)


def _add_virtual_arguments(parser: argparse.ArgumentParser) -> None:
    """Many logical nodes in this one process (node/virtual.py)."""
    parser.add_argument(
        "--virtual",
        type=int,
        metavar="N",
        help="run N logical nodes in this process, each with its own id, socket and shard "
        "(NODE_VIRTUAL, 1..1000, default 1)",
    )
    parser.add_argument(
        "--virtual-workers",
        type=int,
        metavar="K",
        help="of the virtual nodes, at most K train a round at once "
        "(NODE_VIRTUAL_WORKERS, 1..N, default 1)",
    )


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The node's own data: datasets that never leave it."""
    parser.add_argument(
        "--data",
        action="append",
        metavar="NAME=PATH",
        help="a dataset of this node's own, which never leaves it (repeatable; NODE_DATA, "
        "';'-separated): an image folder, a .safetensors/.npz file with x and y, or an IDX "
        "images file with its labels beside it",
    )
    parser.add_argument(
        "--test-split",
        type=float,
        help="fraction of each own dataset held out to evaluate on (NODE_TEST_SPLIT, 0.2)",
    )
    parser.add_argument(
        "--share-label-counts",
        action="store_true",
        default=None,
        help="tell the server each own dataset's label counts (NODE_SHARE_LABEL_COUNTS; "
        "off: they reveal what the node holds)",
    )


def _settings(args: argparse.Namespace) -> NodeSettings:
    """The environment with the flags on top, its files checked (exit 2 when not usable)."""
    env = {**os.environ, "FEDAVG_HOME": str(args.home)} if args.home else os.environ
    settings = NodeSettings.from_env(
        env,
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
        test_split=args.test_split,
        share_label_counts=args.share_label_counts,
        virtual=args.virtual,
        virtual_workers=args.virtual_workers,
    ).with_data_flags(args.data)
    settings.check_files()
    return settings


def load_own_data(settings: NodeSettings) -> list[tuple[NodeDataset, OwnDataset]]:
    """Read, check and cache each own dataset before joining: a path that is wrong fails
    the start, not a job an hour later. Each with what the node may announce of it, which
    is what it logs."""
    loaded = []
    for spec in settings.data:
        log.info("local_data_reading", dataset=spec.name, path=str(spec.path))
        started = time.perf_counter()
        data = load_node_dataset(spec, settings.cache_dir, test_split=settings.test_split, seed=0)
        said = data.announcement(share_label_counts=settings.share_label_counts)
        log.info(
            "local_data_ready",
            seconds=round(time.perf_counter() - started, 2),
            detail=data.detail,
            **dataclasses.asdict(said),
        )
        loaded.append((data, said))
    return loaded


def _identities(settings: NodeSettings) -> tuple[NodeSettings, Identity, list[VirtualNode]]:
    """The node's own identity (its id into the settings) and, with --virtual N > 1, the N
    virtual nodes' (node/virtual.py)."""
    identity = load_or_create(
        settings.cache_dir,
        settings.node_id if settings.explicit_node_id else None,
        generated_id=settings.node_id,
    )
    settings = dataclasses.replace(settings, node_id=identity.node_id)
    virtual = virtual_nodes(settings, identity.node_id) if settings.virtual > 1 else []
    return settings, identity, virtual


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        settings = _settings(args)
        device = resolve_device(settings.device)
        settings, identity, virtual = _identities(settings)
    except (NodeSettingsError, IdentityError, OSError, RuntimeError) as exc:
        print(f"fedavg-node: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    configure_logging(settings.log_format)
    try:
        own_data = load_own_data(settings)
    except DataError as exc:
        print(f"fedavg-node: NODE_DATA/--data: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    torch.set_num_interop_threads(1)
    capacity = settings.capacity or measure_capacity(ModelSpec(), device)  # once a process
    log.info(
        "node_starting",
        node_id=settings.node_id,
        name=settings.name,
        device=str(device),
        capacity=round(capacity, 1),
        threads=torch.get_num_threads(),
        orchestrators=list(settings.orchestrators),
        virtual=settings.virtual,
        virtual_workers=settings.virtual_workers,
    )
    if virtual:
        _run(virtual_agents(settings, virtual, capacity, device))
        return
    agent = Agent(
        settings,
        capacity,
        device,
        secret=identity.secret,
        own_data=tuple(announced for _, announced in own_data),
        datasets={data.name: data for data, _ in own_data},
    )
    _run([agent])


def _run(agents: list[Agent]) -> None:
    try:
        asyncio.run(run_agents(agents))
    except JoinRefused as exc:
        log.error("join_refused", error=str(exc))
        raise SystemExit(3) from exc
    except KeyboardInterrupt:
        pass
    finally:
        for agent in agents:
            agent.wandb.close()


if __name__ == "__main__":
    main()
