"""The floor a round cannot beat on this machine: the round's bytes through a plain loopback
TCP socket pair, plus one in-place weighted average of the nodes' weight sets.

The benchmarks call :func:`measure` right before the rounds it is compared with, from their
own process, which is idle meanwhile. ``python -m tests.bench.floor --bytes B --params P``
prints the same JSON object on its own.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
from typing import Any

import torch


def loopback_seconds(payload_bytes: int, transfers: int) -> float:
    """Send ``transfers`` buffers of ``payload_bytes`` through one loopback TCP connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    sender = socket.create_connection(listener.getsockname())
    receiver, _ = listener.accept()
    payload = memoryview(bytes(payload_bytes))
    inbox = bytearray(payload_bytes)
    view = memoryview(inbox)

    def send() -> None:
        for _ in range(transfers):
            sender.sendall(payload)

    try:
        started = time.perf_counter()
        thread = threading.Thread(target=send)
        thread.start()
        for _ in range(transfers):
            got = 0
            while got < payload_bytes:
                n = receiver.recv_into(view[got:], payload_bytes - got)
                if n == 0:
                    raise ConnectionError("sender closed early")
                got += n
        elapsed = time.perf_counter() - started
        thread.join()
    finally:
        for s in (sender, receiver, listener):
            s.close()
    return elapsed


def average_seconds(params: int, nodes: int) -> float:
    """One in-place weighted average (by sample count) of ``nodes`` float32 weight sets."""
    sets = [torch.randn(params) for _ in range(nodes)]
    weights = [1000 + i for i in range(nodes)]
    acc = torch.empty(params)
    started = time.perf_counter()
    acc.copy_(sets[0]).mul_(weights[0])
    for w, tensor in zip(weights[1:], sets[1:], strict=True):
        acc.add_(tensor, alpha=w)
    acc.div_(sum(weights))
    return time.perf_counter() - started


def measure(payload_bytes: int, params: int, nodes: int, repeats: int) -> dict[str, Any]:
    """Median of ``repeats`` of each part; the floor is their sum."""
    transfers = 2 * nodes  # each node downloads the global weights and uploads its own
    loopback_seconds(payload_bytes, 1)  # warm-up: page faults, socket buffers
    wire = [loopback_seconds(payload_bytes, transfers) for _ in range(repeats)]
    average_seconds(params, nodes)
    avg = [average_seconds(params, nodes) for _ in range(repeats)]
    return {
        "payload_bytes": payload_bytes,
        "params": params,
        "nodes": nodes,
        "transfers": transfers,
        "repeats": repeats,
        "loopback_s": statistics.median(wire),
        "loopback_all_s": wire,
        "average_s": statistics.median(avg),
        "average_all_s": avg,
        "floor_s": statistics.median(wire) + statistics.median(avg),
        "loopback_gbit_s": payload_bytes * transfers * 8 / statistics.median(wire) / 1e9,
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.floor")
    parser.add_argument("--bytes", type=int, required=True, help="one weights file")
    parser.add_argument("--params", type=int, required=True, help="parameters per weight set")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    json.dump(measure(args.bytes, args.params, args.nodes, args.repeats), sys.stdout)


if __name__ == "__main__":
    main()
