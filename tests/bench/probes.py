"""The real ``fedavg-server`` / ``fedavg-node`` programs with timing probes around each step.

``python -m tests.bench.probes server|node [the program's own flags]`` wraps a few
functions of the real code with a clock and then runs the program's ``main``. Each call
becomes one JSON line ``{"ev", "t0", "t1", "proc", ...}`` in ``$FEDAVG_BENCH_PROBE`` (no
probes without it); a synchronous call's line also has ``cpu``, the CPU seconds the whole
process used meanwhile (all its threads: for a node's ``train_locally``, which runs while
the event loop only answers pings, that is the training's CPU). A probe costs two clock
reads at each end and one short write per step (a handful per round), so it does not move
what it measures.

If a wrapped name disappears because the code changed, the program stops at start-up with
a message naming it: update the table below (the smoke test catches this in the suite).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

Info = Callable[[tuple[Any, ...], dict[str, Any], Any], dict[str, Any]]

_lock = threading.Lock()
_out: Any = None
_proc = "?"


def emit(ev: str, t0: float, t1: float, **info: Any) -> None:
    line = json.dumps({"ev": ev, "t0": t0, "t1": t1, "proc": _proc, **info}) + "\n"
    with _lock:
        _out.write(line)
        _out.flush()


def _resolve(target: str) -> tuple[Any, str, Any]:
    module_name, _, path = target.partition(":")
    owner: Any = importlib.import_module(module_name)
    *parents, attr = path.split(".")
    for name in parents:
        owner = getattr(owner, name, None)
    return owner, attr, getattr(owner, attr, None)


def wrap(targets: str, ev: str, info: Info | None = None, required: bool = True) -> None:
    """Replace ``module:attr`` or ``module:Class.attr`` by a timed wrapper of itself.

    ``targets`` may name alternatives separated by ``|`` (the first that exists is used),
    so the probe survives a rename in either direction.
    """
    for target in targets.split("|"):
        owner, attr, original = _resolve(target)
        if original is not None:
            break
    else:
        message = f"tests/bench/probes.py: {targets} no longer exists; update the probe table"
        if required:
            raise SystemExit(message)
        print(message + " (optional probe skipped)", file=sys.stderr)
        return

    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            t0 = time.time()
            result: Any = None
            try:
                result = await original(*args, **kwargs)
                return result
            finally:
                emit(ev, t0, time.time(), **_info(info, args, kwargs, result))

        setattr(owner, attr, timed_async)
    else:

        @functools.wraps(original)
        def timed_sync(*args: Any, **kwargs: Any) -> Any:
            t0, cpu0 = time.time(), time.process_time()
            result: Any = None
            try:
                result = original(*args, **kwargs)
                return result
            finally:
                cpu = time.process_time() - cpu0
                emit(ev, t0, time.time(), cpu=cpu, **_info(info, args, kwargs, result))

        setattr(owner, attr, timed_sync)


def _info(
    info: Info | None, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any
) -> dict[str, Any]:
    """The extra fields of a probe line; a probe never breaks the call it wraps."""
    if info is None:
        return {}
    try:
        return info(args, kwargs, result)
    except Exception as exc:
        return {"info_error": repr(exc)}


def _frame(args: tuple[Any, ...], _kw: dict[str, Any], _r: Any) -> dict[str, Any]:
    frame = args[1]
    return {"frame": frame.type, "round": getattr(frame, "round", None)}


def _path_bytes(args: tuple[Any, ...], _kw: dict[str, Any], result: Any) -> dict[str, Any]:
    return {"path": args[1], "bytes": len(result) if result is not None else None}


def _path_body(args: tuple[Any, ...], _kw: dict[str, Any], _r: Any) -> dict[str, Any]:
    """``upload_weights(path, parts)``: the body is the sum of its parts (header + tensors)."""
    parts = args[2]
    if isinstance(parts, bytes | bytearray | memoryview):
        parts = [parts]
    return {"path": args[1], "bytes": sum(memoryview(part).nbytes for part in parts)}


def _request_round(args: tuple[Any, ...], _kw: dict[str, Any], result: Any) -> dict[str, Any]:
    request = args[0]
    return {
        "round": request.query.get("round"),
        "bytes": len(result) if result is not None else None,
    }


def _job_upload(args: tuple[Any, ...], _kw: dict[str, Any], _r: Any) -> dict[str, Any]:
    return {"node": args[1], "round": args[2]}


def _round_arg(args: tuple[Any, ...], _kw: dict[str, Any], _r: Any) -> dict[str, Any]:
    return {"round": args[1]}


def _close(args: tuple[Any, ...], _kw: dict[str, Any], _r: Any) -> dict[str, Any]:
    """``_close_round(closed)`` and ``settle_round(closed, published)``: a ``RoundClosed``."""
    return {"round": args[1].round}


def _published(args: tuple[Any, ...], _kw: dict[str, Any], _r: Any) -> dict[str, Any]:
    """``WeightsFiles.write(published)``: a ``Published`` round (round 0: the initial weights)."""
    return {"round": args[1].checkpoint.round}


def _kind(args: tuple[Any, ...], _kw: dict[str, Any], _r: Any) -> dict[str, Any]:
    return {"kind": args[3]}


# (target, event, extra info, required): the analysis needs the required ones.
Probe = tuple[str, str, Info | None, bool]

SERVER_PROBES: list[Probe] = [
    ("server.web.transfer:read_body", "read_body", _request_round, False),
    ("server.web.transfer:bytes_with_etag", "serve_file", _kind, False),
    # From the read body on (decode, then the fold under the lock): the body's read is "upload".
    ("server.job.intake:Intake._decode", "job_upload", _job_upload, True),
    ("server.job.intake:decode_tensors", "decode", None, False),
    ("server.core.aggregation:FedAvg.add", "fold", None, True),
    ("server.core.aggregation:FedAvg.result_into", "result", None, False),
    # The next global weights: averaged straight into the file's bytes, then sha256.
    ("server.job.checkpoints:WeightsFiles.build", "publish", _round_arg, True),
    # A closed round's after-work (evaluate, checkpoint, record, ``round_closed``): off the
    # critical path except for the last round. The analysis attributes ``evaluate`` rows to
    # the round whose settle they ran inside, so this one is required.
    ("server.job.settle:Settler.settle_round", "settle", _close, True),
    ("server.job.settle:evaluate", "evaluate", None, True),
    ("server.job.checkpoints:WeightsFiles.write", "checkpoint", _published, False),
    ("server.job.job:Job._close_round", "close_round", _close, False),
]

NODE_PROBES: list[Probe] = [
    ("node.agent:Agent._handle", "frame", _frame, True),
    ("node.transport:HttpTransport.download", "download", _path_bytes, True),
    ("node.transport:HttpTransport.upload_weights", "upload", _path_body, True),
    ("node.pipeline:decode_weights", "decode", None, True),
    ("node.pipeline:train_locally", "train", None, True),
    ("node.pipeline:weights_parts", "encode", None, True),
    # The model around the downloaded tensors, inside ``train_locally``.
    ("node.trainer:model_with_state|node.trainer:build_model", "build_model", None, False),
    ("node.trainer:_evaluate", "validate", None, False),
]


def main(argv: list[str]) -> None:
    global _out, _proc
    if not argv or argv[0] not in ("server", "node"):
        raise SystemExit("usage: python -m tests.bench.probes server|node [program flags]")
    kind, rest = argv[0], argv[1:]
    _proc = rest[rest.index("--name") + 1] if "--name" in rest else kind
    if os.environ.get("FEDAVG_BENCH_PROBE"):
        _out = open(os.environ["FEDAVG_BENCH_PROBE"], "a", buffering=1)  # noqa: SIM115
        for target, ev, info, required in SERVER_PROBES if kind == "server" else NODE_PROBES:
            wrap(target, ev, info, required)
    if kind == "server":
        from server.cli import main as program
    else:
        from node.cli import main as program
    program(rest)


if __name__ == "__main__":
    main(sys.argv[1:])
