"""``Idempotency-Key`` pure parts: request fingerprints and key checks (guarantee G3)."""

from __future__ import annotations

import re

import pytest

from bulletin.errors import InvalidRequest
from bulletin.idempotency.service import check_key, fingerprint

PATH = "/v1/announcements"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(b'{"a":1,"b":[1,2]}', b'{ "b" : [1, 2],\n  "a": 1 }', id="order-whitespace"),
        pytest.param(b'{"x":{"b":1,"a":2}}', b'{"x": {"a": 2, "b": 1}}', id="nested-order"),
        pytest.param(b'{"t":"\\u00e9"}', '{"t":"é"}'.encode(), id="unicode-escape"),
        pytest.param(b"", b"null", id="empty-is-null"),
    ],
)
def test_same_json_gives_the_same_fingerprint(first: bytes, second: bytes) -> None:
    assert fingerprint("POST", PATH, first) == fingerprint("POST", PATH, second)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(b'{"a":1}', b'{"a":2}', id="value"),
        pytest.param(b'{"a":1}', b'{"b":1}', id="key"),
        pytest.param(b'{"a":[1,2]}', b'{"a":[2,1]}', id="list-order"),
        pytest.param(b'{"a":"1"}', b'{"a":1}', id="type"),
        pytest.param(b"{}", b"", id="empty-object-vs-no-body"),
        pytest.param(b"not json", b"not json!", id="non-json"),
    ],
)
def test_different_bodies_give_different_fingerprints(first: bytes, second: bytes) -> None:
    assert fingerprint("POST", PATH, first) != fingerprint("POST", PATH, second)


def test_path_and_method_are_part_of_the_fingerprint() -> None:
    body = b'{"title":"Hi"}'
    reference = fingerprint("POST", PATH, body)
    assert fingerprint("POST", "/v1/notifications", body) != reference
    assert fingerprint("PUT", PATH, body) != reference


def test_fingerprint_is_stable_hex_sha256() -> None:
    body = b'{"title":"Hi"}'
    value = fingerprint("POST", PATH, body)
    assert re.fullmatch(r"[0-9a-f]{64}", value)
    assert fingerprint("POST", PATH, body) == value


def test_non_json_body_is_fingerprinted_as_is() -> None:
    assert fingerprint("POST", PATH, b"\xff\xfe") == fingerprint("POST", PATH, b"\xff\xfe")
    assert fingerprint("POST", PATH, b"a=1&b=2") != fingerprint("POST", PATH, b"b=2&a=1")


@pytest.mark.parametrize(
    "key",
    ["k", "a" * 255, "0190f5a2-7c1e-7a3b-8c4d-1234567890ab", "order 42 / retry", "ключ"],
)
def test_good_keys_are_returned_unchanged(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("", id="empty"),
        pytest.param("a" * 256, id="256-characters"),
        pytest.param("a" * 1000, id="1000-characters"),
        pytest.param("a\nb", id="newline"),
        pytest.param("tab\there", id="tab"),
        pytest.param("nul\x00", id="nul"),
        pytest.param("del\x7f", id="del"),
        pytest.param("\u200b", id="zero-width-space"),
    ],
)
def test_bad_keys_are_rejected(key: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_key(key)
    assert [error.loc for error in caught.value.errors] == [("header", "Idempotency-Key")]
