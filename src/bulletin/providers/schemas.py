"""What the channels API answers. Secrets never appear: only which of them are set.

A channel served by the installation's own (environment) account shows only that it is, never
that account's settings: they would identify it to every organization.
"""

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
    webhook_url: str | None = Field(
        default=None,
        description="Where the provider must send this account's webhooks (status receipts, "
        "inbound messages); only for the organization's own WhatsApp and Twilio accounts.",
    )
    version: int | None = None
    updated_at: dt.datetime | None = None


class ChannelList(BaseModel):
    items: list[ChannelOut]
