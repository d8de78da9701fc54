"""What the channels API answers. Secrets never appear: only which of them are set."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field


class ChannelOut(BaseModel):
    channel: Literal["whatsapp", "email", "sms"]
    source: Literal["organization", "environment", "sandbox"] = Field(
        description="Where the configuration in use comes from."
    )
    provider: str
    settings: dict[str, Any] = Field(description="The configuration, without its secrets.")
    secrets_set: list[str] = Field(description="Secret fields that have a value (write-only).")
    version: int | None = None
    updated_at: dt.datetime | None = None


class ChannelList(BaseModel):
    items: list[ChannelOut]
