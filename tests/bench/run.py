"""Run the benchmark suite and write ``docs/bench/report.md`` + ``docs/bench/report.json``.

    .venv/bin/python -m tests.bench.run            # the full suite (~14-16 min on 2 cores)
    .venv/bin/python -m tests.bench.run --smoke    # tiny sizes, one run each (about a minute)
    .venv/bin/python -m tests.bench.run --only overhead,memory --out /tmp/bench
    .venv/bin/python -m tests.bench.run --only cnn --smoke --out /tmp/bench-cnn
    .venv/bin/python -m tests.bench.run --only zoo --out /tmp/bench-zoo
    .venv/bin/python -m tests.bench.run --only virtual --out /tmp/bench-virtual
    .venv/bin/python -m tests.bench.run --quality          # quality.md/.json/.png (~15 min)
    .venv/bin/python -m tests.bench.run --quality --smoke --out /tmp/q   # its smallest form

Each benchmark runs in its own processes on free loopback ports, under a temporary
folder that is removed afterwards (``--keep`` leaves it). A benchmark that fails is
reported as failed and the others still run; the exit status is then 1. py-spy profiles of
the round path are taken when ``py-spy`` is installed (``--no-profile`` skips them).
``--quality`` runs the quality case alone (``quality.py``: accuracy per strategy, split and
model against centralised) and writes ``quality.md``, ``quality.json`` and ``quality.png``
into ``--out``; it leaves ``report.md`` and ``report.json`` as they are.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.bench import (
    accuracy,
    cnn,
    profile,
    quality,
    quality_report,
    report,
    round_overhead,
    scale,
    server_memory,
    virtual_nodes,
    zoo,
)
from tests.bench.common import REPO, loadavg, machine

BENCHMARKS = ("overhead", "memory", "scale", "accuracy", "cnn", "zoo", "virtual")


def configs(args: argparse.Namespace) -> dict[str, tuple[Callable[..., dict[str, Any]], Any]]:
    runs = args.runs
    if args.smoke:
        return {
            "overhead": (
                round_overhead.run,
                round_overhead.Config(
                    hidden=(32, 16, 8),
                    nodes=2,
                    rounds=2,
                    runs=runs,
                    floor_repeats=1,
                    profile=False,
                    job_timeout_s=120,
                    seed=round_overhead.Seed(
                        nodes=2,
                        rounds=2,
                        runs=runs,
                        floor_repeats=1,
                        max_batches=2,
                        warmup=False,
                        job_timeout_s=120,
                    ),
                ),
            ),
            "memory": (
                server_memory.run,
                server_memory.Config(
                    hidden=(32, 16, 8),
                    counts=(1, 3),
                    rounds=1,
                    runs=runs,
                    job_timeout_s=120,
                    compute_s=0.1,
                ),
            ),
            "scale": (
                scale.run,
                scale.Config(
                    sizes=(12,),
                    per_pack=6,
                    rounds=2,
                    runs=runs,
                    connect_timeout_s=60,
                    job_timeout_s=120,
                    round_deadline_s=60,
                ),
            ),
            "accuracy": (accuracy.run, accuracy.Config(nodes=1, epochs=1, runs=runs)),
            "cnn": (
                cnn.run,
                cnn.Config(
                    nodes=2,
                    rounds=2,
                    runs=runs,
                    max_batches=2,
                    floor_repeats=1,
                    job_timeout_s=120,
                ),
            ),
            "zoo": (
                zoo.run,
                zoo.Config(
                    models=("mlp", "resnet"),
                    nodes=2,
                    rounds=1,
                    max_batches=2,
                    warmup=False,
                    job_timeout_s=120,
                ),
            ),
            "virtual": (
                virtual_nodes.run,
                virtual_nodes.Config(
                    total=12, per_process=(12, 6), rounds=2, max_batches=2, floor_repeats=1
                ),
            ),
        }
    sizes = tuple(int(s) for s in args.scale_sizes.split(","))
    return {
        "overhead": (
            round_overhead.run,
            round_overhead.Config(
                runs=runs,
                profile=args.profile and profile.py_spy() is not None,
                seed=round_overhead.Seed(
                    runs=runs, profile=args.profile and profile.py_spy() is not None
                ),
            ),
        ),
        "memory": (server_memory.run, server_memory.Config(runs=runs)),
        "scale": (
            scale.run,
            scale.Config(
                sizes=sizes, runs=runs, profile_at=1000 if args.profile and 1000 in sizes else None
            ),
        ),
        "accuracy": (accuracy.run, accuracy.Config(runs=runs)),
        "cnn": (cnn.run, cnn.Config(runs=runs)),
        "zoo": (zoo.run, zoo.Config()),  # one job per arch: --runs does not apply
        # one job per layout, its rounds the samples: --runs does not apply
        "virtual": (virtual_nodes.run, virtual_nodes.Config()),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run each")
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated subset of {','.join(BENCHMARKS)}",
    )
    parser.add_argument("--runs", type=int, help="runs per figure (default 3; smoke 1)")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "docs" / "bench",
        help="where report.md/report.json (or quality.*) go (default docs/bench)",
    )
    parser.add_argument(
        "--scale-sizes",
        default="200,500,1000,2000",
        help="node counts tried in order until one breaks",
    )
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    parser.add_argument(
        "--quality-budget",
        type=float,
        metavar="S",
        help="the quality case's time bound in seconds (default 1800; smoke 900): raise it "
        "on a loaded machine, where cells past the bound are skipped",
    )
    parser.add_argument(
        "--quality",
        action="store_true",
        help="only the quality case: writes quality.md/.json/.png into --out, not report.*",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quality:
        return run_quality(args, argv)
    args.runs = args.runs or (1 if args.smoke else 3)
    if args.runs < 3 and not args.smoke:
        parser.error("every figure is a median of at least 3 runs: --runs must be >= 3")
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmarks {sorted(unknown)}; choose from {BENCHMARKS}")

    workdir = Path(tempfile.mkdtemp(prefix="fedavg-bench-"))
    started = time.monotonic()
    result = _header(args, argv, runs=args.runs, benchmarks={})
    failed = False
    table = configs(args)
    for name in chosen:
        fn, cfg = table[name]
        out, broke = _run_case(name, functools.partial(fn, cfg, workdir))
        failed |= broke
        result["benchmarks"][name] = out
    _copy_profiles(result, workdir, args.out)
    return _wrap_up(result, started, workdir, args, report.write, failed)


def _header(args: argparse.Namespace, argv: list[str] | None, **extra: Any) -> dict[str, Any]:
    """What every result file starts with: the command, the start, the machine, the load."""
    return {
        "command": "python -m tests.bench.run" + (" " + " ".join(argv or sys.argv[1:])).rstrip(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "smoke": args.smoke,
        "machine": machine(),
        "load_start": loadavg(),
        **extra,
    }


def _run_case(name: str, case: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """One case's result (its traceback, if it raised: the others still run) and whether
    it failed, with its wall time and the load around it."""
    print(f"[bench] {name} ... (load {loadavg()})", flush=True)
    t0, load = time.monotonic(), loadavg()
    failed = False
    try:
        out = case()
    except Exception:
        failed = True
        out = {"error": traceback.format_exc()}
        print(out["error"], file=sys.stderr, flush=True)
    out.update(wall_s=time.monotonic() - t0, load_before=load, load_after=loadavg())
    print(f"[bench] {name} done in {out['wall_s']:.0f} s", flush=True)
    return out, failed


def _wrap_up(
    result: dict[str, Any],
    started: float,
    workdir: Path,
    args: argparse.Namespace,
    write: Callable[[dict[str, Any], Path], tuple[Path, Path]],
    failed: bool,
) -> int:
    """Write the result files, drop the work folder (unless --keep); 1 if a case failed."""
    result["load_end"] = loadavg()
    result["duration_s"] = time.monotonic() - started
    json_path, md_path = write(result, args.out)
    print(f"[bench] wrote {md_path} and {json_path} in {result['duration_s'] / 60:.1f} min")
    if args.keep:
        print(f"[bench] work folder kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


def quality_config(smoke: bool, budget_s: float | None = None) -> quality.Config:
    """The quality case's sizes; smoke: 2 nodes, 2 rounds, the MLP, 2 strategies, 2 splits,
    2 seeds and one tuning setting. ``budget_s`` replaces the time bound."""
    cfg = _quality_sizes(smoke)
    return cfg if budget_s is None else dataclasses.replace(cfg, budget_s=budget_s)


def _quality_sizes(smoke: bool) -> quality.Config:
    if not smoke:
        return quality.Config()
    return quality.Config(
        models=("mlp",),
        strategies=("FedAvg", "FedAdam"),
        splits=("iid", "classes:2"),
        nodes=2,
        rounds=2,
        seeds=(0, 1),
        tuning=((2e-3, 32),),
        tuning_strategies=("FedAvg",),
        warmup=False,
        budget_s=900.0,  # every cell runs, even on a loaded machine: the test checks them all
        job_timeout_s=120.0,
    )


def run_quality(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``--quality``: the quality case alone, its own report files; 1 if it failed."""
    workdir = Path(tempfile.mkdtemp(prefix="fedavg-quality-"))
    started = time.monotonic()
    result = _header(args, argv)
    case = functools.partial(quality.run, quality_config(args.smoke, args.quality_budget), workdir)
    out, failed = _run_case("quality", case)
    result["quality"] = out
    return _wrap_up(result, started, workdir, args, quality_report.write, failed)


def _copy_profiles(result: dict[str, Any], workdir: Path, out: Path) -> None:
    overhead = result["benchmarks"].get("overhead", {})
    profiles = list((overhead.get("profiles") or {}).values())
    profiles += list((overhead.get("seed", {}).get("profiles") or {}).values())
    profiles += [
        s["profile"]
        for s in result["benchmarks"].get("scale", {}).get("sizes", [])
        if "profile" in s
    ]
    if not profiles:
        return
    (out / "profiles").mkdir(parents=True, exist_ok=True)
    for prof in profiles:
        src = workdir / prof["file"]
        if src.exists():
            shutil.copyfile(src, out / "profiles" / prof["file"])


if __name__ == "__main__":
    raise SystemExit(main())
