"""Duration parsing: numbers are seconds, strings are <number><unit> parts."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rrq_flow.config import parse_duration
from rrq_flow.config.durations import PATTERN
from rrq_flow.config.schema import load_schema


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (30, 30.0),
        (1.5, 1.5),
        ("30", 30.0),
        ("0.25", 0.25),
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("1m1ms", 60.001),
        (" 10s ", 10.0),
    ],
)
def test_valid_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        "5 minutes",
        "-5s",
        "1m30",
        "",
        "s",
        "1.s",
        "1w",
        "5S",
        True,
        None,
        -1,
        math.inf,
        math.nan,
        [1],
    ],
)
def test_invalid_durations_name_the_value_and_the_form(value: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert str(info.value) == (
        f"invalid duration {value!r}: expected a number of seconds, or <number><unit> parts with "
        "units ms, s, m, h, d (e.g. 250ms, 30s, 1h30m, 1.5s)"
    )


def test_schema_uses_the_parser_grammar() -> None:
    string_branch = load_schema()["$defs"]["duration"]["anyOf"][1]
    assert string_branch == {"type": "string", "pattern": PATTERN}


@given(st.from_regex(PATTERN, fullmatch=True))
def test_every_string_the_schema_accepts_parses(text: str) -> None:
    assert re.search(PATTERN, text)
    assert parse_duration(text) >= 0


@given(
    st.lists(
        st.tuples(st.integers(0, 10_000), st.sampled_from(["ms", "s", "m", "h", "d"])),
        min_size=1,
        max_size=5,
    )
)
def test_parts_add_up(parts: list[tuple[int, str]]) -> None:
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    text = "".join(f"{n}{unit}" for n, unit in parts)
    assert parse_duration(text) == pytest.approx(sum(n * scale[u] for n, u in parts))
