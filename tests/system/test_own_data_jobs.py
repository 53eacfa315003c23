"""Jobs over the nodes' own data, with the real programs: no sample ever reaches the orchestrator.

Four ``fedavg-node`` processes each hold a label-skewed folder of real MNIST digits
(``tests/system/own_data_folders.py``: 1,200 digits, Dirichlet alpha = 0.5, seeded) and are
started with ``--data mnist-local=<folder>``; the orchestrator prepares no dataset. A job
over that name trains on the folders where they lie, the nodes evaluate each round's model on
their own test splits, and the server serves weights and counts only. A fifth node whose
digits are 14x14 is left out with a reason; a saved model is evaluated by the nodes alone
(its weighted mean is checked here against the model's accuracy on the union of the nodes'
test splits, rebuilt from the same folders); a SIGKILLed orchestrator resumes the job with
the nodes and their data; and a scripted node that claims more samples than it announced is
refused, so the average is exactly the honest uploads' weighted mean.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import torch

from node.local_datasets import DataSpec, load_node_dataset
from node.shared.evaluate import evaluate
from node.shared.protocol import (
    Done,
    Evaluate,
    Evaluation,
    Left,
    OwnData,
    OwnDataset,
    Train,
    encode,
)
from node.shared.shards import ShardError, decode_xy
from node.shared.weights import WeightsMeta, decode_weights, encode_weights, sha256_hex
from server.demo.local_cluster import ClusterError, LocalCluster
from tests.system.hostile import FakeNode
from tests.system.own_data_folders import (
    DIGIT_NAMES,
    NodeFolder,
    mnist_digits,
    skewed_parts,
    write_node_folders,
    write_odd_folder,
)

pytestmark = pytest.mark.slow

NAME = "mnist-local"
ROUNDS = 3
TEST_SPLIT, SPLIT_SEED = 0.2, 0  # the node's defaults (node/cli.py)
# Every node uploads at once: a deadline firing would mean a bug, not a slow machine.
ENV = {"EPOCH_SYNC_TIMEOUT": "60"}

MakeCluster = Callable[..., LocalCluster]
T = TypeVar("T")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> list[NodeFolder]:
    """The four nodes' folders, written once for the module's clusters."""
    return write_node_folders(tmp_path_factory.mktemp("own-data"))


def start_data_node(cluster: LocalCluster, name: str, folder: Path, caches: Path) -> None:
    """A single-threaded node holding ``folder`` as ``mnist-local``; its cache (the decoded
    digits, its identity) outside the orchestrator's home, as on another machine."""
    cluster.start_node(
        name,
        "--capacity",
        "100",
        "--data",
        f"{NAME}={folder}",
        "--cache-dir",
        str(caches / name),
        threads=1,
    )


def wait_announced(cluster: LocalCluster, names: list[str], within: float = 120) -> dict[str, Any]:
    """Each named node's ``/nodes`` row once it is connected and has said what it holds."""
    deadline = time.monotonic() + within
    while True:
        rows = {n["node_id"]: n for n in cluster.request("GET", "/nodes")["nodes"]}
        if all(n in rows and rows[n]["connected"] and rows[n]["own_data"] for n in names):
            return {n: rows[n] for n in names}
        if time.monotonic() > deadline:
            raise ClusterError(f"not all of {names} announced their data: {rows}")
        time.sleep(0.2)


def metric_family(cluster: LocalCluster, name: str) -> dict[str, float]:
    """One counter family of ``/metrics``: its samples by label text (``kind="shard"``);
    fails when the family is not there at all, so a 0 read means counted and never hit."""
    with urllib.request.urlopen(cluster.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert f"# TYPE {name}_total counter" in text, f"/metrics has no {name}_total"
    pattern = re.compile("^" + re.escape(name) + r"_total(?:\{(.*)\})? (\S+)$", re.MULTILINE)
    return {m.group(1) or "": float(m.group(2)) for m in pattern.finditer(text)}


def events(cluster: LocalCluster, run_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    """The run's timeline events (oldest first), of ``kind`` if given."""
    rows = cluster.request("GET", "/monitor/timeline?limit=1000")["events"]
    found = [e for e in reversed(rows) if e["run_id"] == run_id]
    return [e for e in found if kind is None or e["kind"] == kind]


def final_model(cluster: LocalCluster, run_id: str) -> tuple[str, bytes]:
    """The run's saved final model: its name and its bytes as ``GET /models/{name}`` serves them."""
    [entry] = [
        m
        for m in cluster.request("GET", "/models")["models"]
        if m["kind"] == "final" and m["metadata"].get("run_id") == run_id
    ]
    with urllib.request.urlopen(cluster.url + entry["url"], timeout=30) as resp:
        data = resp.read()
    assert sha256_hex(data) == entry["sha256"]
    return entry["name"], data


def test_the_folders_are_label_skewed_real_digits(folders: list[NodeFolder]) -> None:
    assert sum(f.samples for f in folders) == 1_200
    assert all(f.samples >= 10 for f in folders)
    for f in folders:  # Dirichlet(0.5) over 4 nodes: each node lacks or nearly lacks some digits
        assert min(f.label_counts) <= 0.02 * f.samples < 0.2 * f.samples <= max(f.label_counts)
    by_digit = [sum(f.label_counts[d] for f in folders) for d in range(len(DIGIT_NAMES))]
    assert by_digit == [120] * 10
    assert len({f.label_counts for f in folders}) == 4


# -- four nodes, a fifth left out, then an evaluation-only job ---------------------------------


def test_four_nodes_train_and_evaluate_on_data_the_orchestrator_never_holds(
    make_cluster: MakeCluster, folders: list[NodeFolder], tmp_path: Path
) -> None:
    cluster = make_cluster(**ENV)
    caches = tmp_path / "node-caches"
    for f in folders:
        start_data_node(cluster, f.name, f.path, caches)
    start_data_node(cluster, "node-5", write_odd_folder(tmp_path / "odd"), caches)
    rows = wait_announced(cluster, [f.name for f in folders] + ["node-5"])
    test_samples = {n: r["own_data"][0]["test_samples"] for n, r in rows.items() if n != "node-5"}

    job = cluster.request("POST", f"/train/{NAME}?epochs={ROUNDS}")
    status = cluster.wait_job(timeout=240)
    assert status["state"] == "completed", status
    assert status["run_id"] == job["job_id"] and status["data_mode"] == "local"
    assert [h["round"] for h in status["history"]] == list(range(1, ROUNDS + 1))
    assert all(sorted(h["contributors"]) == sorted(test_samples) for h in status["history"])

    check_the_odd_node_was_left_out(cluster, job)
    check_federated_evaluation(cluster, job["job_id"], test_samples)
    name, model = final_model(cluster, job["job_id"])
    _, meta = decode_weights(model)  # a whole model, valid against the spec it carries
    final = cluster.request("GET", "/sync/status")["history"][-1]["federated"]
    assert (meta.extra["federated_nodes"], meta.extra["federated_samples"]) == (
        "4",
        str(sum(test_samples.values())),
    )
    assert meta.extra["federated_accuracy"] == f"{final['accuracy']:.6f}"
    check_evaluation_only_job(cluster, name, model, folders, tmp_path / "eval-cache")
    check_no_sample_reached_the_orchestrator(cluster)


def check_the_odd_node_was_left_out(cluster: LocalCluster, job: dict[str, Any]) -> None:
    """node-5's 14x14 digits disagree with the majority's 1x28x28: it is left out with the
    reason, naming the field, in the timeline, and asked for nothing."""
    timeline = cluster.request("GET", "/monitor/timeline?limit=1000")["events"]
    [left_out] = [e for e in timeline if e["kind"] == "node_left_out"]
    assert left_out["node_id"] == "node-5" and left_out["data"]["dataset"] == NAME, left_out
    assert left_out["run_id"] == job["job_id"]  # among the job's own events
    assert "input_shape [1, 14, 14]" in left_out["data"]["why"], left_out
    assert job["nodes"] == 4
    nodes = {n["node_id"]: n for n in cluster.request("GET", "/monitor/nodes")["nodes"]}
    assert nodes["node-5"]["evaluation"] is None and nodes["node-5"]["evaluations"] == []


def check_federated_evaluation(
    cluster: LocalCluster, run_id: str, test_samples: dict[str, int]
) -> None:
    """Every node reported every model (0: the initial one, ROUNDS: the final one) on its
    whole test split; each history entry's ``federated`` is the weighted mean of its round's."""
    reports = wait_for_reports(cluster, run_id, len(test_samples) * (ROUNDS + 1))
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for e in reports:
        assert e["node_id"] not in by_round.setdefault(e["data"]["round"], {}), e  # once each
        by_round[e["data"]["round"]][e["node_id"]] = e["data"]
    assert sorted(by_round) == list(range(ROUNDS + 1))
    for round_, readings in by_round.items():
        assert {n: r["samples"] for n, r in readings.items()} == test_samples, round_
        assert all(r["accuracy"] == r["correct"] / r["samples"] for r in readings.values())
    history = wait_for_history(cluster, len(test_samples))
    for entry in history:
        readings = by_round[entry["round"]]
        federated = entry["federated"]
        assert federated["samples"] == sum(test_samples.values())
        correct = sum(r["correct"] for r in readings.values())
        assert federated["accuracy"] == pytest.approx(correct / federated["samples"], abs=1e-12)
        assert entry["test_accuracy"] is None  # the orchestrator has no test set of its own
    initial = sum(r["correct"] for r in by_round[0].values()) / sum(test_samples.values())
    assert history[-1]["federated"]["accuracy"] > initial  # the readings are of a model that learnt
    nodes = {n["node_id"]: n for n in cluster.request("GET", "/monitor/nodes")["nodes"]}
    for node_id, samples in test_samples.items():  # each node's row: its readings by round
        rows = nodes[node_id]["evaluations"]
        assert [(e["round"], e["samples"]) for e in rows] == [
            (r, samples) for r in sorted(by_round)
        ]
        assert [e["accuracy"] for e in rows] == [
            by_round[r][node_id]["accuracy"] for r in sorted(by_round)
        ]
        assert nodes[node_id]["evaluation"] == rows[-1]


def wait_for_reports(
    cluster: LocalCluster, run_id: str, count: int, within: float = 60
) -> list[dict[str, Any]]:
    """The run's ``node_evaluated`` events once there are ``count`` (the final model's
    readings may come in after the job's state says completed)."""
    deadline = time.monotonic() + within
    while len(found := events(cluster, run_id, "node_evaluated")) < count:
        assert time.monotonic() < deadline, f"{len(found)} of {count} evaluations: {found}"
        time.sleep(0.2)
    return found


def wait_for_history(cluster: LocalCluster, nodes: int, within: float = 60) -> list[dict[str, Any]]:
    """``/sync/status`` history once every round's ``federated`` counts all ``nodes``."""
    deadline = time.monotonic() + within
    while True:
        history: list[dict[str, Any]] = cluster.request("GET", "/sync/status")["history"]
        if all((h.get("federated") or {}).get("nodes") == nodes for h in history):
            return history
        assert time.monotonic() < deadline, history
        time.sleep(0.2)


def single_threaded(work: Callable[..., T], *args: Any) -> T:
    """``work(*args)`` on one torch thread, as the nodes (``--threads 1``) compute it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return work(*args)
    finally:
        torch.set_num_threads(threads)


def check_evaluation_only_job(
    cluster: LocalCluster, name: str, model: bytes, folders: list[NodeFolder], cache: Path
) -> None:
    """The nodes evaluate the saved model on their test splits; rebuilt here from the same
    folders, the splits give the same counts, and the union's accuracy is the weighted mean
    (which is also the training job's own reading of its final model)."""
    state, meta = decode_weights(model)
    splits = {
        f.name: load_node_dataset(
            DataSpec(NAME, f.path), cache, test_split=TEST_SPLIT, seed=SPLIT_SEED
        )
        for f in folders
    }
    x = torch.cat([s.test_x for s in splits.values()])
    y = torch.cat([s.test_y for s in splits.values()])
    union_accuracy, _ = single_threaded(evaluate, state, meta.spec, x, y)

    answer = cluster.request("POST", f"/evaluate/{NAME}?model={name}", timeout=120)
    assert answer["evaluation_id"].startswith("eval-") and answer["missing"] == [], answer
    assert [n["node_id"] for n in answer["left_out"]] == ["node-5"], answer
    table = {row["node_id"]: row for row in answer["nodes"]}
    assert sorted(table) == sorted(splits)  # node-5 holds other data: not asked
    for node_id, data in splits.items():
        accuracy, _ = single_threaded(evaluate, state, meta.spec, data.test_x, data.test_y)
        assert table[node_id]["samples"] == len(data.test_y), node_id
        assert table[node_id]["correct"] == round(accuracy * len(data.test_y)), node_id
    mean = answer["weighted"]
    assert mean["samples"] == len(y) and mean["nodes"] == len(splits)
    assert abs(mean["accuracy"] - union_accuracy) <= 1e-6
    final = cluster.request("GET", "/sync/status")["history"][-1]["federated"]
    assert mean["accuracy"] == final["accuracy"]


def check_no_sample_reached_the_orchestrator(cluster: LocalCluster) -> None:
    """The shard route never called and no shard byte served, none written, and no file
    under the orchestrator's home that reads as labelled samples or holds the raw pixels of
    any of the first digits of each node's folder."""
    sent = metric_family(cluster, "fedavg_bytes_sent")
    assert sent.get('kind="shard"', 0.0) == 0.0, sent
    assert sent.get('kind="weights"', 0.0) > 0, sent  # the counter does count what is served
    hits = metric_family(cluster, "fedavg_file_requests")
    assert hits['kind="shard"'] == 0.0 and hits['kind="weights"'] > 0, hits
    shards = cluster.home / "shards"
    assert not shards.exists() or not [p for p in shards.rglob("*") if p.is_file()]
    datasets = cluster.home / "datasets"
    assert not datasets.exists() or not list(datasets.iterdir())
    x, y = mnist_digits()
    digits = [x[int(i)].numpy().tobytes() for part in skewed_parts(y, 4) for i in part[:10]]
    for path in cluster.home.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert not any(digit in content for digit in digits), path
            with pytest.raises(ShardError):
                decode_xy(content)


# -- the orchestrator killed mid-job --------------------------------------------------------------


async def kill_once_round_2_is_evaluated(
    cluster: LocalCluster, ws: aiohttp.ClientWebSocketResponse, nodes: int
) -> None:
    """SIGKILL the orchestrator mid-job, once round 2 has closed and every node's reading
    of its model is in: a reading the dead server never recorded would be lost for good,
    since a node evaluates each model once."""
    closed, readings = False, 0
    async for msg in ws:
        event = json.loads(msg.data)
        closed |= event["kind"] == "round_closed" and event["data"]["round"] == 2
        readings += event["kind"] == "node_evaluated" and event["data"]["round"] == 2
        if closed and readings == nodes:
            cluster.kill("server", signal.SIGKILL)
            return
    raise AssertionError("the dashboard socket closed before round 2 was evaluated")


async def test_a_killed_orchestrator_resumes_the_job_over_the_nodes_own_data(
    make_cluster: MakeCluster, folders: list[NodeFolder], tmp_path: Path
) -> None:
    rounds = 4
    cluster = make_cluster(**ENV)
    two = folders[:2]
    for f in two:
        start_data_node(cluster, f.name, f.path, tmp_path / "node-caches")
    before = await asyncio.to_thread(wait_announced, cluster, [f.name for f in two])
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(cluster.url + "/ws/dashboard") as ws,
    ):
        await ws.receive()  # the snapshot
        job = await asyncio.to_thread(cluster.request, "POST", f"/train/{NAME}?epochs={rounds}")
        await kill_once_round_2_is_evaluated(cluster, ws, len(two))
    cluster.start_server()
    cluster.wait_healthy()
    status = await asyncio.to_thread(cluster.wait_job, 240)

    assert (status["run_id"], status["state"]) == (job["job_id"], "completed"), status
    assert status["data_mode"] == "local"
    assert [h["round"] for h in status["history"]] == list(range(1, rounds + 1))
    assert all(sorted(h["contributors"]) == ["node-1", "node-2"] for h in status["history"])
    kinds = [e["kind"] for e in events(cluster, job["job_id"])]
    assert "job_resumed" in kinds
    # The nodes came back with the data they had, and kept evaluating where it lies.
    after = await asyncio.to_thread(wait_announced, cluster, [f.name for f in two])
    assert {n: r["own_data"] for n, r in after.items()} == {
        n: r["own_data"] for n, r in before.items()
    }
    history = await asyncio.to_thread(wait_for_history, cluster, len(two))
    assert [h["federated"]["round"] for h in history] == list(range(1, rounds + 1))
    _, model = final_model(cluster, job["job_id"])
    _, meta = decode_weights(model)
    assert meta.extra["rounds"] == str(rounds)
    check_no_sample_reached_the_orchestrator(cluster)


async def test_nodes_restarted_with_their_id_and_data_rejoin_the_running_job(
    make_cluster: MakeCluster, folders: list[NodeFolder], tmp_path: Path
) -> None:
    """Both nodes SIGKILLed once round 1 has closed: the open round waits (its deadline
    extends while nobody uploads), and the nodes, restarted with the same cache (so the
    same id and secret) and data, get its train frame again and finish the job."""
    rounds = 6
    cluster = make_cluster(**ENV)
    two, caches = folders[:2], tmp_path / "node-caches"
    for f in two:
        start_data_node(cluster, f.name, f.path, caches)
    await asyncio.to_thread(wait_announced, cluster, [f.name for f in two])
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(cluster.url + "/ws/dashboard") as ws,
    ):
        await ws.receive()  # the snapshot
        job = await asyncio.to_thread(cluster.request, "POST", f"/train/{NAME}?epochs={rounds}")
        async for msg in ws:
            event = json.loads(msg.data)
            if event["kind"] == "round_closed" and event["data"]["round"] == 1:
                break
        for f in two:
            cluster.kill(f.name, signal.SIGKILL)
        killed_at = time.time()
    status = cluster.request("GET", "/sync/status")
    assert status["state"] == "running", status  # killed mid-job, not after it
    for f in two:
        start_data_node(cluster, f.name, f.path, caches)
    status = await asyncio.to_thread(cluster.wait_job, 240)
    assert (status["run_id"], status["state"]) == (job["job_id"], "completed"), status
    assert sorted(status["history"][-1]["contributors"]) == ["node-1", "node-2"]
    rows = await asyncio.to_thread(wait_announced, cluster, [f.name for f in two])
    assert all(r["connected_at"] > killed_at for r in rows.values())  # new sessions, same ids
    assert status["history"][-1]["federated"]["nodes"] == 2


# -- a node that claims more than it holds -------------------------------------------------------

CLAIMS = {"honest-a": (120, 30), "honest-b": (80, 20), "liar": (50, 10)}  # (train, test) counts


def announcement(train: int, test: int) -> OwnData:
    return OwnData(
        (
            OwnDataset(
                name=NAME,
                input_shape=(1, 28, 28),
                class_names=DIGIT_NAMES,
                train_samples=train,
                test_samples=test,
                fingerprint=secrets.token_hex(32),
            ),
        )
    )


def nudged(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The global weights plus small seeded noise: an honest-looking update."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in state.items()}


async def honest_round(node: FakeNode, train: Train, seed: int) -> dict[str, torch.Tensor]:
    """Upload nudged global weights with the announced count and, while the upload is
    answered, read the socket: the final model's ``evaluate`` gets counts (half of the test
    split right) until ``done``. Returns what it uploaded."""
    status, body = await node.get(train.weights_url)
    assert status == 200 and sha256_hex(body) == train.weights_sha256
    state, meta = decode_weights(body)
    update = nudged(state, seed)
    data = bytes(encode_weights(update, WeightsMeta(meta.spec, train.round, train.job_id)))
    train_count, test_count = CLAIMS[node.node_id]
    upload = asyncio.create_task(node.upload(train.job_id, train.round, train_count, data))
    try:
        while not isinstance(frame := await node.wait_for(Evaluate | Done, 120), Done):  # type: ignore[arg-type]
            reading = Evaluation(frame.job_id, frame.round, test_count, test_count // 2, 1.0)
            await node.send_text(encode(reading))
        code, answer = await upload
    finally:
        upload.cancel()
    assert code == 200, answer
    return update


def weighted_mean(
    updates: list[dict[str, torch.Tensor]], counts: list[int]
) -> dict[str, torch.Tensor]:
    """``sum(n_i * w_i) / sum(n_i)`` as FedAvg folds it: in float64, then rounded to float32.
    Each ``n_i * w_i`` is exact in float64 and two terms add alike in either order, so the
    order the uploads arrived in cannot change a bit."""
    mean = {}
    for key, first in updates[0].items():
        acc = torch.zeros(first.shape, dtype=torch.float64)
        for n, update in zip(counts, updates, strict=True):
            acc.add_(update[key].double(), alpha=n)
        mean[key] = (acc / sum(counts)).float()
    return mean


async def test_a_node_claiming_more_samples_than_it_announced_is_refused(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(**ENV)
    nodes = {name: FakeNode(cluster.url, name) for name in CLAIMS}
    everyone = list(nodes.values())
    try:
        for name, node in nodes.items():
            await node.join()
            await node.send_text(encode(announcement(*CLAIMS[name])))
        await asyncio.to_thread(wait_announced, cluster, list(CLAIMS))
        job = await asyncio.to_thread(cluster.request, "POST", f"/train/{NAME}?epochs=1")
        trains = {name: await node.wait_for(Train) for name, node in nodes.items()}
        assert all(t.data_mode == "local" and t.shard_url == "" for t in trains.values())

        liar = nodes.pop("liar")
        code, body = await liar.get(trains["liar"].weights_url)
        assert code == 200
        state, meta = decode_weights(body)
        inflated = bytes(
            encode_weights(nudged(state, 99), WeightsMeta(meta.spec, 1, job["job_id"]))
        )
        code, answer = await liar.upload(job["job_id"], 1, CLAIMS["liar"][0] + 1, inflated)
        assert 400 <= code < 500 and "samples" in json.dumps(answer), (code, answer)
        await liar.send_text(encode(Left(reason="caught")))
        await liar.close()  # gone: the round closes on the honest uploads

        uploads = await asyncio.gather(
            *(
                honest_round(node, trains[name], seed)
                for seed, (name, node) in enumerate(nodes.items())
            )
        )
        status = await asyncio.to_thread(cluster.wait_job, 120)
    finally:
        for node in everyone:
            await node.close()
    assert status["state"] == "completed", status
    assert status["history"][0]["contributors"] == ["honest-a", "honest-b"]
    expected = weighted_mean(uploads, [CLAIMS[name][0] for name in nodes])
    _, model = final_model(cluster, job["job_id"])
    average, _ = decode_weights(model)
    assert all(torch.equal(average[k], expected[k]) for k in expected)  # bit for bit
    federated = (await asyncio.to_thread(wait_for_history, cluster, 2))[0]["federated"]
    assert federated["samples"] == 30 + 20 and federated["accuracy"] == (15 + 10) / 50
