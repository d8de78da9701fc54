"""Provider secrets at rest, signed links, and provider settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bulletin.channels.configs import (
    SmtpConfig,
    TwilioConfig,
    WhatsAppCloudConfig,
    check_settings,
    from_settings,
)
from bulletin.config import Settings
from bulletin.crypto import SecretBox, SecretKeyError, generate_key, sign, unsign
from bulletin.messages.schemas import duration_seconds


def test_secrets_round_trip_and_are_not_readable_in_the_token() -> None:
    box = SecretBox(generate_key())
    token = box.seal({"access_token": "EAAG-very-secret"})
    assert "EAAG" not in token
    assert box.open(token) == {"access_token": "EAAG-very-secret"}


def test_keys_rotate_the_first_encrypts_any_decrypts() -> None:
    old, new = generate_key(), generate_key()
    sealed_with_old = SecretBox(old).seal({"password": "p"})
    rotated = SecretBox(f"{new},{old}")
    assert rotated.open(sealed_with_old) == {"password": "p"}
    with pytest.raises(SecretKeyError, match="cannot be decrypted"):
        SecretBox(new).open(sealed_with_old)
    assert SecretBox(new).open(rotated.seal({"a": "b"})) == {"a": "b"}


@pytest.mark.parametrize("key", ["", "not-a-key", " , "])
def test_a_malformed_key_is_refused_with_advice(key: str) -> None:
    with pytest.raises(SecretKeyError, match="BULLETIN_SECRET_KEY"):
        SecretBox(key)


def test_signed_links_verify_and_tampering_is_detected() -> None:
    key = b"k" * 32
    token = sign(key, "12345")
    assert unsign(key, token) == "12345"
    assert unsign(key, token.replace("12345", "12346")) is None
    assert unsign(b"x" * 32, token) is None
    assert unsign(key, "12345") is None
    assert unsign(key, "") is None


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400)]
)
def test_durations(text: str, seconds: int) -> None:
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "15", "m", "0m", "-5m", "1.5h", "15 m", "31d", "15m\n"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|30 days"):
        duration_seconds(text)


def test_provider_configs_validate_what_they_can() -> None:
    with pytest.raises(ValidationError, match="exactly one of from_number and messaging_service"):
        TwilioConfig(account_sid="AC" + "0" * 32, auth_token="t")
    with pytest.raises(ValidationError, match=r"(?m)^account_sid\n"):
        TwilioConfig(
            account_sid="nope",
            auth_token="t",
            from_number="+14155550100",
        )
    with pytest.raises(ValidationError, match=r"(?m)^from_address\n.*is not an email address"):
        SmtpConfig(host="h", from_address="not an address")
    with pytest.raises(ValidationError, match="a password needs a username"):
        SmtpConfig(host="h", from_address="a@example.org", password="p")
    with pytest.raises(ValidationError, match=r"(?m)^phone_number_id\n"):
        WhatsAppCloudConfig(phone_number_id="12ab")
    config = WhatsAppCloudConfig(phone_number_id="123", base_url="http://127.0.0.1:9/")
    assert config.base_url_str() == "http://127.0.0.1:9"
    assert config.rate_per_second == 80


def test_environment_providers_are_built_and_incomplete_ones_refused() -> None:
    settings = Settings(
        twilio_account_sid="AC" + "a" * 32,
        twilio_auth_token="tok",
        twilio_from="+14155550100",
        smtp_host="mail.example.org",
        smtp_from="news@example.org",
        whatsapp_phone_number_id="1234",
        whatsapp_access_token="EAAG",
        whatsapp_template="notice:en_GB",
    )
    configs = from_settings(settings)
    assert sorted(configs) == ["email", "sms", "whatsapp"]
    whatsapp = configs["whatsapp"]
    assert isinstance(whatsapp, WhatsAppCloudConfig)
    assert whatsapp.template is not None
    assert (whatsapp.template.name, whatsapp.template.language) == ("notice", "en_GB")
    with pytest.raises(ValueError, match="provider settings"):
        check_settings(Settings(smtp_host="mail.example.org"))
    with pytest.raises(ValueError, match="BULLETIN_TWILIO_AUTH_TOKEN"):
        check_settings(Settings(twilio_account_sid="AC" + "a" * 32, twilio_from="+14155550100"))
    with pytest.raises(ValueError, match="BULLETIN_WHATSAPP_ACCESS_TOKEN"):
        check_settings(Settings(whatsapp_phone_number_id="1234"))
