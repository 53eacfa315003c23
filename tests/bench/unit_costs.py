"""What one pass of each step of the round path costs on this machine, for one weights file.

The round-overhead benchmark measures these right before its runs, so the report can say
what bounds a round: how many passes over the model's bytes the code makes, times these
costs, against how many cores there are. ``copy_into_fresh_buffer`` against
``copy_into_warm_buffer`` is the price of a new allocation (page faults), paid again by
every step that makes a fresh buffer of the model's size. Each figure is the median of
``repeats`` calls, single-threaded where torch would otherwise use every core (as the
nodes do).
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
    from node.model import ModelSpec, build_model, init_state
    from node.weights import (
        WeightsMeta,
        check_state,
        decode_weights,
        encode_weights,
        expected_layout,
    )
    from server.evaluate import evaluate

    spec = ModelSpec(hidden=hidden, dropout=(0.3, 0.2)[: len(hidden)])
    state = init_state(spec, 0)
    meta = WeightsMeta(spec=spec, round=1, job_id="bench")
    data = encode_weights(state, meta)
    layout = expected_layout(spec)
    acc = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in state.items()}
    flat = torch.cat([v.reshape(-1) for v in state.values()])
    test_x = torch.randint(0, 256, (1000, 28, 28), dtype=torch.uint8)
    test_y = torch.randint(0, 10, (1000,))
    threads = torch.get_num_threads()
    costs: dict[str, float] = {}
    try:
        torch.set_num_threads(1)
        warm = bytearray(len(data))
        view = memoryview(warm)
        costs["copy_into_fresh_buffer"] = _time(lambda: bytearray(data), repeats)
        costs["copy_into_warm_buffer"] = _time(lambda: view.__setitem__(slice(None), data), repeats)
        costs["bytearray_slice_assign"] = _time(
            lambda: warm.__setitem__(slice(0, len(data)), data), repeats
        )
        costs["sha256"] = _time(lambda: hashlib.sha256(data).digest(), repeats)
        costs["isfinite_check"] = _time(lambda: check_state(state, layout), repeats)
        costs["finite_by_sum"] = _time(
            lambda: [bool(torch.isfinite(v.sum(dtype=torch.float64))) for v in state.values()],
            repeats,
        )
        costs["fold_f64_via_temp"] = _time(
            lambda: [a.add_(state[k].to(torch.float64), alpha=3) for k, a in acc.items()], repeats
        )
        costs["fold_f64_direct"] = _time(
            lambda: [a.add_(state[k], alpha=3) for k, a in acc.items()], repeats
        )
        costs["fold_f32_inplace"] = _time(lambda: flat.add_(flat, alpha=0.5), repeats)
        costs["encode_weights"] = _time(lambda: encode_weights(state, meta), repeats)
        costs["decode_weights"] = _time(lambda: decode_weights(data), repeats)
        costs["build_model"] = _time(lambda: build_model(spec), repeats)
        with torch.device("meta"):
            costs["build_model_meta"] = _time(lambda: build_model(spec), repeats)
        costs["evaluate_1000"] = _time(lambda: evaluate(state, spec, test_x, test_y), repeats)
    finally:
        torch.set_num_threads(threads)
    return {"bytes": len(data), "params": int(flat.numel()), "threads": 1, "seconds": costs}
