"""A finished job's saved models: the final one and the best round's, as listed by
``GET /models`` and as their files say, over the real app with a hand-made node."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from node.shared.protocol import Done, Train, WeightsReady
from node.shared.shards import decode_xy
from node.shared.weights import WeightsMeta, decode_weights, encode_weights
from node.trainer import train_locally
from server.job.best import best_round
from tests.server.web.conftest import Client, FakeNode, MakeClient, connect, job_spec, prepare_mnist


async def _weights(client: Client, url: str) -> dict[str, torch.Tensor]:
    resp = await client.get(url)
    assert resp.status == 200, await resp.text()
    state, _ = decode_weights(await resp.read())
    return state


async def _upload(
    client: Client, node: FakeNode, train: Train, round_: int, state: Any, samples: int
) -> None:
    body = encode_weights(
        state, WeightsMeta(spec=train.model_spec, round=round_, job_id=train.job_id)
    )
    params = {"job": train.job_id, "round": str(round_), "samples": str(samples)}
    resp = await client.post("/sync/weights", params=params, data=body, headers=node.auth)
    assert resp.status == 200, await resp.text()


Change = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


async def _three_rounds(
    client: Client, second: Change, third: Change
) -> tuple[Train, list[dict[str, Any]]]:
    """One node runs a 3-round job: round 1 uploads the start, rounds 2 and 3 ``second`` and
    ``third`` of really trained weights; the job and its history."""
    node = await connect(client, "a")
    await prepare_mnist(client)
    assert (await client.post("/train/mnist?epochs=3")).status == 202
    train = await node.expect(Train)
    assert train.model_spec == await job_spec(client)
    x, y = decode_xy(await (await client.get(train.shard_url, headers=node.auth)).read())
    start = await _weights(client, train.weights_url)
    await _upload(client, node, train, 1, start, len(y))
    ready = await node.expect(WeightsReady)
    round1 = await _weights(client, ready.url)
    trained = train_locally(
        train.model_spec, round1, x, y, train.config, device=torch.device("cpu"), seed=1
    )
    await _upload(client, node, train, 2, second(trained.state), len(y))
    await node.expect(WeightsReady)
    await _upload(client, node, train, 3, third(trained.state), len(y))
    assert (await node.expect(Done)).status == "completed"
    history = (await (await client.get("/sync/status")).json())["history"]
    return train, history


def _as_is(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return state


def _zeroed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.zeros_like(v) for k, v in state.items()}


def _softened(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same model with its logits divided by 5 (the last layer's weights and bias): the
    same predictions, so the same accuracy, but timid ones, so a higher loss."""
    last = list(state)[-2:]
    return {k: v / 5 if k in last else v.clone() for k, v in state.items()}


async def test_a_finished_job_lists_its_final_and_its_best_model(make_client: MakeClient) -> None:
    """Round 2 uploads really trained weights, round 3 a zeroed model (chance accuracy):
    the final model is round 3's, and the best is round 2's checkpoint, named as such."""
    client = await make_client()
    train, history = await _three_rounds(client, _as_is, _zeroed)
    best = best_round(history, "test_accuracy")
    assert best is not None and best["round"] == 2  # what the uploads made of the rounds
    models = (await (await client.get("/models")).json())["models"]
    final, best_model = models
    assert (final["kind"], best_model["kind"]) == ("final", "best")
    assert final["name"] == f"{train.job_id}.safetensors"
    assert best_model["name"] == f"{train.job_id}.best.safetensors"
    assert "best_round" not in final
    assert best_model["best_round"] == 2
    assert best_model["best_metric"] == "test_accuracy"
    assert best_model["best_value"] == round(best["test_accuracy"], 6)
    assert best_model["metadata"]["kind"] == "best"
    assert best_model["metadata"]["best_round"] == "2"
    assert float(best_model["metadata"]["test_accuracy"]) == round(best["test_accuracy"], 6)
    assert final["metadata"]["kind"] == "final"

    # The best model is round 2's checkpoint, tensor for tensor; the final one is round 3's.
    best_state = await _weights(client, best_model["url"])
    checkpoint = await _weights(client, f"/sync/weights?job={train.job_id}&round=2")
    assert best_state.keys() == checkpoint.keys()
    assert all(torch.equal(best_state[k], checkpoint[k]) for k in checkpoint)
    _, meta = decode_weights(await (await client.get(best_model["url"])).read())
    assert (meta.round, meta.job_id, meta.spec) == (2, train.job_id, train.model_spec)
    final_state = await _weights(client, final["url"])
    assert all(torch.count_nonzero(v) == 0 for v in final_state.values())


async def test_with_best_metric_test_loss_the_best_model_is_the_lowest_loss_round(
    make_client: MakeClient,
) -> None:
    """Round 2 is the trained model softened, round 3 the trained model: equal accuracy (so
    by accuracy the earlier, round 2, would win) but round 3 has the lower loss."""
    client = await make_client(best_metric="test_loss")
    train, history = await _three_rounds(client, _softened, _as_is)
    by_accuracy, by_loss = best_round(history, "test_accuracy"), best_round(history, "test_loss")
    assert by_accuracy is not None and by_accuracy["round"] == 2  # what the uploads made
    assert by_loss is not None and by_loss["round"] == 3
    assert history[1]["test_accuracy"] == history[2]["test_accuracy"]
    models = {m["kind"]: m for m in (await (await client.get("/models")).json())["models"]}
    best = models["best"]
    assert (best["best_round"], best["best_metric"]) == (3, "test_loss")
    assert best["best_value"] == round(by_loss["test_loss"], 6)
    _, meta = decode_weights(await (await client.get(best["url"])).read())
    assert (meta.round, meta.job_id) == (3, train.job_id)
