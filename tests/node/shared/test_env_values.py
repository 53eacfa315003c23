"""The environment readers: each value read by name, each unreadable one named."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from node.shared import env_values
from node.shared.env_values import EnvValueError


def test_values_are_read_and_empty_or_missing_ones_are_the_default() -> None:
    env = {"A": "7", "B": " 2.5 ", "C": "off", "D": "json", "E": "~/x", "EMPTY": ""}
    assert env_values.whole(env, "A", 1) == 7
    assert env_values.number(env, "B", 1.0) == 2.5
    assert env_values.boolean(env, "C", True) is False
    assert env_values.choice(env, "D", "auto", ("auto", "json")) == "json"
    assert env_values.optional_path(env, "E") == Path("~/x").expanduser()
    assert env_values.text(env, "EMPTY", "dflt") == "dflt"
    for name in ("EMPTY", "MISSING"):
        assert env_values.whole(env, name, 3) == 3
        assert env_values.number(env, name, 0.5) == 0.5
        assert env_values.optional_whole(env, name) is None
        assert env_values.optional_number(env, name) is None
        assert env_values.boolean(env, name, True) is True
        assert env_values.optional_path(env, name) is None


@pytest.mark.parametrize(
    ("read", "value", "message"),
    [
        (lambda env: env_values.whole(env, "X", 1), "abc", "X='abc' is not a whole number"),
        (lambda env: env_values.whole(env, "X", 1), "1.5", "X='1.5' is not a whole number"),
        (lambda env: env_values.optional_whole(env, "X"), "x", "X='x' is not a whole number"),
        (lambda env: env_values.number(env, "X", 1.0), "abc", "X='abc' is not a number"),
        (lambda env: env_values.optional_number(env, "X"), "1,5", "X='1,5' is not a number"),
        (
            lambda env: env_values.boolean(env, "X", True),
            "maybe",
            "X='maybe' is not a boolean (true/false)",
        ),
        (
            lambda env: env_values.choice(env, "X", "a", ("a", "b")),
            "c",
            "X='c' must be one of a, b",
        ),
    ],
)
def test_an_unreadable_value_names_its_variable(
    read: Callable[[dict[str, str]], object], value: str, message: str
) -> None:
    with pytest.raises(EnvValueError) as info:
        read({"X": value})
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)  # callers catch ValueError as before


def test_a_long_bad_value_is_shown_cut_short() -> None:
    with pytest.raises(EnvValueError) as info:
        env_values.whole({"X": "9" * 50 + "x" * 500}, "X", 1)
    assert len(str(info.value)) < 120 and str(info.value).endswith("...' is not a whole number")
