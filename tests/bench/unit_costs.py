"""What one pass of each step of the round path costs on this machine, for one weights file.

The round-overhead benchmark measures these right before its runs, so the report can say
what bounds a round: how many passes over the model's bytes the code makes, times these
costs, against how many cores there are. Each one is a call the round path makes:

- ``check_state``: a node's or the server's validation of a state (keys, shapes, finite);
- ``fedavg_add``: the server folding one upload into its float64 sum (validation included);
- ``update_bound``: the server's check that an upload is not absurdly far from the global
  weights (``FEDAVG_MAX_UPDATE_RATIO``), paid once per upload before its fold;
- ``fedavg_result_into``: the average written into a weights file's tensor views
  (``weights_buffer``), as the server publishes the next global weights;
- ``encode_weights`` / ``decode_weights``: a whole weights file built / parsed and checked;
- ``sha256``: the digest of one file (the server per published round, a node per download);
- ``copy_into_fresh_buffer`` against ``copy_into_warm_buffer``: the price of a new
  allocation (page faults), paid again by every step that makes a fresh buffer of the
  model's size;
- ``evaluate_1000``: the server's evaluation of a model on 1,000 test images.

Each figure is the median of ``repeats`` calls, single-threaded where torch would otherwise
use every core (as the nodes do).
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def _time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first-touch page faults, lazy init
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def measure(hidden: tuple[int, ...], repeats: int = 3) -> dict[str, Any]:
    from node.shared.evaluate import evaluate
    from node.shared.model import ModelSpec, init_state, parameter_count
    from node.shared.weights import (
        WeightsMeta,
        check_state,
        decode_weights,
        encode_weights,
        expected_layout,
        weights_buffer,
    )
    from server.core.aggregation import FedAvg, UpdateBound

    spec = ModelSpec(hidden=hidden, dropout=(0.3, 0.2)[: len(hidden)])
    state = init_state(spec, 0)
    meta = WeightsMeta(spec=spec, round=1, job_id="bench")
    data = encode_weights(state, meta)
    layout = expected_layout(spec)
    _, views = weights_buffer(layout, meta)
    test_x = torch.randint(0, 256, (1000, 28, 28), dtype=torch.uint8)
    test_y = torch.randint(0, 10, (1000,))
    threads = torch.get_num_threads()
    costs: dict[str, float] = {}
    try:
        torch.set_num_threads(1)
        fedavg = FedAvg(layout)

        def fold() -> None:
            fedavg.add(state, 3)

        warm = bytearray(len(data))
        view = memoryview(warm)
        costs["check_state"] = _time(lambda: check_state(state, layout), repeats)
        costs["fedavg_add"] = _time(fold, repeats)
        bound = UpdateBound.around(state, max_ratio=10.0)
        costs["update_bound"] = _time(lambda: bound.check(state), repeats)
        costs["fedavg_result_into"] = _time(lambda: fedavg.result_into(views), repeats)
        costs["encode_weights"] = _time(lambda: encode_weights(state, meta), repeats)
        costs["decode_weights"] = _time(lambda: decode_weights(data), repeats)
        costs["sha256"] = _time(lambda: hashlib.sha256(data).digest(), repeats)
        costs["copy_into_fresh_buffer"] = _time(lambda: bytearray(data), repeats)
        costs["copy_into_warm_buffer"] = _time(lambda: view.__setitem__(slice(None), data), repeats)
        costs["evaluate_1000"] = _time(lambda: evaluate(state, spec, test_x, test_y), repeats)
    finally:
        torch.set_num_threads(threads)
    return {"bytes": len(data), "params": parameter_count(spec), "threads": 1, "seconds": costs}
