"""What the sandbox shows of the messages it accepted.

A message's preference link is the person's credential for their preferences page. Keys that
can send (the organization's operators) see the links, as a real inbox would show them; a
``read`` key sees every ``/p/<token>`` in a record replaced by ``/p/[redacted]`` and no
``preference_url`` (see :meth:`SandboxPage.without_preference_links`).
"""

from __future__ import annotations

import datetime as dt
import re
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

    def without_preference_links(self) -> SandboxPage:
        """This page with no person's preference token left in it."""
        return self.model_copy(
            update={
                "items": [
                    item.model_copy(
                        update={
                            "title": redact_preference_links(item.title),
                            "body": redact_preference_links(item.body),
                            "preference_url": None,
                        }
                    )
                    for item in self.items
                ]
            }
        )


#: The token part of a preference link (``/p/<token>``, ``/p/<token>/unsubscribe``), whatever
#: its shape: everything after ``/p/`` up to the next separator.
_PREFERENCE_TOKEN = re.compile(r"/p/[^\s/?#\"'<>]+")
REDACTED_LINK = "/p/[redacted]"


def redact_preference_links(text: str) -> str:
    """``text`` with every preference token replaced by ``[redacted]``."""
    return _PREFERENCE_TOKEN.sub(REDACTED_LINK, text)
