"""Answers are JSON: NaN and Infinity, which ``json.dumps`` writes by default, become null."""

from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st

from server.jsonsafe import dumps, finite

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=20,
)


def _strict(text: str) -> object:
    def refuse(name: str) -> None:
        raise AssertionError(name)

    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_are_null_at_any_depth() -> None:
    data = {"loss": math.nan, "h": [{"acc": math.inf}, (-math.inf, 1.5)], "n": 3}
    assert _strict(dumps(data)) == {"loss": None, "h": [{"acc": None}, [None, 1.5]], "n": 3}


def test_finite_answers_are_written_as_json_dumps_writes_them() -> None:
    data = {"a": [1, 2.5, "x", None, True], "b": {"c": -0.0}}
    assert dumps(data, separators=(",", ":")) == json.dumps(data, separators=(",", ":"))


@given(JSON_VALUES)
def test_any_value_gives_strict_json(value: object) -> None:
    text = dumps(value)
    assert _strict(text) == json.loads(json.dumps(finite(value)))
