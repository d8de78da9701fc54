"""The log masker hides credentials by their shape, wherever they appear in a string."""

from __future__ import annotations

import base64
import secrets

from bulletin.logs import mask


def test_a_webhook_signing_secret_is_masked_in_any_text() -> None:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    masked = mask(f"params ('{secret}', 'https://hooks.example.com')")
    assert secret not in masked
    assert secret[6:22] not in masked
    assert "whsec_" in masked
    assert "https://hooks.example.com" in masked


def test_an_api_key_is_masked_in_any_text() -> None:
    key = "bk_" + secrets.token_urlsafe(32)
    assert key[3:] not in mask(f"Authorization was {key}.")
