"""Settings, read once from ``BULLETIN_*`` environment variables and a ``.env`` file.

Build a :class:`Settings` at the edge (the CLI, a test) and pass it down; nothing in the
package reads the environment on its own.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./bulletin.db"


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


class Settings(BaseSettings):
    """Every setting Bulletin has. The README lists them with their meaning."""

    model_config = SettingsConfigDict(
        env_prefix="BULLETIN_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL. SQLite (default, ./bulletin.db) or PostgreSQL.",
    )
    host: str = Field(default="127.0.0.1", description="Address the API listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the API listens on.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = Field(
        default="console", description="'json' for one JSON object per line."
    )

    # Database tuning.
    db_pool_size: int = Field(default=10, ge=1, le=200)
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

    @field_validator("database_url")
    @classmethod
    def _driver(cls, value: str) -> str:
        return normalize_database_url(value)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
