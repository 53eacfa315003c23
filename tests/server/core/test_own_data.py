"""The nodes' own datasets by name: the majority schema, who agrees, and why others do not."""

from __future__ import annotations

import dataclasses
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from node.shared.protocol import OwnDataset
from server.core.own_data import Schema, by_name, named

PETS = OwnDataset(
    name="pets",
    input_shape=(3, 32, 32),
    class_names=("cat", "dog"),
    train_samples=80,
    test_samples=20,
    fingerprint="ab" * 32,
)


def like(base: OwnDataset = PETS, **changes: object) -> OwnDataset:
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_the_majority_schema_wins_and_the_others_are_left_out_naming_the_field() -> None:
    holders = {
        "a": PETS,
        "b": like(train_samples=40, test_samples=10),
        "c": like(input_shape=(1, 28, 28)),
        "d": like(class_names=("cat", "dog", "eel")),
        "e": like(class_names=("dog", "cat")),
    }
    data = named("pets", holders)
    assert data.schema == Schema.of(PETS) and list(data.agreeing) == ["a", "b"]
    assert data.left_out == {
        "c": "input_shape [1, 28, 28], not the majority's [3, 32, 32]",
        "d": "3 classes, not the majority's 2",
        "e": "class names differ from the majority's",
    }
    view = data.view()
    assert view["nodes"] == ["a", "b"]
    assert view["train_samples"] == 120 and view["test_samples"] == 30
    assert view["left_out"][0] == {"node_id": "c", "why": data.left_out["c"]}
    assert view["class_names"] == ["cat", "dog"] and view["num_classes"] == 2


def test_a_tie_goes_to_more_training_samples_then_to_the_smaller_schema() -> None:
    small = like(input_shape=(1, 28, 28), train_samples=10)
    assert named("pets", {"a": PETS, "b": small}).schema == Schema.of(PETS)  # 80 beats 10
    even = like(input_shape=(1, 28, 28))
    assert named("pets", {"a": PETS, "b": even}).schema == Schema.of(even)  # (1, ...) < (3, ...)


schemas = st.sampled_from([(3, 32, 32), (1, 28, 28), (3, 8, 8)])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(schemas, st.integers(1, 1000)), min_size=1, max_size=12), st.randoms())
def test_the_answer_does_not_depend_on_the_order_nodes_joined_in(
    nodes: list[tuple[tuple[int, int, int], int]], rng: random.Random
) -> None:
    holders = {
        f"n{i}": like(input_shape=shape, train_samples=count)
        for i, (shape, count) in enumerate(nodes)
    }
    order = list(holders.items())
    rng.shuffle(order)
    first, second = named("pets", holders), named("pets", dict(order))
    assert first == second
    assert set(first.agreeing) | set(first.left_out) == set(holders)
    votes = [Schema.of(d) for d in holders.values()]
    assert all(votes.count(first.schema) >= votes.count(s) for s in votes)


def test_names_are_grouped_across_nodes_and_sorted() -> None:
    digits = like(name="digits", input_shape=(1, 28, 28), class_names=tuple("0123456789"))
    groups = by_name({"a": [PETS, digits], "b": [PETS], "c": []})
    assert [g.name for g in groups] == ["digits", "pets"]
    assert list(groups[0].agreeing) == ["a"] and list(groups[1].agreeing) == ["a", "b"]
    assert by_name({}) == []
