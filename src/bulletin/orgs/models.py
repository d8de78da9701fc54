"""Organizations (tenants) and their API keys."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import Boolean, ForeignKey, String, Uuid, false
from sqlalchemy.orm import Mapped, mapped_column

from bulletin.db import Base, UTCDateTime, utcnow
from bulletin.ids import uuid7


class Organization(Base):
    """A tenant, and the settings that apply to everything it sends."""

    __tablename__ = "organizations"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: Append a short preference-centre link to SMS and free-text WhatsApp messages. Off by
    #: default: a text is short and often paid per segment, so the organization decides.
    preference_links_in_texts: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )


class ApiKey(Base):
    """An API key. Only a SHA-256 digest of the secret is kept; the secret is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    org_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    scope: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(24))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: When the key last authenticated a request, to about a minute: each process notes uses
    #: in memory and writes them in one batch now and then (see ``orgs.auth.KeyCache``).
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class InstanceSecret(Base):
    """A secret this installation made for itself, such as the key that signs unsubscribe links.

    Made once, on first use, so that links stay valid across restarts and across processes.
    """

    __tablename__ = "instance_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
