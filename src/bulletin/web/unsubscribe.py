"""Unsubscribe links of emails sent before the preference centre (one per delivery).

Such a link carries the delivery id, signed with this installation's key. It keeps working as
it always did: opening it (GET) shows a page with a button; only a POST unsubscribes, because
mail scanners open links on their own. Unsubscribing opts the person out of the message's
category when it has one, and out of email otherwise. Emails sent now carry the person's
``/p/<token>/unsubscribe`` link instead (see :mod:`bulletin.web.preferences`).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.api.deps import ServicesDep
from bulletin.crypto import unsign
from bulletin.deliveries import repository as deliveries
from bulletin.messages import repository as messages
from bulletin.messages.models import Message
from bulletin.recipients import repository as recipients
from bulletin.recipients import service
from bulletin.recipients.models import Recipient
from bulletin.web.preferences import SigningKey, refused_page, unsubscribe_page

router = APIRouter(prefix="/v1/unsubscribe", tags=["unsubscribe"], include_in_schema=False)

_INVALID = "This unsubscribe link is not valid. It may have been cut short in your email."


async def _target(
    session: AsyncSession, key: bytes, token: str
) -> tuple[Recipient, Message] | None:
    if len(token) > 200:
        return None
    payload = unsign(key, token)
    if payload is None or not payload.isdigit() or len(payload) > 18:
        return None
    delivery = await deliveries.by_id(session, int(payload))
    if delivery is None:
        return None
    recipient = await recipients.by_id(session, delivery.recipient_id)
    message = await messages.by_id(session, delivery.message_id)
    if recipient is None or message is None:
        return None
    return recipient, message


@router.get("/{token}", response_class=HTMLResponse)
async def confirm(token: str, services: ServicesDep, key: SigningKey) -> HTMLResponse:
    async with services.db.read() as session:
        target = await _target(session, key, token)
    if target is None:
        return refused_page(_INVALID)
    return unsubscribe_page(done=False, category=target[1].category, preferences_url=None)


@router.post("/{token}", response_class=HTMLResponse)
async def unsubscribe(token: str, services: ServicesDep, key: SigningKey) -> HTMLResponse:
    async with services.db.transaction() as session:
        target = await _target(session, key, token)
        if target is None:
            return refused_page(_INVALID)
        recipient, message = target
        await service.unsubscribe(session, recipient, message.category)
    return unsubscribe_page(done=True, category=message.category, preferences_url=None)
