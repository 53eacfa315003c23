"""Benchmark 4: the demo federation's time to accuracy, next to centralised training.

Federated: the real ``fedavg-demo`` (orchestrator + N node processes, offline MNIST subset,
E rounds of one local epoch), timed end to end, with the job's own wall time and final
accuracy read from its SQLite run record. Centralised: the same model, optimiser,
learning rate, batch size and number of epochs over the whole training split in one
process (``python -m tests.bench.accuracy central``), evaluated after every epoch exactly as
the server evaluates each round. Both use the whole machine. The CNN case (``cnn.py``)
runs the same centralised training for its own model and training settings.

The same demo runs again with ``--wire-dtype bfloat16`` (weights travel and are checkpointed
in bfloat16; training and the average stay float32), as many times, so the narrow wire's
accuracy cost (its final accuracy - the float32 federation's) is measured, not assumed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from node.shared.evaluate import evaluate
from node.shared.model import ModelSpec, build_model, init_state, normalize
from node.shared.protocol import TrainConfig
from server.datasets import load_split
from server.demo.local_cluster import free_port
from tests.bench.common import REPO, BenchError, loadavg, summary, trained_samples


@dataclass(frozen=True)
class Config:
    nodes: int = 3
    epochs: int = 5
    runs: int = 3
    timeout_s: float = 600.0
    # Batches of 32 through a 235 k-parameter MLP are too small to split across threads:
    # on the 2-core machine one torch thread trained ~3x faster than two (the demo's nodes
    # run one thread each too), so the centralised baseline gets its fastest setting.
    central_threads: int = 1
    # Also run the demo with ``--wire-dtype bfloat16``, as many times as the float32 one.
    bf16: bool = True


def run(cfg: Config, workdir: Path) -> dict[str, Any]:
    runs = []
    for index in range(cfg.runs):
        home = workdir / f"accuracy-{index}"
        load = loadavg()
        fed = _federated(cfg, home)
        bf16 = _federated(cfg, workdir / f"accuracy-{index}-bf16", "bfloat16") if cfg.bf16 else None
        central = run_centralised(home, cfg.epochs, cfg.central_threads, cfg.timeout_s)
        row: dict[str, Any] = {
            "index": index,
            "load_before": load,
            "federated": fed,
            "centralised": central,
            "ratio_job_wall": fed["job_wall_s"] / central["train_wall_s"],
            "ratio_total_wall": fed["total_wall_s"] / central["total_wall_s"],
            "accuracy_gap": fed["final_accuracy"] - central["final_accuracy"],
        }
        if bf16 is not None:
            row.update(
                federated_bf16=bf16,
                ratio_job_wall_bf16=bf16["job_wall_s"] / central["train_wall_s"],
                ratio_total_wall_bf16=bf16["total_wall_s"] / central["total_wall_s"],
                ratio_job_wall_bf16_vs_fed=bf16["job_wall_s"] / fed["job_wall_s"],
                accuracy_cost_bf16=bf16["final_accuracy"] - fed["final_accuracy"],
                accuracy_gap_bf16=bf16["final_accuracy"] - central["final_accuracy"],
            )
        runs.append(row)
    keys: dict[str, Callable[[dict[str, Any]], float]] = {
        "fed_total_wall_s": lambda r: r["federated"]["total_wall_s"],
        "fed_job_wall_s": lambda r: r["federated"]["job_wall_s"],
        "fed_accuracy": lambda r: r["federated"]["final_accuracy"],
        "central_total_wall_s": lambda r: r["centralised"]["total_wall_s"],
        "central_train_wall_s": lambda r: r["centralised"]["train_wall_s"],
        "central_accuracy": lambda r: r["centralised"]["final_accuracy"],
        "ratio_job_wall": lambda r: r["ratio_job_wall"],
        "ratio_total_wall": lambda r: r["ratio_total_wall"],
        "accuracy_gap": lambda r: r["accuracy_gap"],
    }
    if cfg.bf16:
        keys.update(
            {
                "bf16_total_wall_s": lambda r: r["federated_bf16"]["total_wall_s"],
                "bf16_job_wall_s": lambda r: r["federated_bf16"]["job_wall_s"],
                "bf16_accuracy": lambda r: r["federated_bf16"]["final_accuracy"],
                "ratio_job_wall_bf16": lambda r: r["ratio_job_wall_bf16"],
                "ratio_total_wall_bf16": lambda r: r["ratio_total_wall_bf16"],
                "ratio_job_wall_bf16_vs_fed": lambda r: r["ratio_job_wall_bf16_vs_fed"],
                "accuracy_cost_bf16": lambda r: r["accuracy_cost_bf16"],
                "accuracy_gap_bf16": lambda r: r["accuracy_gap_bf16"],
            }
        )
    return {
        "config": asdict(cfg),
        "runs": runs,
        "summary": {k: summary(f(r) for r in runs) for k, f in keys.items()},
    }


def _federated(cfg: Config, home: Path, wire_dtype: str | None = None) -> dict[str, Any]:
    """One ``fedavg-demo`` run in ``home``; ``wire_dtype`` passes ``--wire-dtype``."""
    home.mkdir(parents=True, exist_ok=True)
    log = home / "demo.out"
    argv = [
        sys.executable,
        "-m",
        "server.demo.demo",
        "--nodes",
        str(cfg.nodes),
        "--epochs",
        str(cfg.epochs),
        "--home",
        str(home),
        "--port",
        str(free_port()),
        *(["--wire-dtype", wire_dtype] if wire_dtype else []),
    ]
    env = {**_env(), "FEDAVG_MNIST_DOWNLOAD": "false", "FEDAVG_HOME": str(home)}
    env.pop("FEDAVG_WIRE_DTYPE", None)  # the float32 run is float32 whatever the caller set
    t0 = time.perf_counter()
    with log.open("wb") as out:
        code = subprocess.run(
            argv,
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=cfg.timeout_s,
            check=False,
        ).returncode
    total = time.perf_counter() - t0
    if code != 0:
        raise BenchError(
            f"fedavg-demo exited {code}; its output ({log}) ends:\n"
            f"{log.read_text(errors='replace')[-2000:]}"
        )
    db = sqlite3.connect(f"file:{home / 'fedavg.sqlite3'}?mode=ro", uri=True)
    try:
        run_id, created, finished, accuracy, status, config = db.execute(
            "SELECT run_id, created, finished, final_accuracy, status, config FROM runs "
            "ORDER BY created DESC LIMIT 1"
        ).fetchone()
        rounds = db.execute(
            "SELECT round, test_accuracy, closed_at - opened_at FROM rounds WHERE run_id = ? "
            "ORDER BY round",
            (run_id,),
        ).fetchall()
    finally:
        db.close()
    if status != "completed":
        raise BenchError(f"the demo's job {run_id} ended {status}")
    used = json.loads(config).get("train", {}).get("wire_dtype", "float32")
    if used != (wire_dtype or "float32"):
        raise BenchError(f"the demo's job {run_id} ran with wire dtype {used}, not {wire_dtype}")
    return {
        "run_id": run_id,
        "wire_dtype": used,
        "total_wall_s": total,
        "job_wall_s": finished - created,
        "final_accuracy": accuracy,
        "per_round_accuracy": [r[1] for r in rounds],
        "round_seconds": [r[2] for r in rounds],
    }


def run_centralised(
    home: Path, epochs: int, threads: int | None, timeout_s: float, flags: Sequence[str] = ()
) -> dict[str, Any]:
    """:func:`centralised` in a fresh process (``python -m tests.bench.accuracy central``),
    as a node is one: its torch threads set at start; ``flags`` from :func:`central_flags`."""
    argv = [sys.executable, "-m", "tests.bench.accuracy", "central", "--home", str(home)]
    argv += ["--epochs", str(epochs), *(["--threads", str(threads)] if threads else []), *flags]
    t0 = time.perf_counter()
    out = subprocess.run(
        argv,
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    total = time.perf_counter() - t0
    if out.returncode != 0:
        raise BenchError(f"centralised training failed:\n{out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    result["total_wall_s"] = total
    return result


def central_flags(model: str | ModelSpec, config: TrainConfig, fused: bool = False) -> list[str]:
    """The ``central`` mode's flags for a model (an arch name: its default sizes; or a whole
    spec, such as the one a job's answer names) and a job's training settings; ``fused``: the
    optimiser exactly as ``node.trainer`` builds it."""
    flags = ["--spec", model.to_json()] if isinstance(model, ModelSpec) else ["--arch", model]
    flags += ["--batch-size", str(config.batch_size), "--lr", str(config.lr)]
    flags += ["--optimizer", config.optimizer, *(["--fused"] if fused else [])]
    return flags + (["--max-batches", str(config.max_batches)] if config.max_batches else [])


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def centralised(
    home: Path,
    epochs: int,
    threads: int | None = None,
    *,
    spec: ModelSpec | None = None,
    config: TrainConfig | None = None,
    fused: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Train a model (the default MLP unless ``spec``) on the whole training split, as one
    process would, with ``config``'s optimiser, learning rate, batch size and batch cap;
    evaluated on the test split after every epoch as the server evaluates every round; from
    the round-0 weights of a federation seeded ``seed``, which also orders the batches.
    ``epoch_train_s`` / ``epoch_cpu_s`` time each epoch's training alone (no evaluation)."""
    if threads is not None:  # as fedavg-node sets its own
        torch.set_num_threads(threads)
        with contextlib.suppress(RuntimeError):  # only before any parallel work
            torch.set_num_interop_threads(1)

    spec, config = spec or ModelSpec(), config or TrainConfig()
    x, y = load_split(home / "datasets", "mnist", "train")
    test_x, test_y = load_split(home / "datasets", "mnist", "test")
    t0 = time.perf_counter()
    model = build_model(spec)
    model.load_state_dict(init_state(spec, seed))  # the federation's round-0 weights
    optimizer = _optimizer(model, config, fused)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout's masks too, as a node seeds its own: a repeatable run
    accuracies, walls, cpus = [], [], []
    for _ in range(epochs):
        wall, cpu = _epoch(model, optimizer, spec, config, x, y, generator)
        walls.append(wall)
        cpus.append(cpu)
        state = {k: v.detach() for k, v in model.state_dict().items()}
        accuracies.append(evaluate(state, spec, test_x, test_y)[0])
    return {
        "train_wall_s": time.perf_counter() - t0,
        "final_accuracy": accuracies[-1],
        "per_epoch_accuracy": accuracies,
        "train_samples": len(y),
        "epoch_samples": trained_samples(len(y), config.batch_size, config.max_batches),
        "epoch_train_s": walls,
        "epoch_cpu_s": cpus,
        "arch": spec.arch,
        "spec": spec.to_dict(),
        "optimizer": f"{config.optimizer}{' (fused)' if fused else ''}, lr {config.lr}",
        "batch_size": config.batch_size,
        "torch_threads": torch.get_num_threads(),
        "seed": seed,
    }


def _optimizer(model: nn.Module, config: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    # fused=None: torch's default implementation (what this baseline has always used).
    kind = torch.optim.Adam if config.optimizer == "adam" else torch.optim.SGD
    return kind(model.parameters(), lr=config.lr, fused=True if fused else None)


def _epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    spec: ModelSpec,
    config: TrainConfig,
    x: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator,
) -> tuple[float, float]:
    """One epoch (at most ``config.max_batches`` batches); its (wall, CPU) seconds."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    order = torch.randperm(len(y), generator=generator)
    end = trained_samples(len(y), config.batch_size, config.max_batches)
    for i in range(0, end, config.batch_size):
        idx = order[i : i + config.batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(normalize(x[idx], spec)), y[idx])
        loss.backward()
        optimizer.step()
    return time.perf_counter() - wall0, time.process_time() - cpu0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.accuracy")
    parser.add_argument("mode", choices=("central",))
    parser.add_argument("--home", type=Path, required=True, help="a home with MNIST prepared")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--arch", default="mlp", help="the model: its arch's default sizes")
    parser.add_argument("--spec", help="the model as a JSON spec (instead of --arch)")
    defaults = TrainConfig()
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default=defaults.optimizer)
    parser.add_argument("--max-batches", type=int, help="at most this many batches an epoch")
    parser.add_argument("--fused", action="store_true", help="the nodes' fused optimiser")
    parser.add_argument("--seed", type=int, default=0, help="the federation's FEDAVG_SEED")
    args = parser.parse_args(argv)
    config = TrainConfig(
        lr=args.lr,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        max_batches=args.max_batches,
    )
    spec = ModelSpec.from_json(args.spec) if args.spec else ModelSpec(arch=args.arch)
    result = centralised(
        args.home,
        args.epochs,
        args.threads,
        spec=spec,
        config=config,
        fused=args.fused,
        seed=args.seed,
    )
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
