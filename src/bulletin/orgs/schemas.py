"""Request and response bodies of the organization settings API."""

from __future__ import annotations

import datetime as dt
import uuid

from pydantic import BaseModel, Field

from bulletin.schemas import RequestBody


class Organization(BaseModel):
    """The calling key's organization and its settings."""

    id: uuid.UUID
    name: str
    preference_links_in_texts: bool = Field(
        description=(
            "Whether SMS and free-text WhatsApp messages end with the person's short "
            "preference-centre link. Emails always carry it."
        )
    )
    created_at: dt.datetime


class OrganizationPatch(RequestBody):
    """Body of ``PATCH /v1/organization``: only the fields given change."""

    name: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")
    preference_links_in_texts: bool | None = None
