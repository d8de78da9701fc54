"""Recipients, their groups, and their delivery preferences (kept on the recipient row)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Identity, Index, String, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from bulletin.db import Base, BigId, Json, UTCDateTime, utcnow


class Recipient(Base):
    """A person an organization reaches, known by the organization's own ``external_id``.

    ``pref_*`` hold the person's explicit channel choices; ``None`` means the default, which
    is "enabled when there is an address". ``categories`` maps a category to on/off.
    """

    __tablename__ = "recipients"
    __table_args__ = (
        UniqueConstraint("org_id", "external_id", name="uq_recipients_org_external_id"),
        Index("ix_recipients_org_id_id", "org_id", "id"),
        # Inbound messages (STOP, replies) are matched to people by their number.
        Index("ix_recipients_whatsapp", "whatsapp"),
        Index("ix_recipients_phone", "phone"),
    )

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    org_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("organizations.id", ondelete="CASCADE")
    )
    external_id: Mapped[str] = mapped_column(String(255))
    name: Mapped[str | None] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(20))
    whatsapp: Mapped[str | None] = mapped_column(String(20))
    timezone: Mapped[str | None] = mapped_column(String(64))
    locale: Mapped[str | None] = mapped_column(String(35))
    attributes: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    pref_whatsapp: Mapped[bool | None] = mapped_column(Boolean)
    pref_email: Mapped[bool | None] = mapped_column(Boolean)
    pref_sms: Mapped[bool | None] = mapped_column(Boolean)
    categories: Mapped[dict[str, bool]] = mapped_column(Json, default=dict)
    quiet_start: Mapped[str | None] = mapped_column(String(5))
    quiet_end: Mapped[str | None] = mapped_column(String(5))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    deactivated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    #: When the person last wrote to the organization on WhatsApp; free-form messages may be
    #: sent to them for 24 hours after it (the customer-service window), templates otherwise.
    whatsapp_inbound_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class RecipientGroup(Base):
    """Membership of a recipient in a named group (a department, a site)."""

    __tablename__ = "recipient_groups"
    __table_args__ = (Index("ix_recipient_groups_org_name", "org_id", "name", "recipient_id"),)

    recipient_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("recipients.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    org_id: Mapped[uuid.UUID] = mapped_column(Uuid)
