"""UUIDv7 ids and opaque pagination cursors."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid

import pytest

from bulletin.errors import InvalidRequest
from bulletin.ids import decode_cursor, encode_cursor, uuid7


def test_uuid7_has_version_7_and_the_rfc_variant() -> None:
    for _ in range(200):
        value = uuid7()
        assert value.version == 7
        assert value.variant == uuid.RFC_4122


def test_uuid7_carries_the_current_unix_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert before <= value.int >> 80 <= after


def test_uuid7_is_unique() -> None:
    assert len({uuid7() for _ in range(5000)}) == 5000


def test_uuid7_made_apart_in_time_are_ordered() -> None:
    made = []
    for _ in range(5):
        made.append(uuid7())
        time.sleep(0.002)
    assert made == sorted(made)
    assert [str(v) for v in made] == sorted(str(v) for v in made)
    assert [v.hex for v in made] == sorted(v.hex for v in made)
    assert len(set(made)) == len(made)


@pytest.mark.parametrize(
    "position",
    ["0190f5a2-7c1e-7a3b-8c4d-1234567890ab", "p-42", "", "café/ü?&=", '{"after": 1}'],
)
def test_cursor_round_trips_a_string(position: str) -> None:
    assert decode_cursor(encode_cursor(position), str) == position


@pytest.mark.parametrize("position", [0, 1, 12345, 2**53 + 1, -5])
def test_cursor_round_trips_an_int(position: int) -> None:
    assert decode_cursor(encode_cursor(position), int) == position


@pytest.mark.parametrize("position", ["abc", 7, "€" * 50])
def test_cursor_is_url_safe_without_padding(position: str | int) -> None:
    assert re.fullmatch(r"[A-Za-z0-9_-]+", encode_cursor(position))


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


GARBAGE = [
    pytest.param("", int, id="empty"),
    pytest.param("not a cursor!!", int, id="not-base64"),
    pytest.param("%%%%", int, id="only-invalid-characters"),
    pytest.param("A", int, id="truncated-base64"),
    pytest.param(b64(b"hello world"), int, id="not-json"),
    pytest.param(b64(b"\xff\xfe\xfd"), int, id="not-utf8"),
    pytest.param(b64(b"[1, 2]"), int, id="json-list"),
    pytest.param(b64(b'"after"'), str, id="json-string"),
    pytest.param(b64(b"17"), int, id="json-number"),
    pytest.param(b64(b'{"before": 1}'), int, id="no-after"),
    pytest.param(b64(b'{"after": null}'), int, id="null"),
    pytest.param(b64(b'{"after": 1.5}'), int, id="float-for-int"),
    pytest.param(b64(b'{"after": true}'), int, id="bool-for-int"),
    pytest.param(b64(b'{"after": false}'), int, id="false-for-int"),
    pytest.param(b64(b'{"after": "12"}'), int, id="str-for-int"),
    pytest.param(b64(b'{"after": 12}'), str, id="int-for-str"),
    pytest.param(b64(b'{"after": ["x"]}'), str, id="list-for-str"),
    pytest.param(encode_cursor(5), str, id="real-cursor-wrong-kind"),
    # About 2 KB: short enough for a query string, deep enough to exhaust the JSON decoder.
    pytest.param(b64(b"[" * 1500), int, id="deeply-nested-json"),
]


@pytest.mark.parametrize(("cursor", "kind"), GARBAGE)
def test_garbage_cursor_is_an_invalid_request(cursor: str, kind: type[str] | type[int]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_cursor(cursor, kind)
    assert [error.loc for error in caught.value.errors] == [("query", "cursor")]


def test_cursor_payload_is_what_encode_wrote() -> None:
    # Cursors made by earlier releases stay readable: the payload is {"after": position}.
    cursor = b64(json.dumps({"after": 99}).encode())
    assert decode_cursor(cursor, int) == 99


def test_ids_made_within_one_millisecond_keep_creation_order() -> None:
    made = [uuid7() for _ in range(20_000)]  # many share a millisecond
    assert made == sorted(made)
    assert [u.hex for u in made] == sorted(u.hex for u in made)
    assert len(set(made)) == len(made)
