"""The benchmark suite at tiny sizes, so it cannot rot: it completes and writes a well-formed
report. No timing is asserted here (nor anywhere in the regular suite): timings belong to
``python -m tests.bench.run``, on a machine someone has looked at.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.bench.common import REPO

pytestmark = pytest.mark.slow


def _is_summary(value: Any) -> bool:
    return isinstance(value, dict) and {"median", "min", "max", "n"} <= set(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


@pytest.mark.timeout(960)  # beyond the run's own 900 s: its failure says where it was
def test_smoke_run_writes_a_complete_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.bench.run", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,  # about 3 min on a quiet 2-core machine; 8 min seen under load 7-9
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    report = json.loads((out / "report.json").read_text())
    assert report["smoke"] is True
    assert report["machine"]["cores"] >= 1
    benches = report["benchmarks"]
    assert set(benches) == {"overhead", "memory", "scale", "accuracy", "cnn", "zoo", "virtual"}
    assert not [name for name, b in benches.items() if "error" in b]

    overhead = benches["overhead"]
    assert overhead["runs"] and all(r["floor"]["floor_s"] > 0 for r in overhead["runs"])
    for key in (
        "overhead",
        "floor",
        "ratio_overhead",
        "notification",
        "download_max",
        "upload_max",
        "aggregation",
        "evaluation",
        "publish",
        "settle",
        "path_close",
    ):
        assert _is_summary(overhead["summary"][key]), key
        assert overhead["summary"][key]["n"] >= 1, key
    rounds = overhead["runs"][0]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:  # the critical path partitions the cycle: nothing unaccounted for
        assert r["critical_path_other"] == pytest.approx(0.0, abs=1e-6)
    assert overhead["unit_costs"]["seconds"]

    # The same benchmark with the server restarted on a bfloat16 wire.
    bf16 = overhead["bf16"]
    assert bf16["config"]["wire_dtype"] == "bfloat16"
    assert bf16["config"]["weights_bytes"] < overhead["config"]["weights_bytes"]
    assert len(bf16["runs"]) == len(overhead["runs"]) == report["runs"]
    for key in (
        "overhead",
        "floor",
        "ratio_overhead",
        "floor_float32",
        "ratio_overhead_float32_floor",
        "download_max",
        "upload_max",
        "aggregation",
        "publish",
        "path_close",
        "download_bytes",
    ):
        assert _is_summary(bf16["summary"][key]), key
        assert _is_number(bf16["summary"][key]["median"]), key
    assert _is_number(bf16["summary"]["overhead_vs_float32"])
    wide = overhead["summary"]["download_bytes"]["median"]
    assert bf16["summary"]["download_bytes"]["median"] < 0.6 * wide  # the wire did switch
    for r in bf16["runs"][0]["rounds"]:
        assert r["critical_path_other"] == pytest.approx(0.0, abs=1e-6)

    memory = benches["memory"]
    assert [c["nodes"] for c in memory["counts"]] == [1, 3]
    assert all(c["peak_rss"]["median"] > 0 for c in memory["counts"])
    assert isinstance(memory["summary"]["target_met"], bool)

    scale = benches["scale"]
    assert scale["summary"]["largest_ok"] == 12, scale["sizes"]
    size = scale["sizes"][0]
    assert size["connect"]["n"] == 12 and size["client_errors"] == 0
    assert size["jobs"][0]["notification"]["n"] == 12  # round 2's weights_ready, every node

    accuracy = benches["accuracy"]
    assert 0 < accuracy["summary"]["fed_accuracy"]["median"] <= 1
    assert 0 < accuracy["summary"]["central_accuracy"]["median"] <= 1
    assert 0 < accuracy["summary"]["bf16_accuracy"]["median"] <= 1
    for key in ("bf16_job_wall_s", "bf16_total_wall_s", "accuracy_cost_bf16"):
        assert _is_number(accuracy["summary"][key]["median"]), key
    assert accuracy["runs"][0]["federated_bf16"]["wire_dtype"] == "bfloat16"
    assert accuracy["runs"][0]["federated"]["wire_dtype"] == "float32"

    _check_seed(overhead["seed"])
    _check_cnn(benches["cnn"])
    _check_zoo(benches["zoo"])
    _check_virtual(benches["virtual"])

    markdown = (out / "report.md").read_text()
    for heading in (
        "# fedavg benchmarks",
        "## 1. Round overhead",
        "## 2. Server memory",
        "## 3. Scale",
        "## 4. Time to accuracy",
        "## 5. The CNN: node compute and round overhead",
        "## 6. The model zoo: federated and centralised accuracy",
        "## 7. Virtual nodes: 100 real nodes in a few processes",
    ):
        assert heading in markdown
    assert "Failed" not in markdown
    for row in (
        "| round overhead, bfloat16 wire |",
        "| — bfloat16 wire against the float32 floor |",
        "| — bfloat16 wire: final test accuracy |",
        "**bfloat16 wire.**",
        "| — CNN overhead share of the round |",
        "| seed MLP (242,762 params), 2 nodes: overhead = cycle - slowest node's compute |",
        "### Seed MLP: overhead against the slowest node's compute",
        "| zoo: resnet-8 (16/32/64, group norm) (",
        "| RSS per virtual node (12 in 1 / 2 processes) |",
    ):
        assert row in markdown, row


def _check_seed(seed: dict[str, Any]) -> None:
    """The seed MLP sub-run: the default model on its own cluster, each round's overhead
    beyond its slowest node's reported compute, and the critical path that splits it."""
    assert seed["config"]["params"] == 242_762 and seed["config"]["batch_size"] == 64
    run = seed["runs"][0]
    assert run["download_bytes"] == seed["config"]["weights_bytes"]
    assert [r["round"] for r in run["rounds"]] == [1, 2]
    for r in run["rounds"]:
        assert r["critical_path_other"] == pytest.approx(0.0, abs=1e-6)
        assert r["slowest_compute"] > 0 and r["samples"] == 2000  # 4,000 / 2 nodes, no val
        assert r["seed_overhead"] == pytest.approx(r["cycle"] - r["slowest_compute"])
    for key in ("slowest_compute", "seed_overhead", "overhead_per_compute", "cycle", "path_close"):
        assert _is_number(seed["summary"][key]["median"]), key
    assert seed["summary"]["target_overhead_per_compute"] == 0.2
    assert isinstance(seed["summary"]["target_met"], bool)


def _check_cnn(cnn: dict[str, Any]) -> None:
    """The CNN case: the server really trained the CNN, and every figure exists."""
    assert cnn["config"]["spec"]["arch"] == "cnn" and cnn["config"]["params"] == 1_663_370
    run = cnn["runs"][0]
    assert run["download_bytes"] == cnn["config"]["weights_bytes"]
    assert [r["round"] for r in run["rounds"]] == [1, 2]
    for r in run["rounds"]:
        assert r["critical_path_other"] == pytest.approx(0.0, abs=1e-6)
    nodes = [x for per_round in run["node_samples"] for x in per_round]
    assert len(nodes) == 2 * 2  # 2 nodes x 2 rounds, each with its samples and CPU
    assert all(x["trained"] == 64 and x["cpu"] > 0 for x in nodes)  # max_batches 2 of 32
    assert run["centralised"]["arch"] == "cnn" and run["centralised"]["epoch_samples"] == 64
    for key in (
        "overhead",
        "floor",
        "ratio_overhead",
        "overhead_share",
        "node_s_per_sample",
        "node_cpu_per_sample",
        "central_s_per_sample",
        "central_cpu_per_sample",
        "ratio_compute",
        "ratio_cpu",
        "ratio_federation",
        "concurrency",
        "accuracy_gap",
    ):
        assert _is_number(cnn["summary"][key]["median"]), key
    assert 0 < cnn["summary"]["overhead_share"]["median"] < 1
    assert 0 < cnn["summary"]["fed_accuracy"]["median"] <= 1
    assert 0 < cnn["summary"]["central_accuracy"]["median"] <= 1
    assert isinstance(cnn["summary"]["share_met"], bool)


def _check_zoo(zoo: dict[str, Any]) -> None:
    """The zoo case: one cluster trained each model it was asked for, as its own job, and
    the centralised reference trained the job's own spec."""
    models = zoo["models"]
    assert [m["name"] for m in models] == ["mlp", "resnet"]
    assert models[0]["params"] == 242_762 and models[0]["spec"]["hidden"] == [256, 128, 64]
    assert models[1]["spec"]["depth"] == 8 and models[1]["spec"]["norm"] == "group"
    assert len({m["run_id"] for m in models}) == 2
    for m in models:
        assert m["spec"]["arch"] == m["name"] and m["centralised"]["spec"] == m["spec"]
        assert len(m["per_round_accuracy"]) == 1  # 1 round
        assert m["centralised"]["epoch_samples"] == 64  # max_batches 2 of 32
        assert 0 < m["fed_accuracy"] <= 1 and 0 < m["central_accuracy"] <= 1
        assert _is_number(m["accuracy_gap"]) and m["job_s"] > 0


def _check_virtual(virtual: dict[str, Any]) -> None:
    """The virtual-node case: 12 real nodes as 1 process of 12, then 2 of 6; each layout's
    every node trained every round, and the RSS line and the floor exist."""
    layouts = virtual["layouts"]
    assert [(x["per_process"], x["processes"]) for x in layouts] == [(12, 1), (6, 2)]
    for x in layouts:
        assert x["round_s"]["n"] == 2 and len(x["process_peak_rss"]) == x["processes"]
        assert all(r > 0 for r in x["process_peak_rss"]) and _is_number(x["ratio_floor"])
        assert 0 < x["final_accuracy"] <= 1
    assert virtual["floor"]["round_floor_s"] > 0
    s = virtual["summary"]
    assert _is_number(s["rss_per_virtual_node"]) and s["rss_per_process"] > 0
    assert s["most_processes"] == 2


@pytest.mark.timeout(960)
def test_quality_smoke_writes_its_report_and_leaves_report_md(tmp_path: Path) -> None:
    """``--quality --smoke``: 2 nodes x 2 rounds, the MLP, FedAvg and FedAdam, iid and
    classes:2, seeds 0 and 1, one tuning setting. Each job ran what it asked for, every
    round has an accuracy, each seed its own reference with one per epoch, each cell is
    the mean of its seeds, the targets are judged, and ``report.md`` is not written."""
    out = tmp_path / "quality"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.bench.run", "--quality", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,  # about 2.5 min on a quiet 2-core machine, 7 min seen at load 10
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not (out / "report.md").exists() and not (out / "report.json").exists()
    result = json.loads((out / "quality.json").read_text())
    quality = result["quality"]
    assert quality["config"]["nodes"] == 2 and quality["config"]["rounds"] == 2
    [mlp] = quality["models"]
    assert mlp["name"] == "mlp" and len(mlp["centralised"]["per_epoch_accuracy"]) == 2
    cells = {(c["split"], c["strategy"]): c for c in mlp["cells"]}
    assert set(cells) == {(s, t) for s in ("iid", "classes:2") for t in ("FedAvg", "FedAdam")}
    assert len({r["run_id"] for c in cells.values() for r in c["runs"]}) == 8  # 2 seeds
    for (_, strategy), cell in cells.items():
        assert len(cell["per_round_accuracy"]) == 2 and cell["seeds"] == [0, 1]
        finals = [r["final_accuracy"] for r in cell["runs"]]
        assert cell["final_accuracy"] == pytest.approx(sum(finals) / 2)
        assert cell["final_min"] == min(finals) and _is_number(cell["gap"])
        assert cell["server_opt"]["strategy"] == ("fedadam" if strategy == "FedAdam" else "none")
    assert mlp["centralised"]["seeds"] == [0, 1]
    [central_0, central_1] = mlp["centralised"]["runs"]
    assert central_0["per_epoch_accuracy"] != central_1["per_epoch_accuracy"]  # its own seed
    tuning = quality["tuning"]
    settings = [(r["local_epochs"], r["lr"], r["batch_size"]) for r in tuning["rows"]]
    # the main setting, then the grid's, at 1 local epoch a round and then at 2
    assert settings == [(1, 0.001, 32), (1, 0.002, 32), (2, 0.002, 32)]
    assert [b["local_epochs"] for b in tuning["by_epochs"]] == [1, 2]
    [e2] = [r for r in tuning["rows"] if r["local_epochs"] == 2]
    assert len(e2["centralised"]["per_epoch_accuracy"]) == 4  # 2 rounds x 2 epochs
    assert all(len(r["centralised"]["seeds"]) == 2 for r in tuning["rows"])
    assert all(r["strategies"]["FedAvg"]["seeds"] == [0, 1] for r in tuning["rows"])
    assert _is_number(tuning["best_gap"]) and result["targets"]["iid_tuned"]["met"] is None
    assert all(sum(1 for v in h if v) <= 2 for h in quality["labels"]["classes:2"].values())
    assert {c["nodes"] for c in cells.values() if c["split"] == "classes:2"} == {5}  # 5 x 2 >= 10
    assert {c["nodes"] for c in cells.values() if c["split"] == "iid"} == {2}
    assert result["targets"]["iid"]["met"] is None  # the target is for 4 nodes x 5 rounds
    assert set(result["targets"]["classes2"]["mlp"]["gains"]) == {"FedAdam"}
    markdown = (out / "quality.md").read_text()
    assert "## Targets" in markdown and "## classes:2" in markdown and "Failed" not in markdown
    assert "## MLP, IID: the client's lr, batch size and local epochs" in markdown
    if result["plot"]:  # matplotlib comes with the offline-mnist extra
        png = out / result["plot"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 200_000
