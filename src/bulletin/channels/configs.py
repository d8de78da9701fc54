"""How each real provider is configured: one model per provider, shared by the API and settings.

A configuration is what ``PUT /v1/channels/{name}`` accepts, what is stored (secrets encrypted)
and what an adapter is built from. Fields typed :class:`~pydantic.SecretStr` are secrets:
write-only through the API, never logged, stored encrypted.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AnyHttpUrl, Field, SecretStr, field_validator, model_validator

from bulletin.channels import egress
from bulletin.channels.addressing import normalize_email, normalize_phone
from bulletin.config import Settings
from bulletin.errors import FieldError, InvalidRequest
from bulletin.schemas import RequestBody

TemplateName = Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[a-z0-9_]+$")]
LanguageCode = Annotated[str, Field(min_length=2, max_length=15, pattern=r"^[A-Za-z_]+$")]


def _no_trailing_slash(value: AnyHttpUrl) -> str:
    return str(value).rstrip("/")


class WhatsAppTemplateRef(RequestBody):
    """An approved template, and the Jinja2 expressions that fill its body parameters."""

    name: TemplateName = Field(description="The template's name as approved by Meta.")
    language: LanguageCode = Field(default="en", description="Template language code.")
    parameters: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list,
        max_length=20,
        description="One Jinja2 expression per {{n}} body parameter, e.g. '{{ recipient.name }}'.",
    )


class _ProviderConfig(RequestBody):
    #: The fields holding secrets; kept when a later PUT leaves them out.
    secret_fields: ClassVar[tuple[str, ...]] = ()
    #: Channels this provider can serve.
    channels: ClassVar[tuple[str, ...]] = ()

    def base_url_str(self) -> str:
        return _no_trailing_slash(getattr(self, "base_url"))  # noqa: B009

    def address_problems(self, *, allow_private: bool) -> list[tuple[str, str]]:
        """``(field, why)`` for each provider address that on its face leads nowhere public.

        A fast first check when a configuration is saved; the one that counts is made on the
        resolved addresses at every connect (:mod:`bulletin.channels.egress`).
        """
        if allow_private:
            return []
        url: AnyHttpUrl = getattr(self, "base_url")  # noqa: B009
        problem = egress.url_problem(url.scheme, url.host)
        return [] if problem is None else [("base_url", problem)]

    def check_addresses(self, *, allow_private: bool) -> None:
        """Raise :class:`~bulletin.errors.InvalidRequest` naming each address not allowed."""
        problems = self.address_problems(allow_private=allow_private)
        if problems:
            raise InvalidRequest(
                "The provider's address is not allowed: providers must be public https "
                "services (or SMTP servers on a usual port).",
                [FieldError(("body", name), why, "value_error") for name, why in problems],
            )


class WhatsAppCloudConfig(_ProviderConfig):
    """Meta's WhatsApp Business Cloud API."""

    secret_fields: ClassVar[tuple[str, ...]] = ("access_token", "app_secret", "verify_token")
    channels: ClassVar[tuple[str, ...]] = ("whatsapp",)

    provider: Literal["whatsapp_cloud"] = "whatsapp_cloud"
    phone_number_id: str = Field(
        min_length=1, max_length=64, pattern=r"^[0-9]+$", description="The sending number's id."
    )
    access_token: SecretStr | None = Field(default=None, description="System user access token.")
    app_secret: SecretStr | None = Field(
        default=None, description="App secret; verifies X-Hub-Signature-256 on webhooks."
    )
    verify_token: SecretStr | None = Field(
        default=None, description="The token Meta echoes in the webhook verification handshake."
    )
    base_url: AnyHttpUrl = Field(default=AnyHttpUrl("https://graph.facebook.com"))
    api_version: str = Field(default="v21.0", pattern=r"^v[0-9]+\.[0-9]+$")
    rate_per_second: float = Field(default=80.0, gt=0, le=10_000)
    pair_interval_seconds: float = Field(
        default=6.0, ge=0, le=3600, description="Least time between two messages to one person."
    )
    template: WhatsAppTemplateRef | None = Field(
        default=None,
        description="Template used when the person's 24-hour window is closed and the message "
        "names none.",
    )


class SmtpConfig(_ProviderConfig):
    """An SMTP server (a relay, an email service's SMTP endpoint)."""

    secret_fields: ClassVar[tuple[str, ...]] = ("password",)
    channels: ClassVar[tuple[str, ...]] = ("email",)

    provider: Literal["smtp"] = "smtp"
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = Field(
        default="starttls", description="'tls' is implicit TLS (usually port 465)."
    )
    username: str | None = Field(default=None, max_length=255)
    password: SecretStr | None = None
    from_address: str = Field(min_length=3, max_length=320, description="The From address.")
    from_name: str | None = Field(default=None, max_length=255)
    rate_per_second: float | None = Field(default=None, gt=0, le=10_000)
    connections: int = Field(
        default=4, ge=1, le=64, description="SMTP connections kept open per worker process."
    )
    validate_certs: bool = True

    @field_validator("from_address")
    @classmethod
    def _address(cls, value: str) -> str:
        return normalize_email(value)

    def address_problems(self, *, allow_private: bool) -> list[tuple[str, str]]:
        if allow_private:
            return []
        problems: list[tuple[str, str]] = []
        if (host := egress.host_problem(self.host)) is not None:
            problems.append(("host", host))
        if (port := egress.smtp_port_problem(self.port)) is not None:
            problems.append(("port", port))
        return problems

    @model_validator(mode="after")
    def _login_pairs(self) -> SmtpConfig:
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username")
        return self


class TwilioConfig(_ProviderConfig):
    """Twilio's Programmable Messaging (SMS)."""

    secret_fields: ClassVar[tuple[str, ...]] = ("auth_token", "webhook_signing_key")
    channels: ClassVar[tuple[str, ...]] = ("sms",)

    provider: Literal["twilio"] = "twilio"
    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    auth_token: SecretStr | None = None
    webhook_signing_key: SecretStr | None = Field(
        default=None,
        min_length=1,
        description="The secret of the SharedKey a Twilio Webhook Setting signs this account's "
        "webhooks with (X-Twilio-Webhooks-Signature-Settings, HMAC-SHA256 or HMAC-SHA1); "
        "without it such webhooks are refused. Webhooks signed with the auth token need none.",
    )
    from_number: str | None = Field(
        default=None, description="Sender in E.164; or give messaging_service_sid."
    )
    messaging_service_sid: str | None = Field(default=None, pattern=r"^MG[0-9a-fA-F]{32}$")
    base_url: AnyHttpUrl = Field(default=AnyHttpUrl("https://api.twilio.com"))
    rate_per_second: float | None = Field(default=10.0, gt=0, le=10_000)

    @field_validator("from_number")
    @classmethod
    def _e164(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return normalize_phone(value, None)

    @model_validator(mode="after")
    def _one_sender(self) -> TwilioConfig:
        if (self.from_number is None) == (self.messaging_service_sid is None):
            raise ValueError("give exactly one of from_number and messaging_service_sid")
        return self


ProviderConfig = Annotated[
    WhatsAppCloudConfig | SmtpConfig | TwilioConfig, Field(discriminator="provider")
]
AnyProviderConfig = WhatsAppCloudConfig | SmtpConfig | TwilioConfig


def from_settings(settings: Settings) -> dict[str, AnyProviderConfig]:
    """Providers configured through settings (``BULLETIN_WHATSAPP_*``, ``BULLETIN_SMTP_*``,
    ``BULLETIN_TWILIO_*``), by channel, for every organization without its own.

    Raises :class:`ValueError` (a :class:`~pydantic.ValidationError` among them) when they are
    incomplete or invalid.
    """
    configs: dict[str, AnyProviderConfig] = {}
    for enabled, secret, names in (
        (
            settings.whatsapp_phone_number_id,
            settings.whatsapp_access_token,
            "WHATSAPP_ACCESS_TOKEN",
        ),
        (settings.twilio_account_sid, settings.twilio_auth_token, "TWILIO_AUTH_TOKEN"),
    ):
        if enabled and secret is None:
            raise ValueError(f"BULLETIN_{names} is needed to send with this provider")
    if settings.whatsapp_phone_number_id:
        template = None
        if settings.whatsapp_template:
            name, _, language = settings.whatsapp_template.partition(":")
            template = WhatsAppTemplateRef(
                name=name,
                language=language or "en",
                parameters=["{{ title }}", "{{ body }}"],
            )
        configs["whatsapp"] = WhatsAppCloudConfig.model_validate(
            {
                "phone_number_id": settings.whatsapp_phone_number_id,
                "access_token": settings.whatsapp_access_token,
                "app_secret": settings.whatsapp_app_secret,
                "verify_token": settings.whatsapp_verify_token,
                "base_url": settings.whatsapp_base_url,
                "api_version": settings.whatsapp_api_version,
                "rate_per_second": settings.whatsapp_rate_per_second,
                "template": template,
            }
        )
    if settings.smtp_host:
        configs["email"] = SmtpConfig.model_validate(
            {
                "host": settings.smtp_host,
                "port": settings.smtp_port,
                "security": settings.smtp_security,
                "username": settings.smtp_username,
                "password": settings.smtp_password,
                "from_address": settings.smtp_from,
                "from_name": settings.smtp_from_name,
                "rate_per_second": settings.smtp_rate_per_second,
            }
        )
    if settings.twilio_account_sid:
        configs["sms"] = TwilioConfig.model_validate(
            {
                "account_sid": settings.twilio_account_sid,
                "auth_token": settings.twilio_auth_token,
                "webhook_signing_key": settings.twilio_webhook_signing_key,
                "from_number": settings.twilio_from,
                "messaging_service_sid": settings.twilio_messaging_service_sid,
                "base_url": settings.twilio_base_url,
                "rate_per_second": settings.twilio_rate_per_second,
            }
        )
    return configs


def check_settings(settings: Settings) -> None:
    """Refuse provider settings that are incomplete or invalid, saying which and why.

    Run where settings are read (the CLI), so that a mistake stops Bulletin at start rather
    than at its first send.
    """
    try:
        from_settings(settings)
    except ValueError as exc:
        raise ValueError(f"provider settings are incomplete or invalid: {exc}") from exc
