"""The limits on free-form JSON (``bulletin.jsonvalue``) and the text every request body refuses."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bulletin import jsonvalue
from bulletin.jsonvalue import JsonLimitError
from bulletin.recipients.schemas import Recipient, RecipientPut
from bulletin.schemas import RequestBody


def nested(levels: int, inner: object = None, *, key: str | None = None) -> object:
    """``inner`` inside ``levels`` arrays (or objects with ``key``), built without recursion."""
    value = inner
    for _ in range(levels):
        value = [value] if key is None else {key: value}
    return value


def refusal(value: object) -> JsonLimitError:
    with pytest.raises(JsonLimitError) as caught:
        jsonvalue.check(value, "attributes")
    return caught.value


def test_depth_is_counted_from_the_field_itself() -> None:
    jsonvalue.check(nested(32, 1), "attributes")
    jsonvalue.check(nested(31, key="a"), "attributes")  # 32 objects, the last one {"a": None}
    error = refusal(nested(33, 1))
    assert error.kind == "json_depth"
    assert str(error).startswith("attributes nested deeper than 32 levels (at attributes[0][0]")
    assert refusal({"a": nested(32)}).kind == "json_depth"


@pytest.mark.parametrize(
    ("within", "past", "kind"),
    [
        ({str(n): n for n in range(256)}, {str(n): n for n in range(257)}, "json_keys"),
        ({"a": list(range(1000))}, {"a": list(range(1001))}, "json_items"),
        ({"k" * 128: 1}, {"k" * 129: 1}, "json_key_length"),
        ({"a": "x" * 10_000}, {"a": "x" * 10_001}, "json_string_length"),
        ({"a": 2**53 - 1, "b": -(2**53) + 1}, {"a": 2**53}, "json_integer_range"),
        ({"a": -(2**53) + 1}, {"a": -(2**53)}, "json_integer_range"),
        ({"a": ["x" * 9_000] * 7}, {"a": ["x" * 9_000] * 8}, "json_size"),
        ({"a": "tab\there\r\nand a line"}, {"a": "bell\x07"}, "json_control_character"),
        ({"a": "é😀"}, {"a": "\ud83d"}, "json_surrogate"),
        ({"straße": 1}, {"new\nline": 1}, "json_control_character"),
        ({"a": 1.5}, {"a": float("nan")}, "json_not_finite"),
        ({"a": 1e308}, {"a": float("inf")}, "json_not_finite"),
        ({"a": -1e308}, {"a": float("-inf")}, "json_not_finite"),
        ({"a": [True, None, "", {}]}, {"a": {1, 2}}, "json_type"),
    ],
)
def test_each_limit_holds_at_its_edge(within: object, past: object, kind: str) -> None:
    jsonvalue.check(within, "attributes")
    error = refusal(past)
    assert error.kind == kind
    assert "attributes" in str(error)


def test_errors_say_where_the_limit_was_broken() -> None:
    error = refusal({"site": [{"ok": 1}, {"note": "x" * 10_001}]})
    assert error.path == "attributes.site[1].note"
    assert str(error) == (
        "attributes.site[1].note: a string in attributes is longer than 10000 characters"
    )
    odd_key = refusal({"two words": {"x": float("nan")}})
    assert odd_key.path == 'attributes["two words"].x'


def test_a_huge_or_deep_value_is_refused_without_recursion() -> None:
    values = (
        nested(100_000),
        nested(100_000, key="a"),
        {"a": [["x" * 100] * 1000] * 1000},
        {str(n): "y" * 200 for n in range(100_000)},
    )
    # Far fewer frames than the values are deep: a recursive walk would raise RecursionError.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)
    try:
        refused = [refusal(value).kind for value in values]
    finally:
        sys.setrecursionlimit(limit)
    assert refused == ["json_depth", "json_depth", "json_size", "json_keys"]


def test_the_size_is_the_compact_utf8_json() -> None:
    # Four bytes per character in UTF-8: 16,384 of them fill 65,536 bytes by themselves.
    assert refusal({"a": "😀" * 9_000, "b": "😀" * 9_000}).kind == "json_size"
    parts = {f"k{n}": "x" * 9_990 for n in range(6)}
    used = len(jsonvalue.compact(parts).encode())
    fill = jsonvalue.MAX_FIELD_BYTES - used - len(',"z":""')
    jsonvalue.check({**parts, "z": "x" * fill}, "attributes")
    assert refusal({**parts, "z": "x" * (fill + 1)}).kind == "json_size"


@pytest.mark.parametrize(
    ("raw", "deep"),
    [
        (b"[" * 513 + b"]" * 513, True),
        (b"[" * 512 + b"]" * 512, False),
        (b'{"a":' * 513 + b"1" + b"}" * 513, True),
        (b"[" * 100_000, True),
        (b'["' + b"[" * 600 + b'"]', False),  # brackets inside a string are text
        (b'["\\"' + b"[" * 600 + b'"]', False),  # an escaped quote does not end the string
        (b'["\\\\"' + b"[" * 600 + b"]", True),  # an escaped backslash does
        (b'"' + b'\\"' * 100_000, False),  # a string never closed
        (b"", False),
        (b"not json at all {{{", False),
    ],
)
def test_the_nesting_of_a_body_is_measured_on_its_bytes(raw: bytes, deep: bool) -> None:
    assert jsonvalue.too_deep(raw) is deep


def test_measuring_a_body_answers_for_any_bytes_of_the_largest_size() -> None:
    # How long it takes is the benchmarks' business; here: no recursion, an answer for each.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)
    try:
        answers = [
            jsonvalue.too_deep(raw)
            for raw in (
                b"[" * 4_000_000,
                b'"' + b'\\"' * 2_000_000,
                b'"\\' * 2_000_000,
                b"[]" * 200_000,
            )
        ]
    finally:
        sys.setrecursionlimit(limit)
    assert answers == [True, False, False, False]


def test_what_postgresql_gives_back_is_read_as_what_was_accepted() -> None:
    # JSONB prints numbers without exponents: 1e308 comes back as a 309-digit integer.
    stored = json.loads(json.dumps({"a": 10**308, "b": [-(10**20), 3], "c": True, "d": 1.5}))
    assert jsonvalue.as_read(stored) == {"a": 1e308, "b": [-1e20, 3], "c": True, "d": 1.5}
    assert isinstance(jsonvalue.as_read(stored)["a"], float)
    unchanged = {"a": [1, 2**53 - 1], "b": "x"}
    assert jsonvalue.as_read(unchanged) is unchanged
    read = Recipient.model_validate(
        {
            "external_id": "p1",
            **dict.fromkeys(("name", "email", "phone", "whatsapp", "timezone", "locale")),
            "groups": [],
            "attributes": {"big": 10**300},
            "active": True,
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
        }
    )
    assert read.attributes == {"big": 1e300}


def test_recipient_attributes_are_checked_with_the_limit_named() -> None:
    with pytest.raises(ValidationError) as caught:
        RecipientPut.model_validate({"attributes": {"a": nested(40)}})
    (error,) = caught.value.errors()
    assert error["loc"] == ("attributes",)
    assert error["type"] == "json_depth"
    assert error["msg"].startswith("attributes nested deeper than 32 levels")


class _Anything(RequestBody):
    data: list[Any]


@pytest.mark.parametrize(("text", "kind"), [("a\x00b", "text_nul"), ("\udfff", "text_surrogate")])
@pytest.mark.parametrize("depth", [0, 63, 64, 65, 500])
def test_every_body_refuses_unstorable_text_at_any_depth(text: str, kind: str, depth: int) -> None:
    with pytest.raises(ValidationError) as caught:
        _Anything.model_validate({"data": [nested(depth, text)]})
    (error,) = caught.value.errors()
    assert error["type"] == kind
    assert "(at ['data'][0]" in error["msg"]
    with pytest.raises(ValidationError, match=rf"\[type={kind},"):
        _Anything.model_validate({"data": [nested(depth, {text: 1}, key="k")]})
    _Anything.model_validate({"data": [nested(depth, "fine\ttext 😀")]})


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(json_values)
def test_an_accepted_value_survives_the_trip_through_json_text(value: Any) -> None:
    try:
        jsonvalue.check({"v": value}, "attributes")
    except JsonLimitError:
        return
    text = jsonvalue.compact({"v": value})
    assert json.loads(text) == {"v": value}
    assert jsonvalue.as_read({"v": value}) == {"v": value}
