"""Webhook signatures, checked by the Standard Webhooks reference package as a receiver would."""

from __future__ import annotations

import base64
import time
import typing

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bulletin.subscriptions import kinds, schemas, signing

BODY = b'{"type":"delivery.sent","timestamp":"2026-12-03T20:00:00Z","data":{"state":"sent"}}'


def test_a_new_secret_is_whsec_and_32_random_bytes() -> None:
    one, two = signing.new_secret(), signing.new_secret()
    assert one.startswith("whsec_")
    assert one != two
    assert len(base64.b64decode(one.removeprefix("whsec_"))) == 32
    assert signing.secret_bytes(one) == base64.b64decode(one[6:])


def test_a_receiver_with_the_secret_verifies_and_reads_the_body() -> None:
    secret = signing.new_secret()
    now = int(time.time())
    sent = signing.headers([secret], "msg_42", now, BODY)
    assert sent["webhook-id"] == "msg_42"
    assert sent["webhook-timestamp"] == str(now)
    assert sent["content-type"] == "application/json"
    assert sent["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(BODY, sent)["type"] == "delivery.sent"


def test_the_signature_covers_id_timestamp_and_body() -> None:
    secret = signing.new_secret()
    now = int(time.time())
    sent = signing.headers([secret], "msg_1", now, BODY)
    receiver = Webhook(secret)
    with pytest.raises(WebhookVerificationError):
        receiver.verify(BODY + b" ", sent)
    with pytest.raises(WebhookVerificationError):
        receiver.verify(BODY, {**sent, "webhook-id": "msg_2"})
    with pytest.raises(WebhookVerificationError):
        receiver.verify(BODY, {**sent, "webhook-timestamp": str(now - 1)})
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(BODY, sent)


def test_during_a_rotation_both_secrets_sign_and_either_receiver_verifies() -> None:
    old, new = signing.new_secret(), signing.new_secret()
    now = int(time.time())
    sent = signing.headers([new, old], "msg_7", now, BODY)
    assert len(sent["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(BODY, sent)
    Webhook(new).verify(BODY, sent)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(BODY, sent)
    # After the grace period only the new one signs: a receiver still on the old one fails.
    after = signing.headers([new], "msg_7", now, BODY)
    Webhook(new).verify(BODY, after)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(BODY, after)


def test_bodies_are_signed_byte_for_byte() -> None:
    secret = signing.new_secret()
    body = '{"name":"Zoë ✓"}'.encode()
    now = int(time.time())
    Webhook(secret).verify(body, signing.headers([secret], "msg_9", now, body))


@pytest.mark.parametrize("bad", ["whsec_", "whsec_not*base64", "whsec_YWJj!"])
def test_a_malformed_secret_is_refused_without_showing_it(bad: str) -> None:
    with pytest.raises(ValueError, match="webhook secret") as caught:
        signing.secret_bytes(bad)
    assert bad not in str(caught.value)


def test_nothing_is_signed_without_a_secret() -> None:
    with pytest.raises(ValueError, match="at least one secret"):
        signing.signature([], "msg_1", 0, BODY)


def test_the_kinds_are_the_eight_public_ones() -> None:
    assert set(kinds.KINDS) == {
        "delivery.sent",
        "delivery.delivered",
        "delivery.read",
        "delivery.failed",
        "delivery.suppressed",
        "delivery.unknown",
        "message.completed",
        "message.cancelled",
    }
    assert kinds.TEST not in kinds.KINDS
    assert set(typing.get_args(schemas.Kind)) == set(kinds.KINDS)
    assert all(kinds.DELIVERY_KINDS[s] == f"delivery.{s}" for s in kinds.DELIVERY_KINDS)
