"""WhatsApp Cloud API webhooks without a network: the ``X-Hub-Signature-256`` check, and what
Bulletin reads from a webhook (receipts in the order they came, inbound messages, errors such
as the closed window's 131047), including the payloads it must refuse.

The adapter against the local Cloud API server is tested in
``integration/test_channel_whatsapp.py``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from bulletin.channels.base import Inbound, ReportedState
from bulletin.channels.whatsapp import parse_webhook, sign, verify_signature
from bulletin.devservers.whatsapp import inbound_payload, status_error, status_payload

PHONE_ID = "106540352242922"
APP_SECRET = "app-secret-for-tests"
TO = "+31612345678"


# --- webhook signatures ---------------------------------------------------------------------


BODY = b'{"object":"whatsapp_business_account","entry":[]}'


def test_a_correct_signature_verifies() -> None:
    header = sign(APP_SECRET, BODY)

    assert header.startswith("sha256=")
    assert verify_signature(APP_SECRET, BODY, header)
    assert verify_signature(APP_SECRET, BODY, header.upper().replace("SHA256=", "sha256="))


@pytest.mark.parametrize(
    ("secret", "body", "header"),
    [
        ("another-secret", BODY, sign(APP_SECRET, BODY)),
        (APP_SECRET, BODY + b" ", sign(APP_SECRET, BODY)),
        (APP_SECRET, BODY, None),
        (APP_SECRET, BODY, ""),
        (APP_SECRET, BODY, sign(APP_SECRET, BODY).removeprefix("sha256=")),
        (APP_SECRET, BODY, "sha1=" + sign(APP_SECRET, BODY).removeprefix("sha256=")),
        (APP_SECRET, BODY, "sha256=" + "zz" * 32),
        (APP_SECRET, BODY, sign(APP_SECRET, BODY)[:-2]),
        ("", BODY, sign("", BODY)),
    ],
    ids=[
        "wrong-secret",
        "tampered-body",
        "missing",
        "empty",
        "no-prefix",
        "sha1",
        "not-hex",
        "truncated",
        "no-secret",
    ],
)
def test_a_bad_signature_does_not_verify(secret: str, body: bytes, header: str | None) -> None:
    assert verify_signature(secret, body, header) is False


# --- webhook parsing ------------------------------------------------------------------------


def _merge(*payloads: dict[str, Any]) -> dict[str, Any]:
    """Several webhooks batched into one post, as Meta does under load."""
    return {
        "object": "whatsapp_business_account",
        "entry": [entry for payload in payloads for entry in payload["entry"]],
    }


def test_statuses_out_of_order_are_each_reported_as_they_came() -> None:
    wamid = "wamid.HBgLMzE2MTIzNDU2NzgVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"
    payload = _merge(
        status_payload(PHONE_ID, wamid, "read", TO, callback_data="7", timestamp=1_700_000_030),
        status_payload(PHONE_ID, wamid, "sent", TO, callback_data="7", timestamp=1_700_000_000),
        status_payload(
            PHONE_ID, wamid, "delivered", TO, callback_data="7", timestamp=1_700_000_010
        ),
    )

    webhook = parse_webhook(payload)

    assert webhook.phone_number_ids == {PHONE_ID}
    assert [(r.state, r.at.timestamp()) for r in webhook.receipts] == [
        (ReportedState.READ, 1_700_000_030),
        (ReportedState.SENT, 1_700_000_000),
        (ReportedState.DELIVERED, 1_700_000_010),
    ]
    assert {(r.provider_message_id, r.delivery_id) for r in webhook.receipts} == {(wamid, 7)}
    assert webhook.inbound == []


def test_a_failed_status_carries_its_error() -> None:
    payload = status_payload(
        PHONE_ID,
        "wamid.failed",
        "failed",
        TO,
        callback_data="12",
        errors=[status_error(131026, "Message undeliverable")],
        timestamp=1_700_000_000,
    )

    [receipt] = parse_webhook(payload).receipts

    assert receipt.state is ReportedState.FAILED
    assert receipt.delivery_id == 12
    assert receipt.detail == "131026: Message undeliverable"
    assert receipt.suppress_address is False


def test_a_failed_status_keeps_metas_details() -> None:
    errors = [status_error(131047, "Re-engagement message", "More than 24 hours have passed")]
    payload = status_payload(PHONE_ID, "wamid.x", "failed", TO, errors=errors)

    [receipt] = parse_webhook(payload).receipts

    assert receipt.detail == "131047: Re-engagement message (More than 24 hours have passed)"


@pytest.mark.parametrize("callback", ["not-a-number", "-5", "12abc", ""])
def test_callback_data_that_is_not_ours_is_ignored(callback: str) -> None:
    payload = status_payload(PHONE_ID, "wamid.x", "delivered", TO, callback_data=callback)

    [receipt] = parse_webhook(payload).receipts

    assert receipt.delivery_id is None
    assert receipt.provider_message_id == "wamid.x"


@pytest.mark.parametrize("status", ["deleted", "warning", "pending"])
def test_statuses_that_say_nothing_about_delivery_are_skipped(status: str) -> None:
    payload = status_payload(PHONE_ID, "wamid.x", status, TO, callback_data="1")

    assert parse_webhook(payload).receipts == []


@pytest.mark.parametrize(
    ("message_type", "text", "expected"),
    [
        ("text", "STOP", "STOP"),
        ("button", "Unsubscribe", "Unsubscribe"),
        ("interactive", "Yes, keep me posted", "Yes, keep me posted"),
        ("image", "a photo of the flood", ""),
    ],
)
def test_inbound_messages(message_type: Any, text: str, expected: str) -> None:
    payload = inbound_payload(
        PHONE_ID, "+447700900123", text, timestamp=1_700_000_000, message_type=message_type
    )

    webhook = parse_webhook(payload)

    wamid = payload["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    assert webhook.inbound == [
        Inbound(
            channel="whatsapp",
            address="+447700900123",
            text=expected,
            at=dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC),
            provider_id=wamid,
        )
    ]
    assert webhook.receipts == []
    assert webhook.phone_number_ids == {PHONE_ID}


def test_a_list_reply_is_read_as_its_title() -> None:
    payload = inbound_payload(PHONE_ID, TO, "x", message_type="interactive")
    message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    message["interactive"] = {
        "type": "list_reply",
        "list_reply": {"id": "opt-2", "title": "Weekly digest", "description": "Once a week"},
    }

    [inbound] = parse_webhook(payload).inbound

    assert inbound.text == "Weekly digest"


def test_other_fields_and_unknown_keys_are_tolerated() -> None:
    payload = _merge(
        status_payload("111", "wamid.a", "sent", TO),
        status_payload("222", "wamid.b", "sent", TO),
    )
    payload["entry"][0]["changes"].append(
        {"field": "message_template_status_update", "value": {"event": "APPROVED"}}
    )
    payload["entry"][0]["changes"][0]["value"]["something_new"] = {"x": 1}
    payload["entry"][0]["changes"][0]["value"]["statuses"][0]["brand_new_field"] = True

    webhook = parse_webhook(payload)

    assert webhook.phone_number_ids == {"111", "222"}
    assert [r.provider_message_id for r in webhook.receipts] == ["wamid.a", "wamid.b"]


def _with_status(**status: Any) -> dict[str, Any]:
    payload = status_payload(PHONE_ID, "wamid.x", "delivered", TO)
    entry = payload["entry"][0]["changes"][0]["value"]["statuses"][0]
    entry.update(status)
    return payload


def _without_status_field(name: str) -> dict[str, Any]:
    payload = status_payload(PHONE_ID, "wamid.x", "delivered", TO)
    del payload["entry"][0]["changes"][0]["value"]["statuses"][0][name]
    return payload


def _with_inbound(**message: Any) -> dict[str, Any]:
    payload = inbound_payload(PHONE_ID, TO, "hi")
    payload["entry"][0]["changes"][0]["value"]["messages"][0].update(message)
    return payload


@pytest.mark.parametrize(
    "payload",
    [
        None,
        "a string",
        [],
        {"object": "page", "entry": []},
        {"object": "whatsapp_business_account"},
        {"object": "whatsapp_business_account", "entry": {"id": "1"}},
        {"object": "whatsapp_business_account", "entry": ["not an object"]},
        {"object": "whatsapp_business_account", "entry": [{"id": "1"}]},
        {"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages"}]}]},
        _with_status(timestamp="yesterday"),
        _with_status(id=None),
        _without_status_field("status"),
        _with_inbound(**{"from": "+31612345678"}),
        _with_inbound(timestamp=None),
    ],
    ids=[
        "none",
        "string",
        "list",
        "other-object",
        "no-entry",
        "entry-not-list",
        "entry-item-not-object",
        "no-changes",
        "no-value",
        "bad-timestamp",
        "no-wamid",
        "no-status",
        "from-with-plus",
        "inbound-no-timestamp",
    ],
)
def test_malformed_payloads_raise_value_error(payload: object) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        parse_webhook(payload)


def test_statuses_must_be_a_list() -> None:
    payload = status_payload(PHONE_ID, "wamid.x", "delivered", TO)
    payload["entry"][0]["changes"][0]["value"]["statuses"] = {"id": "wamid.x"}

    with pytest.raises(ValueError, match="statuses"):
        parse_webhook(payload)


def test_a_failed_status_with_131047_is_marked_window_closed() -> None:
    def parsed(status: str, *codes: int) -> tuple[bool, str | None]:
        errors = [status_error(code) for code in codes] if codes else None
        payload = status_payload(PHONE_ID, "wamid.X", status, TO[1:], "7", errors)
        [receipt] = parse_webhook(payload, PHONE_ID).receipts
        return receipt.window_closed, receipt.detail

    closed, detail = parsed("failed", 131047)
    assert closed
    assert detail is not None
    assert detail.startswith("131047: Re-engagement message")
    assert parsed("failed", 131026, 131047)[0]  # any of its errors
    assert not parsed("failed", 131026)[0]
    assert not parsed("failed")[0]  # 131026 by default
    assert not parsed("delivered")[0]
