"""What the sandbox shows of the messages it accepted."""

from __future__ import annotations

import datetime as dt
import uuid

from pydantic import BaseModel, Field


class SandboxMessage(BaseModel):
    id: int
    message_id: uuid.UUID
    delivery_id: int
    channel: str
    recipient: str = Field(description="The recipient's external_id.")
    address: str
    title: str
    body: str
    attempts: int = Field(description="Times this delivery was handed over; 1 unless resent.")
    preference_url: str | None = Field(
        default=None, description="The preference-centre link the message carried, if any."
    )
    created_at: dt.datetime


class SandboxPage(BaseModel):
    items: list[SandboxMessage]
    next_cursor: str | None
