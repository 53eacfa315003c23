"""``fedavg-demo``: a whole federation on this machine — orchestrator, N nodes, MNIST, FedAvg.

It starts the real programs as processes, prepares MNIST, trains, prints one line per
round as it closes (pushed over the dashboard socket), and shows where the model was saved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, get_args

import aiohttp

from node.shared.paths import cpu_count, fedavg_home
from node.shared.protocol import WireDtype
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
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="keep the federation up afterwards, until Ctrl-C (dashboard stays live)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.nodes <= 64 or not 1 <= args.rounds <= 1000:
        parser.error("--nodes must be 1..64 and --epochs 1..1000")
    return args


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
    except ClusterError as exc:
        print(f"\nfedavg-demo: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    finally:
        cluster.stop()
    raise SystemExit(code)


def _raise_interrupt() -> None:
    raise KeyboardInterrupt


async def _run(cluster: LocalCluster, args: argparse.Namespace, started: float) -> int:
    print(f"fedavg demo: {args.nodes} nodes, {args.rounds} rounds, data in {cluster.home}")
    # Server and nodes start together (both import torch, which takes seconds); the nodes
    # retry every second until the server answers.
    cluster.start_server()
    threads = max(1, cpu_count() // args.nodes)
    for i in range(1, args.nodes + 1):
        cluster.start_node(
            f"node-{i}", "--device", args.device, threads=threads, env={"FEDAVG_RECONNECT_MAX": "1"}
        )
    await asyncio.to_thread(cluster.wait_healthy)
    print(f"orchestrator up at {cluster.url}  (dashboard: {cluster.url}/, logs: {cluster.log_dir})")
    await asyncio.to_thread(cluster.wait_nodes, args.nodes)
    print(f"{args.nodes} nodes connected ({threads} torch thread(s) each)")
    info = await asyncio.to_thread(cluster.request, "POST", "/datasets/prepare-mnist", 600.0)
    print(
        f"MNIST ready: {info['train_samples']} train / {info['test_samples']} test samples "
        f"from {info['source']}\n  ({info['source_detail']})"
    )
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(cluster.url + "/ws/dashboard") as ws,
    ):
        await ws.receive()  # the snapshot
        job = await asyncio.to_thread(cluster.request, "POST", f"/train/mnist?epochs={args.rounds}")
        print(f"job {job['job_id']} started\n")
        print(
            f"{'round':>5}  {'nodes':>5}  {'test acc':>8}  {'test loss':>9}  {'seconds':>7}  note"
        )
        result = await asyncio.wait_for(_follow(ws, job["job_id"]), args.timeout)
    elapsed = time.monotonic() - started
    if result["kind"] != "job_done":
        print(f"\njob ended: {result['kind']} ({result['data'].get('error')})", file=sys.stderr)
        return 1
    model = cluster.home / "models" / str(result["data"]["model_name"])
    print(
        f"\nfinal test accuracy {result['data']['final_accuracy']:.4f} after {args.rounds} rounds; "
        f"wall time {elapsed:.1f} s"
    )
    print(f"saved model: {model}")
    showcase = Path(sys.executable).parent / "fedavg-showcase"  # the venv's, even off PATH
    print(f"try it:      {showcase} --models-dir {model.parent}")
    if args.keep_running:
        print(f"federation still running: dashboard {cluster.url}/  (stop with Ctrl-C)")
        await asyncio.Event().wait()
    return 0


async def _follow(ws: aiohttp.ClientWebSocketResponse, job_id: str) -> dict[str, Any]:
    """Print each closed round; return the job's final event."""
    tty = sys.stdout.isatty()
    async for msg in ws:
        if msg.type is not aiohttp.WSMsgType.TEXT:
            continue
        event = json.loads(msg.data)
        if event.get("run_id") != job_id:
            continue
        kind, data = event["kind"], event["data"]
        if kind == "progress" and tty:
            print(
                f"\r  training round {data['round']}: {event['node_id']} batch "
                f"{data['batch']}/{data['batches']} loss {data['loss']:.3f}   ",
                end="",
                flush=True,
            )
        elif kind == "round_closed":
            note = (
                "partial average (missing: " + ", ".join(data["missing"]) + ")"
                if data["partial"]
                else ""
            )
            row = (
                f"{data['round']:>5}  {len(data['contributors']):>5}  "
                f"{data['test_accuracy']:>8.4f}  {data['test_loss']:>9.4f}  "
                f"{data['seconds']:>7.2f}  {note}"
            )
            print(
                ("\r" if tty else "") + row,
                flush=True,
            )
        elif kind in ("job_done", "job_failed", "job_stopped"):
            return {"kind": kind, "data": data}
    raise ClusterError("the orchestrator closed the dashboard socket before the job ended")


if __name__ == "__main__":
    main()
