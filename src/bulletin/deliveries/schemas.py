"""Response bodies for deliveries and their events."""

from __future__ import annotations

import datetime as dt
import uuid

from pydantic import BaseModel, Field

from bulletin.deliveries.states import DeliveryState


class DeliveryEvent(BaseModel):
    at: dt.datetime
    state: str
    attempt: int | None
    detail: str | None


class Delivery(BaseModel):
    id: int
    message_id: uuid.UUID
    recipient: str = Field(description="The recipient's external_id.")
    channel: str
    state: DeliveryState
    reason: str | None = Field(description="Why it is in this state, in words.")
    attempts: int = Field(description="Calls made to a provider for this delivery.")
    next_attempt_at: dt.datetime | None = Field(description="When a pending delivery is due.")
    provider: str | None
    provider_message_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    sent_at: dt.datetime | None


class DeliveryDetail(Delivery):
    events: list[DeliveryEvent]


class DeliveryPage(BaseModel):
    items: list[Delivery]
    next_cursor: str | None
