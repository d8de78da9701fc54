"""People who sign in to the portal, and their sessions."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, Index, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from bulletin.db import Base, UTCDateTime, utcnow
from bulletin.ids import uuid7


class PortalUser(Base):
    """Someone of an organization who signs in to the portal with an email and a password.

    The email is unique across the installation, so that signing in needs no organization.
    ``password_hash`` is ``scrypt$n$r$p$salt$digest`` (see :mod:`bulletin.web.portal.passwords`).
    """

    __tablename__ = "portal_users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    org_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    disabled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class PortalSession(Base):
    """A signed-in browser. ``id`` is the SHA-256 of the cookie's token, which is not stored,
    so a copy of the table lets no one in. Signing out deletes the row."""

    __tablename__ = "portal_sessions"
    __table_args__ = (Index("ix_portal_sessions_expires_at", "expires_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("portal_users.id", ondelete="CASCADE"), index=True
    )
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
