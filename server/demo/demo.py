"""``fedavg-demo``: a whole federation on this machine — orchestrator, N nodes, MNIST, FedAvg.

It starts the real programs as processes, prepares MNIST, trains, and follows the job as
``fedavg train`` does (``server.console.follow``: a line per closed round, pushed over the
dashboard socket, and a live board of the nodes on a terminal), then shows where the model
was saved.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import aiohttp
from rich.console import Console

from node.shared.paths import cpu_count, fedavg_home
from node.shared.protocol import WireDtype
from server.console.errors import ConsoleError
from server.console.follow import follow, print_line, receive_snapshot
from server.console.views import NodeBoard
from server.demo.local_cluster import ClusterError, LocalCluster, free_port, port_is_free


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fedavg-demo",
        description="Run a whole federation here: orchestrator + nodes + MNIST + FedAvg.",
    )
    parser.add_argument("--nodes", type=int, default=3, help="worker processes (default 3)")
    parser.add_argument(
        "--epochs", dest="rounds", type=int, default=5, help="federated rounds (default 5)"
    )
    parser.add_argument("--port", type=int, default=11999, help="orchestrator port (default 11999)")
    parser.add_argument("--home", type=Path, help="data directory (FEDAVG_HOME; default per user)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--timeout", type=float, default=1800, help="give up after this many s")
    parser.add_argument(
        "--wire-dtype",
        choices=get_args(WireDtype),
        help="how weights travel: float32 (default), or bfloat16/float16 for half the bytes",
    )
    # Slower rounds, so the dashboard's bars can be watched filling (the default round is
    # well under a second here).
    parser.add_argument("--batch-size", type=int, help="local batch size (default: the server's)")
    parser.add_argument(
        "--local-epochs", type=int, help="local epochs per round (default: the server's)"
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="keep the federation up afterwards, until Ctrl-C (dashboard stays live)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.nodes <= 64 or not 1 <= args.rounds <= 1000:
        parser.error("--nodes must be 1..64 and --epochs 1..1000")
    return args


def job_body(args: argparse.Namespace) -> dict[str, Any]:
    """The ``POST /train/mnist`` body: the rounds, and the training settings asked for."""
    train = {
        name: getattr(args, name)
        for name in ("batch_size", "local_epochs")
        if getattr(args, name) is not None
    }
    return {"rounds": args.rounds, **({"train": train} if train else {})}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    home = args.home or fedavg_home(os.environ)
    port = args.port
    if not port_is_free(port):
        port = free_port()
        print(f"port {args.port} is busy; using {port}")
    started = time.monotonic()
    env = {"FEDAVG_WIRE_DTYPE": args.wire_dtype} if args.wire_dtype else {}
    cluster = LocalCluster(home=home, port=port, env=env)
    # SIGTERM (systemd, timeout, CI) stops the processes we started, just like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: _raise_interrupt())
    try:
        code = asyncio.run(_run(cluster, args, started))
    except (ClusterError, ConsoleError) as exc:
        print(f"\nfedavg-demo: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    finally:
        cluster.stop()
    raise SystemExit(code)


async def _start_federation(
    cluster: LocalCluster, args: argparse.Namespace, say: Callable[[str], None]
) -> None:
    """The orchestrator and the nodes up and connected, and MNIST prepared."""
    # Server and nodes start together (both import torch, which takes seconds); the nodes
    # retry every second until the server answers.
    cluster.start_server()
    threads = max(1, cpu_count() // args.nodes)
    for i in range(1, args.nodes + 1):
        cluster.start_node(
            f"node-{i}", "--device", args.device, threads=threads, env={"FEDAVG_RECONNECT_MAX": "1"}
        )
    await asyncio.to_thread(cluster.wait_healthy)
    say(f"orchestrator up at {cluster.url}  (dashboard: {cluster.url}/, logs: {cluster.log_dir})")
    await asyncio.to_thread(cluster.wait_nodes, args.nodes)
    say(f"{args.nodes} nodes connected ({threads} torch thread(s) each)")
    info = await asyncio.to_thread(cluster.request, "POST", "/datasets/prepare-mnist", 600.0)
    say(
        f"MNIST ready: {info['train_samples']} train / {info['test_samples']} test samples "
        f"from {info['source']}\n  ({info['source_detail']})"
    )


def _raise_interrupt() -> None:
    raise KeyboardInterrupt


async def _run(cluster: LocalCluster, args: argparse.Namespace, started: float) -> int:
    console = Console()
    say = functools.partial(print_line, console)
    say(f"fedavg demo: {args.nodes} nodes, {args.rounds} rounds, data in {cluster.home}")
    await _start_federation(cluster, args, say)
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(cluster.url + "/ws/dashboard", max_msg_size=16 << 20) as ws,
    ):
        snapshot = await receive_snapshot(ws)
        job = await asyncio.to_thread(cluster.request, "POST", "/train/mnist", body=job_body(args))
        startup = time.monotonic() - started
        say(f"job {job['job_id']} started\n")
        board = NodeBoard(job["job_id"], job["rounds"])
        board.seed(snapshot.get("nodes", []))
        ended = await asyncio.wait_for(follow(ws, board, console), args.timeout)
    if ended["state"] != "completed":
        print(f"\njob ended: {ended['state']} ({ended.get('error')})", file=sys.stderr)
        return 1
    status = await asyncio.to_thread(cluster.request, "GET", "/sync/status")
    model = cluster.home / "models" / str(ended["model_name"])
    say(f"\nfinal test accuracy {ended['final_accuracy']:.4f} after {args.rounds} rounds")
    say(
        f"start-up (processes, dataset) {startup:.1f} s · "
        f"training (job start to model saved) {status['elapsed_s']:.1f} s"
    )
    say(f"saved model: {model}")
    showcase = Path(sys.executable).parent / "fedavg-showcase"  # the venv's, even off PATH
    say(f"try it:      {showcase} --models-dir {model.parent}")
    if args.keep_running:
        say(f"federation still running: dashboard {cluster.url}/  (stop with Ctrl-C)")
        await asyncio.Event().wait()
    return 0


if __name__ == "__main__":
    main()
