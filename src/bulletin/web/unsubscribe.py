"""Unsubscribe links in emails (``List-Unsubscribe``, RFC 8058 one-click).

The link carries the delivery id, signed with this installation's key. Opening it (GET) shows
a page with a button; only a POST unsubscribes, because mail scanners open links on their
own. A mail client's one-click POST works the same way. Unsubscribing opts the person out of
the message's category when it has one, and out of email otherwise.
"""

from __future__ import annotations

import html
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import HTMLResponse
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.api.deps import ServicesDep
from bulletin.crypto import signing_key, unsign
from bulletin.db import utcnow
from bulletin.deliveries.models import Delivery
from bulletin.messages.models import Message
from bulletin.recipients.models import Recipient

router = APIRouter(prefix="/v1/unsubscribe", tags=["unsubscribe"], include_in_schema=False)

Token = Annotated[str, Path(max_length=200, pattern=r"^[0-9]+\.[A-Za-z0-9_-]+$")]

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}
button{{font:inherit;padding:.5rem 1rem}}</style></head>
<body><h1>{title}</h1>{content}</body></html>"""


def _page(title: str, content: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=html.escape(title), content=content), status_code=status)


async def _target(
    session: AsyncSession, key: bytes, token: str
) -> tuple[Recipient, Message] | None:
    payload = unsign(key, token)
    if payload is None or not payload.isdigit() or len(payload) > 18:
        return None
    delivery = await session.get(Delivery, int(payload))
    if delivery is None:
        return None
    recipient = await session.get(Recipient, delivery.recipient_id)
    message = await session.get(Message, delivery.message_id)
    if recipient is None or message is None:
        return None
    return recipient, message


def _what(message: Message) -> str:
    if message.category:
        return f"messages about <strong>{html.escape(message.category)}</strong>"
    return "email from this sender"


_INVALID = "This unsubscribe link is not valid. It may have been cut short in your email."


@router.get("/{token}", response_class=HTMLResponse)
async def confirm(token: Token, svc: ServicesDep) -> HTMLResponse:
    key = await signing_key(svc.db)
    async with svc.db.read() as session:
        target = await _target(session, key, token)
    if target is None:
        return _page("Link not valid", f"<p>{_INVALID}</p>", 404)
    _, message = target
    form = (
        f'<p>Stop receiving {_what(message)}?</p><form method="post">'
        '<button type="submit">Unsubscribe</button></form>'
    )
    return _page("Unsubscribe", form)


@router.post("/{token}", response_class=HTMLResponse)
async def unsubscribe(token: Token, svc: ServicesDep) -> HTMLResponse:
    key = await signing_key(svc.db)
    async with svc.db.transaction() as session:
        target = await _target(session, key, token)
        if target is None:
            return _page("Link not valid", f"<p>{_INVALID}</p>", 404)
        recipient, message = target
        if message.category:
            recipient.categories = {**(recipient.categories or {}), message.category: False}
        else:
            recipient.pref_email = False
        recipient.updated_at = utcnow()
    return _page("Unsubscribed", f"<p>You will no longer receive {_what(message)}.</p>")
