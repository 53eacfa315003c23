"""Benchmark 6: the model zoo, each arch's federated accuracy beside its centralised
reference, measured in one run: the table the README's model list quotes.

One federation, started once: a ``fedavg-server`` and N ``fedavg-node`` (4 by default; the
probed programs of ``start_probed_federation``, whose probe files this case does not read).
The archs then train one after another on that same cluster, each as its own job that
names its model in the JSON body of ``POST /train/mnist?epochs=R``
(``{"model": {"arch": ...}}``): the nodes take the spec from each job's ``train`` frame.

- ``mlp``, ``cnn``, ``lenet5``: each arch's defaults (the seed's 784-256-128-64-10 MLP;
  McMahan et al.'s CNN; LeNet-5);
- ``resnet``: depth 8 (one basic block a stage; channels 16/32/64; group norm) rather than
  the default 20, for CPU time. At depth 8 a training sample already costs about 1.4 x the
  CNN's here (an epoch of the 4,000 images: 9.6 s of CPU against 6.8 s, one thread), and
  depth 20 (three blocks a stage) about 3.5 x depth 8's: its job and reference would add
  about 5 min to a case that takes about 5 on 2 cores.

Data and training as in the CNN case (``cnn.training_env``, the training the server's
defaults): the offline MNIST subset (4,000 train / 1,000 test), split IID with no overlap
(``SHARD_OVERLAP=0``) and equal claimed capacities, so with 4 nodes each holds 1,000
images and trains on 900 (its 10 % validation hold-out); R = 5 rounds of one local epoch,
Adam lr 1e-3, batch 32; the server's seed 0 and a float32 wire, set here, not inherited.

Per arch:

- **federated accuracy**: the job's final test accuracy (the server's evaluation of the
  last global model on the 1,000 test images), and every round's;
- **job seconds**: the server's ``job_started`` -> ``job_done`` (round 0's weights written
  to the final model written; every round's evaluation is in it);
- **centralised accuracy**: the job's own spec (as the server answered it, the dataset's
  normalisation filled in), from the same round-0 weights (``init_state(spec, seed 0)``, as
  the server builds them), with the nodes' fused optimiser, learning rate and batch size,
  trained on all 4,000 training images for R x local-epochs epochs in a fresh process
  right after the job (``accuracy.run_centralised``), evaluated the same way;
- **gap** = federated - centralised.

One job per arch, not the median of 3 runs that other figures are: 4 archs x 3 would take
the case past its ~8 min budget on 2 cores. A warm-up job of one round (the MLP, one batch a
node) comes first, not in the table: a node process's first round imports
``torch._dynamo`` for its first Adam (about 3 s of CPU here), which would land in the
first arch's job seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from node.shared.model import ModelSpec, parameter_count
from server.core.job_request import train_view
from server.demo.local_cluster import LocalCluster, free_port
from tests.bench.accuracy import central_flags, run_centralised
from tests.bench.cnn import Training, training_env
from tests.bench.common import (
    BenchError,
    cores,
    loadavg,
    run_job,
    start_probed_federation,
    threads_per_node,
    timed,
)

MODELS: dict[str, dict[str, Any]] = {
    "mlp": {"arch": "mlp"},
    "cnn": {"arch": "cnn"},
    "lenet5": {"arch": "lenet5"},
    # Depth 8, not the default 20: CPU time (see the module's docstring).
    "resnet": {"arch": "resnet", "depth": 8, "norm": "group"},
}
"""Each case's model, as a job's JSON body names it; the dataset fills in the rest."""


@dataclass(frozen=True)
class Config(Training):
    models: tuple[str, ...] = tuple(MODELS)
    nodes: int = 4
    rounds: int = 5
    warmup: bool = True
    job_timeout_s: float = 600.0


def run(cfg: Config, workdir: Path) -> dict[str, Any]:
    threads = threads_per_node(cfg.nodes)
    # The MLP is the server's default model; each job names its own anyway.
    env = training_env(ModelSpec(), cfg, cfg.job_timeout_s, FEDAVG_SEED="0")
    env["FEDAVG_WIRE_DTYPE"] = "float32"
    with LocalCluster(home=workdir / "zoo", port=free_port(), env=env) as cluster:
        with timed() as start:
            start_probed_federation(cluster, workdir, "zoo", cfg.nodes, threads)
        with timed() as warmup:
            if cfg.warmup:
                body = {"model": MODELS["mlp"], "train": {"max_batches": 1}}
                run_job(cluster, 1, cfg.job_timeout_s, body)
        rows = [_model(cluster, cfg, name, threads) for name in cfg.models]
    return {
        "config": {
            **asdict(cfg),
            "threads_per_node": threads,
            "central_threads": threads,
            "central_epochs": cfg.rounds * cfg.local_epochs,
            "cores": cores(),
            "start_s": start["s"],
            "warmup_s": warmup["s"] if cfg.warmup else None,
        },
        "models": rows,
    }


def _model(cluster: LocalCluster, cfg: Config, name: str, threads: int) -> dict[str, Any]:
    """One job of ``name``'s model on the warm cluster, then its centralised reference."""
    load = loadavg()
    status, times = run_job(cluster, cfg.rounds, cfg.job_timeout_s, {"model": MODELS[name]})
    spec = ModelSpec.from_dict(status["model"])
    if spec.arch != MODELS[name]["arch"] or status["train"] != train_view(cfg.train):
        raise BenchError(
            f"job {status['run_id']} ran {status['model']} with {status['train']}, "
            f"not {MODELS[name]} with {train_view(cfg.train)}"
        )
    flags = central_flags(spec, cfg.train, fused=True)
    epochs = cfg.rounds * cfg.local_epochs
    central = run_centralised(cluster.home, epochs, threads, cfg.job_timeout_s, flags)
    fed = status["final_accuracy"]
    return {
        "name": name,
        "label": describe(spec),
        "spec": spec.to_dict(),
        "params": parameter_count(spec),
        "run_id": status["run_id"],
        "load_before": load,
        "load_after": loadavg(),
        "fed_accuracy": fed,
        "per_round_accuracy": [times.history[r]["test_accuracy"] for r in sorted(times.history)],
        "job_s": times.end - times.started,
        "central_accuracy": central["final_accuracy"],
        "central_per_epoch_accuracy": central["per_epoch_accuracy"],
        "central_train_s": central["train_wall_s"],
        "accuracy_gap": None if fed is None else fed - central["final_accuracy"],
        "centralised": central,
    }


def describe(spec: ModelSpec) -> str:
    """A short name for the report: the arch and the sizes that tell its variants apart."""
    if spec.arch == "mlp":
        return "mlp " + "-".join(map(str, (spec.input_size, *spec.hidden, spec.num_classes)))
    if spec.arch == "resnet":
        widths = "/".join(map(str, spec.channels))
        return f"resnet-{spec.depth} ({widths}, {spec.norm} norm)"
    head = "-".join(map(str, spec.hidden))
    return f"{spec.arch} (conv {'/'.join(map(str, spec.channels))}, FC {head})"
