"""Twilio's webhooks without a network: the request signature, and what a status callback
or an inbound SMS tells Bulletin.

The adapter against the local Twilio server is tested in ``integration/test_channel_twilio.py``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac

import pytest

from bulletin.channels.base import Inbound, ReportedState
from bulletin.channels.twilio import (
    inbound_reply,
    parse_inbound,
    parse_status,
    signature,
    verify_signature,
)

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "auth-token-0f1e2d3c4b5a"
SENDER = "+14155552671"
RECIPIENT = "+27821234567"
CALLBACK = "https://bulletin.example.org/v1/webhooks/twilio/default"
SID_IN = "SM" + "9" * 32
MESSAGE_SID = "SM" + "5" * 32


# --- signatures ----------------------------------------------------------------------------


def test_the_signature_matches_twilios_documented_example() -> None:
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+12349013030",
        "Digits": "1234",
        "From": "+12349013030",
        "To": "+18005551212",
    }

    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert signature("12345", url, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_the_signature_follows_the_documented_algorithm() -> None:
    url = "https://bulletin.example.org/v1/webhooks/twilio?delivery=5"
    params = {"To": RECIPIENT, "MessageStatus": "delivered", "AccountSid": SID}
    # URL, then each name and value with no separators, names sorted.
    data = f"{url}AccountSid{SID}MessageStatusdeliveredTo{RECIPIENT}"
    expected = base64.b64encode(hmac.new(TOKEN.encode(), data.encode(), hashlib.sha1).digest())

    assert signature(TOKEN, url, params) == expected.decode()


def test_repeated_parameters_are_signed_in_value_order() -> None:
    url = "https://example.org/hook"
    pairs = [("MediaUrl", "b"), ("Body", "x"), ("MediaUrl", "a")]
    data = f"{url}BodyxMediaUrlaMediaUrlb"
    expected = base64.b64encode(hmac.new(TOKEN.encode(), data.encode(), hashlib.sha1).digest())

    assert signature(TOKEN, url, pairs) == expected.decode()


def test_verify_signature_accepts_only_the_exact_post() -> None:
    url = f"{CALLBACK}?delivery=5"
    params = {"MessageSid": "SM" + "1" * 32, "MessageStatus": "delivered"}
    good = signature(TOKEN, url, params)

    assert verify_signature(TOKEN, url, params, good)
    assert not verify_signature(TOKEN, url, params, None)
    assert not verify_signature(TOKEN, url, params, "")
    assert not verify_signature(TOKEN, url, params, good[:-2] + "A=")
    assert not verify_signature("another-token", url, params, good)
    assert not verify_signature(TOKEN, url, params | {"MessageStatus": "failed"}, good)
    assert not verify_signature(TOKEN, url, params | {"ErrorCode": "30003"}, good)
    assert not verify_signature(TOKEN, f"{CALLBACK}?delivery=6", params, good)
    assert not verify_signature(TOKEN, url.replace("https", "http"), params, good)


# --- parsing webhooks ----------------------------------------------------------------------


def status_params(status: str, **extra: str) -> dict[str, str]:
    return {
        "AccountSid": SID,
        "MessageSid": MESSAGE_SID,
        "SmsSid": MESSAGE_SID,
        "MessageStatus": status,
        "SmsStatus": status,
        "To": RECIPIENT,
        "From": SENDER,
        "ApiVersion": "2010-04-01",
    } | extra


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("sent", ReportedState.SENT),
        ("delivered", ReportedState.DELIVERED),
        ("read", ReportedState.READ),
    ],
)
def test_parse_status_reads_progress(status: str, state: ReportedState) -> None:
    before = dt.datetime.now(dt.UTC)

    receipt = parse_status(status_params(status), 12)
    after = dt.datetime.now(dt.UTC)

    assert receipt is not None
    assert receipt.state is state
    assert receipt.provider_message_id == MESSAGE_SID
    assert receipt.delivery_id == 12
    assert receipt.detail is None
    assert receipt.suppress_address is False
    assert before <= receipt.at <= after


@pytest.mark.parametrize("status", ["failed", "undelivered"])
def test_parse_status_reads_failures_with_their_error_code(status: str) -> None:
    receipt = parse_status(status_params(status, ErrorCode="30003"), 12)

    assert receipt is not None
    assert receipt.state is ReportedState.FAILED
    assert receipt.detail is not None
    assert receipt.detail.startswith("30003: ")
    assert receipt.suppress_address is False


def test_parse_status_suppresses_a_recipient_who_replied_stop() -> None:
    receipt = parse_status(status_params("undelivered", ErrorCode="21610"), None)

    assert receipt is not None
    assert receipt.state is ReportedState.FAILED
    assert receipt.suppress_address is True
    assert receipt.detail is not None
    assert receipt.detail.startswith("21610: ")
    assert receipt.delivery_id is None


def test_parse_status_of_a_failure_without_a_code() -> None:
    receipt = parse_status(status_params("failed"), 3)

    assert receipt is not None
    assert receipt.state is ReportedState.FAILED
    assert receipt.detail == "message failed"


@pytest.mark.parametrize(
    "status",
    ["queued", "accepted", "sending", "scheduled", "receiving", "received", "canceled", "new"],
)
def test_parse_status_ignores_statuses_that_report_nothing(status: str) -> None:
    assert parse_status(status_params(status), 12) is None


def test_parse_status_falls_back_to_the_sms_names() -> None:
    params = {"SmsSid": MESSAGE_SID, "SmsStatus": "delivered", "AccountSid": SID}

    receipt = parse_status(params, None)

    assert receipt is not None
    assert receipt.state is ReportedState.DELIVERED
    assert receipt.provider_message_id == MESSAGE_SID


def test_parse_status_needs_some_id() -> None:
    assert parse_status({"MessageStatus": "delivered"}, None) is None
    receipt = parse_status({"MessageStatus": "delivered"}, 4)
    assert receipt is not None
    assert (receipt.delivery_id, receipt.provider_message_id) == (4, None)


def test_parse_inbound_reads_a_text() -> None:
    params = {
        "MessageSid": MESSAGE_SID,
        "AccountSid": SID,
        "From": RECIPIENT,
        "To": SENDER,
        "Body": "Thanks!",
        "NumMedia": "0",
        "SmsStatus": "received",
        "ApiVersion": "2010-04-01",
    }

    before = dt.datetime.now(dt.UTC)
    inbound = parse_inbound(params)
    after = dt.datetime.now(dt.UTC)

    assert isinstance(inbound, Inbound)
    assert (inbound.channel, inbound.address, inbound.text) == ("sms", RECIPIENT, "Thanks!")
    assert before <= inbound.at <= after  # Twilio sends no time: it is when it was heard


@pytest.mark.parametrize(
    "params",
    [
        status_params("delivered"),
        status_params("delivered", Body="hello"),
        {"From": RECIPIENT, "To": SENDER},
        {"From": f"whatsapp:{RECIPIENT}", "To": SENDER, "Body": "hi"},
        {"To": SENDER, "Body": "hi"},
    ],
)
def test_parse_inbound_ignores_what_is_not_an_inbound_sms(params: dict[str, str]) -> None:
    assert parse_inbound(params) is None


def test_an_empty_inbound_body_is_still_a_message() -> None:
    inbound = parse_inbound({"From": RECIPIENT, "To": SENDER, "Body": "", "MessageSid": SID_IN})

    assert inbound is not None
    assert inbound.text == ""
    assert inbound.provider_id == SID_IN


def test_an_inbound_without_a_message_sid_is_not_read() -> None:
    """Without its sid a replay could not be told from a new message."""
    assert parse_inbound({"From": RECIPIENT, "To": SENDER, "Body": "STOP"}) is None


def test_inbound_reply_is_empty_twiml_when_there_is_nothing_to_say() -> None:
    expected = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
    assert inbound_reply(None) == expected
    assert inbound_reply("") == expected
