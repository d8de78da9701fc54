"""Settings, read once from ``BULLETIN_*`` environment variables and a ``.env`` file.

Build a :class:`Settings` at the edge (the CLI, a test) and pass it down; nothing in the
package reads the environment on its own.

Over 400 lines, because every setting of every process is declared here, with the
description the README and ``--help`` show and the check that refuses a wrong value at
start-up: one place to read them all matters more than short modules.
"""

from __future__ import annotations

import ipaddress
import uuid
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./bulletin.db"


def listen_url(host: str, port: int) -> str:
    """The address a client on this machine writes for a server listening on ``host:port``.

    An unspecified address (``0.0.0.0``, ``::``: every interface) names no machine, so a link
    to it leads nowhere; the loopback address of its family is the one that surely answers. An
    IPv6 address is written in brackets, as URLs need.
    """
    name = host.strip("[]")
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return f"http://{name}:{port}"
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    if address.version == 6:
        return f"http://[{address}]:{port}"
    return f"http://{address}:{port}"


def is_local_host(host: str) -> bool:
    """Whether the address :func:`listen_url` writes for ``host`` (a name or an address)
    reaches only this machine: a loopback one, or one it puts for every interface."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def normalize_database_url(url: str) -> str:
    """Give a plain ``postgresql://`` or ``sqlite://`` URL the async driver Bulletin uses."""
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("postgresql+psycopg://", "postgresql+asyncpg://"),
        ("postgresql+psycopg2://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


_DELAY_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_delays(text: str) -> tuple[float, ...]:
    """Comma-separated durations (``"5s,5m,2h,1d"``) in seconds; at most 30, each at most
    7 days. Raises ``ValueError`` naming the first that is not one."""
    delays: list[float] = []
    for word in (w.strip() for w in text.split(",")):
        number, unit = word[:-1], word[-1:]
        if unit not in _DELAY_UNITS or not number.isdigit() or len(number) > 6:
            shown = word if len(word) <= 20 else word[:20] + "..."
            raise ValueError(f"{shown!r} is not a duration such as '30s', '5m', '2h' or '1d'")
        seconds = float(int(number) * _DELAY_UNITS[unit])
        if seconds > 7 * 86400:
            raise ValueError(f"{word!r} is longer than 7 days")
        delays.append(seconds)
    if len(delays) > 30:
        raise ValueError("at most 30 retries")
    return tuple(delays)


class Settings(BaseSettings):
    """Every setting Bulletin has. The README lists them with their meaning."""

    model_config = SettingsConfigDict(
        env_prefix="BULLETIN_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        # A refused value is named with the reason, never echoed: it may hold a password.
        hide_input_in_errors=True,
    )

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL. SQLite (default, ./bulletin.db) or PostgreSQL.",
    )
    host: str = Field(default="127.0.0.1", description="Address the API listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the API listens on.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_body_bytes: int = Field(
        # A batch of 10,000 recipients with a few attributes each is about 4 MB.
        default=10 * 1024 * 1024,
        ge=1024,
        description="Largest request body the API reads; a longer one is answered 413.",
    )
    log_format: Literal["json", "console"] = Field(
        default="console", description="'json' for one JSON object per line."
    )
    credentials_file: str | None = Field(
        default=None,
        description="Where `bulletin serve` writes the first start's admin key and portal "
        "password (mode 0600) when its output is not a terminal; by default "
        "bulletin-credentials.txt beside the SQLite database, or in the working directory.",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port on which a worker process serves its Prometheus metrics; "
        "none serves none (the API serves them at /metrics).",
    )

    api_processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Processes `bulletin serve` runs on its port; more than one needs PostgreSQL.",
    )
    api_key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long an API process trusts a key it has found valid before reading it "
        "again; a key revoked in the database may work for this long. 0 reads it every time.",
    )

    # Abuse limits (rates in the notation of the `limits` library: "1000/second", "30/minute").
    rate_limit_read: str = Field(
        default="2000/second", description="Requests per API key to routes that need 'read'."
    )
    rate_limit_send: str = Field(
        default="2000/second",
        description="Requests per API key to routes that need 'send' (each may carry a batch).",
    )
    rate_limit_admin: str = Field(
        default="200/second", description="Requests per API key to routes that need 'admin'."
    )
    rate_limit_webhooks: str = Field(
        default="5000/second", description="Provider webhook posts per client address."
    )
    rate_limit_pages: str = Field(
        default="600/minute",
        description="Preference-page and unsubscribe requests per client address.",
    )
    rate_limit_sign_in: str = Field(
        default="30/minute", description="Portal sign-in posts per client address."
    )
    sign_in_failures_allowed: int = Field(
        default=5,
        ge=1,
        description="Failed portal sign-ins of one account before each further attempt must "
        "wait (1 s, then doubling); one address gets four times as many.",
    )
    sign_in_max_delay_seconds: float = Field(
        default=900.0, gt=0, description="Longest wait between sign-in attempts of one account."
    )
    forwarded_allow_ips: str = Field(
        default="127.0.0.1",
        description="Proxies trusted to name the client address (X-Forwarded-For), comma-"
        "separated, or '*'; per-address limits count the address they name.",
    )

    # Database tuning.
    db_pool_size: int = Field(
        default=20,
        ge=1,
        le=200,
        description="Connections each process keeps open (as many again may be opened for "
        "a burst, and are closed after it). Set it to the requests a process has in flight: "
        "a connection opened and closed per request costs more than the request.",
    )
    db_connect_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Longest wait to open a PostgreSQL connection; past it the database "
        "counts as unavailable (the API answers 503, workers wait and retry).",
    )
    db_pool_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Longest a request or a worker loop waits for a free pooled connection.",
    )
    sqlite_synchronous: Literal["FULL", "NORMAL", "EXTRA"] = Field(
        default="FULL", description="SQLite durability; FULL means an accepted message is on disk."
    )

    # Delivery engine.
    lease_seconds: float = Field(default=60.0, gt=0, description="How long a claim holds.")
    send_timeout_seconds: float = Field(
        default=15.0, gt=0, description="Upper bound of one provider call; well inside the lease."
    )
    claim_batch_size: int = Field(default=200, ge=1, le=5000)
    max_in_flight: int = Field(
        default=200, ge=1, description="Provider calls one worker process runs at once."
    )
    max_attempts: int = Field(
        default=5,
        ge=1,
        le=100,
        description="Provider attempts before a transient error becomes failed.",
    )
    retry_base_seconds: float = Field(default=5.0, gt=0)
    retry_max_seconds: float = Field(default=3600.0, gt=0)
    idle_poll_seconds: float = Field(
        default=1.0, gt=0, description="Longest an idle worker sleeps before looking again."
    )
    completion_flush_ms: float = Field(
        default=10.0, ge=0, description="How long finished sends wait to be written together."
    )
    shutdown_grace_seconds: float = Field(
        default=20.0, ge=0, description="On SIGTERM, how long in-flight sends may finish."
    )
    resolve_chunk_size: int = Field(
        default=20000,
        ge=1,
        description="Recipients resolved per transaction when a message is due.",
    )
    cancel_wait_seconds: float = Field(
        default=5.0, ge=0, description="How long a cancel waits for sends already in flight."
    )

    # Recipients.
    default_timezone: str = Field(default="UTC", description="Zone for recipients without one.")
    default_phone_region: str | None = Field(
        default=None,
        description="ISO country used to read phone numbers written without +country code.",
    )

    # Channels and providers.
    public_url: str | None = Field(
        default=None,
        description="Address at which providers and people reach this server (webhooks, "
        "unsubscribe links), e.g. https://bulletin.example.com. Default: the address the "
        "server listens on (HOST and PORT, or `serve --host/--port`), with 127.0.0.1 for "
        "every interface.",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Key(s) that encrypt provider secrets stored through the API; "
        "comma-separated to rotate. Make one with `bulletin secret-key`.",
    )
    channel_refresh_seconds: float = Field(
        default=1.0, gt=0, description="How soon workers pick up a changed channel configuration."
    )
    provider_connect_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Longest wait to connect to a provider."
    )
    allow_private_provider_addresses: bool = Field(
        default=False,
        description="Let providers (organizations' own and the ones set here) be reached over "
        "plain http, on any SMTP port, and at loopback, private or link-local addresses: for "
        "a relay on your own network, or local stand-ins. Off, such an address is refused.",
    )
    webhook_secret_grace_seconds: int = Field(
        default=86400,
        ge=0,
        le=7 * 86400,
        description="After a webhook endpoint's secret is rotated, how long the old secret "
        "also signs (unless the rotation names its own grace period).",
    )
    # Webhooks out (the sender in each worker process).
    webhook_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=60,
        description="Longest a webhook request may take, connecting included; past it the "
        "attempt counts as failed and is retried.",
    )
    webhook_max_in_flight_per_endpoint: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="Webhook requests one worker process has in flight to one endpoint.",
    )
    webhook_max_in_flight: int = Field(
        default=200, ge=1, description="Webhook requests one worker process has in flight."
    )
    webhook_lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long a worker holds the webhooks it took; if it dies, another sends "
        "them again (same webhook-id) once this has passed.",
    )
    webhook_retry_delays: str = Field(
        default="5s,5m,30m,2h,5h,10h,10h,14h,20h",
        description="Waits before each retry of a webhook that was not answered 2xx, comma-"
        "separated (s, m, h, d); after the last, it has failed and its endpoint is marked "
        "failing. The default retries over about three days.",
    )
    # Providers for every organization without its own (a single-organization install);
    # bulletin.channels.configs.from_settings makes their configurations and checks them.
    whatsapp_phone_number_id: str | None = Field(
        default=None, description="WhatsApp Cloud API sending number id; enables WhatsApp."
    )
    whatsapp_access_token: SecretStr | None = None
    whatsapp_app_secret: SecretStr | None = Field(
        default=None, description="Verifies X-Hub-Signature-256 on WhatsApp webhooks."
    )
    whatsapp_verify_token: SecretStr | None = Field(
        default=None, description="Token for the WhatsApp webhook verification handshake."
    )
    whatsapp_base_url: str = "https://graph.facebook.com"
    whatsapp_api_version: str = "v21.0"
    whatsapp_rate_per_second: float = Field(default=80.0, gt=0)
    whatsapp_template: str | None = Field(
        default=None,
        description="Template sent outside the 24-hour window: 'name' or 'name:language'; "
        "its body parameters are the title and the body.",
    )
    smtp_host: str | None = Field(default=None, description="SMTP server; enables email.")
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str | None = Field(default=None, description="From address of emails.")
    smtp_from_name: str | None = None
    smtp_rate_per_second: float | None = Field(default=None, gt=0)
    twilio_account_sid: str | None = Field(default=None, description="Enables SMS via Twilio.")
    twilio_auth_token: SecretStr | None = None
    twilio_webhook_signing_key: SecretStr | None = Field(
        default=None,
        description="SharedKey secret that verifies webhooks a Twilio Webhook Setting signs "
        "(X-Twilio-Webhooks-Signature-Settings).",
    )
    twilio_from: str | None = Field(default=None, description="Sending number (E.164).")
    twilio_messaging_service_sid: str | None = None
    twilio_base_url: str = "https://api.twilio.com"
    twilio_rate_per_second: float | None = Field(default=10.0, gt=0)

    # Events from RabbitMQ (`bulletin consume`).
    amqp_url: SecretStr = Field(
        default=SecretStr("amqp://guest:guest@127.0.0.1:5672/"),
        description="RabbitMQ server `bulletin consume` reads events from: amqp:// or "
        "amqps://user:password@host:port/vhost. Its password never appears in a log line.",
    )
    consume_queue: str = Field(
        default="bulletin.events",
        description="Queue `bulletin consume` reads; it is declared durable, with the durable "
        "queue '<name>.dead' for the events it refuses.",
    )
    consume_org: uuid.UUID | None = Field(
        default=None,
        description="The organization every event of the queue belongs to (one organization "
        "per queue). Set this or consume_orgs.",
    )
    consume_orgs: str | None = Field(
        default=None,
        description="Organizations the queue carries events for, comma-separated: each event "
        "names its own in a top-level 'organization' key, which must be one of these.",
    )
    consume_prefetch: int = Field(
        default=1000,
        ge=1,
        le=10_000,
        description="Events `bulletin consume` holds unacknowledged at once: at most one "
        "batch, accepted in one transaction.",
    )
    consume_batch_ms: float = Field(
        default=20.0,
        ge=0,
        le=10_000,
        description="How long a batch waits for more events after its first one arrives.",
    )

    @model_validator(mode="after")
    def _lease_has_room(self) -> Settings:
        # A worker starts a send only if the lease outlasts the send timeout by a margin;
        # otherwise every claim would be handed back unsent, forever.
        if self.lease_seconds < self.send_timeout_seconds + 5:
            raise ValueError(
                "lease_seconds must be at least send_timeout_seconds + 5, so that a send "
                "always ends well inside the lease"
            )
        return self

    @model_validator(mode="after")
    def _webhook_lease_has_room(self) -> Settings:
        # A claimed webhook may wait for its endpoint's free slot, then be sent: the lease
        # must leave room for a wait and a request, or most claims would be handed back
        # untried (a request is only started while the lease outlasts its timeout).
        if self.webhook_lease_seconds < 2 * self.webhook_timeout_seconds + 5:
            raise ValueError(
                "webhook_lease_seconds must be at least twice webhook_timeout_seconds + 5"
            )
        return self

    @field_validator("webhook_retry_delays")
    @classmethod
    def _retry_delays(cls, value: str) -> str:
        parse_delays(value)
        return value

    @property
    def webhook_retry_schedule(self) -> tuple[float, ...]:
        """The waits before each webhook retry, in seconds (see ``webhook_retry_delays``)."""
        return parse_delays(self.webhook_retry_delays)

    @field_validator("database_url")
    @classmethod
    def _driver(cls, value: str) -> str:
        return normalize_database_url(value)

    @field_validator(
        "rate_limit_read",
        "rate_limit_send",
        "rate_limit_admin",
        "rate_limit_webhooks",
        "rate_limit_pages",
        "rate_limit_sign_in",
    )
    @classmethod
    def _rate(cls, value: str) -> str:
        from limits import parse

        try:
            item = parse(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a rate such as '1000/second': {exc}") from exc
        if item.amount < 1:
            raise ValueError(f"{value!r} allows nothing")
        return value

    @model_validator(mode="after")
    def _one_way_to_name_organizations(self) -> Settings:
        if self.consume_org is not None and self.consume_orgs is not None:
            raise ValueError(
                "set consume_org (one organization per queue) or consume_orgs (each event "
                "names its own), not both"
            )
        return self

    @field_validator("amqp_url")
    @classmethod
    def _amqp_url(cls, value: SecretStr) -> SecretStr:
        # The reasons never quote the URL: it may hold a password.
        try:
            parts = urlsplit(value.get_secret_value())
            port = parts.port
        except ValueError:
            raise ValueError("not a URL such as amqp://user:password@host:5672/") from None
        if parts.scheme not in ("amqp", "amqps"):
            raise ValueError("the scheme must be amqp:// or amqps://")
        if not parts.hostname:
            raise ValueError("no host: write amqp://user:password@host:5672/")
        if port == 0:
            raise ValueError("port 0 is not a port")
        return value

    @field_validator("consume_queue")
    @classmethod
    def _queue_name(cls, value: str) -> str:
        # An AMQP queue name is at most 255 bytes, and '.dead' is added for the refused.
        if not value or len(value.encode()) > 250:
            raise ValueError("a queue name has 1 to 250 bytes")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("a queue name has no control characters")
        if value.startswith("amq."):
            raise ValueError("names starting with 'amq.' are reserved by RabbitMQ")
        return value

    @field_validator("consume_orgs")
    @classmethod
    def _organizations(cls, value: str | None) -> str | None:
        if value is None:
            return None
        ids: list[str] = []
        for word in (w.strip() for w in value.split(",")):
            if not word:
                continue
            try:
                ids.append(str(uuid.UUID(word)))
            except ValueError:
                shown = word if len(word) <= 40 else word[:40] + "..."
                raise ValueError(f"{shown!r} is not an organization id") from None
        if not ids:
            raise ValueError("names no organization: give their ids, comma-separated")
        return ",".join(dict.fromkeys(ids))

    @property
    def consume_org_ids(self) -> tuple[uuid.UUID, ...]:
        """The organizations `bulletin consume` takes events for (none: it is not configured)."""
        if self.consume_org is not None:
            return (self.consume_org,)
        return tuple(uuid.UUID(word) for word in (self.consume_orgs or "").split(",") if word)

    @property
    def consume_names_organizations(self) -> bool:
        """Whether each event names its organization (consume_orgs) rather than the queue."""
        return self.consume_orgs is not None

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def base_url(self) -> str:
        """Where this server is reached from outside, without a trailing slash: the public
        URL, or else the address it listens on (see :func:`listen_url`)."""
        return (self.public_url or listen_url(self.host, self.port)).rstrip("/")

    @property
    def base_url_is_local(self) -> bool:
        """Whether links and callbacks would name an address only this machine reaches:
        no public URL is set and the server listens on loopback or on every interface."""
        return not self.public_url and is_local_host(self.host)
