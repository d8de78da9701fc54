"""Request and response bodies of the organization settings and API keys."""

from __future__ import annotations

import datetime as dt
import uuid

from pydantic import BaseModel, Field

from bulletin.orgs.keys import Scope
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


class Key(BaseModel):
    """An API key as listed: never its secret, nor anything the secret could be found from."""

    id: uuid.UUID
    name: str | None
    scope: Scope
    prefix: str = Field(
        description="The key's first characters, to tell keys apart; not enough to use it."
    )
    created_at: dt.datetime
    last_used_at: dt.datetime | None = Field(
        description=(
            "When the key last authenticated a request, to about a minute: uses are written "
            "in batches, at most a minute late. Null if never used."
        )
    )
    revoked_at: dt.datetime | None = Field(description="Null while the key works.")


class KeyPage(BaseModel):
    items: list[Key]
    next_cursor: str | None


class KeyIn(RequestBody):
    """Body of ``POST /v1/keys``."""

    name: str = Field(
        min_length=1,
        max_length=200,
        pattern=r"^[^\x00-\x1f]+$",
        description="A label to tell the key apart, such as where it is used.",
    )
    scope: Scope = Field(description="admin, send or read; each includes the ones after it.")


class NewKey(Key):
    """A key just created, with its secret, which is shown in this answer only."""

    api_key: str | None = Field(
        description=(
            "The key. It is not stored (only a digest is), so it cannot be shown again. "
            "Null when the answer is an Idempotency-Key replay: revoke that key and create "
            "another if the first answer was lost."
        )
    )
