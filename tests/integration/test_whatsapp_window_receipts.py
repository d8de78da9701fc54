"""WhatsApp's 24-hour window reported after the send: a ``failed`` status carrying 131047.

This is how the Cloud API usually refuses free text to a person whose window is closed: it
answers 200 with a ``wamid``, then posts a failed status. Bulletin is served over real HTTP
(the end-to-end stack) and its engine sends through the real adapter to the Cloud API stand-in,
which enforces the window and posts that status to Bulletin's webhook itself, signed as Meta
signs. The stand-in's ledger shows what reached "Meta": the free text, then the approved
template, once; the window is recorded as closed, so the person's next message is a template
at once; a repeated 131047 changes nothing; a 131047 for a template fails for good. Everything
is asserted on the database, the API and the ledgers, never on how long anything took.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select, update

from bulletin.channels.accounts import webhook_path
from bulletin.channels.base import DEFAULT_ACCOUNT, Receipt, ReportedState
from bulletin.db import Database, utcnow
from bulletin.deliveries import receipts
from bulletin.deliveries.models import Delivery
from bulletin.deliveries.outcomes import SENDING_TEMPLATE
from bulletin.devservers.whatsapp import Latency, status_error
from bulletin.messages.models import Message
from bulletin.recipients import repository as recipients
from bulletin.recipients.models import Recipient
from e2e.stack import WA_SECRET, Stack
from support.db_factories import insert_people, new_org, person_row, sent_on_whatsapp
from support.http import body_of
from support.http_factories import notify, post_people
from support.waiting import eventually

PHONE = "+27821234567"
ADA: dict[str, Any] = {
    "external_id": "ada",
    "name": "Ada",
    "email": "ada@example.org",
    "phone": PHONE,
}
NO_TEMPLATE = (
    "neither the message nor the WhatsApp configuration names one"  # the dispatcher's reason
)


async def strict_stand_in(stack: Stack, **whatsapp: Any) -> None:
    """Configure the organization's channels, and make the WhatsApp stand-in enforce the window
    and post its statuses to the organization's webhook, as Meta does."""
    await stack.configure(**whatsapp)
    server = stack.whatsapp
    server.enforce_window = True
    server.window_refusal = "status"
    server.webhook_url = stack.base_url + webhook_path("whatsapp", str(stack.api.org_id))
    server.app_secret = WA_SECRET


async def ada_wrote(stack: Stack, at: dt.datetime | None) -> int:
    """Ada, whose last WhatsApp message Bulletin recorded at ``at``; her recipient id.

    The stand-in has never heard from her, so by Meta's account her window is closed: this is
    the disagreement (a message lost on the way, clocks) that makes Meta refuse the free text.
    """
    await post_people(stack.api, ADA)
    db = stack.api.services.db
    async with db.transaction() as session:
        rid = await session.scalar(select(Recipient.id).where(Recipient.external_id == "ada"))
        assert rid is not None
        await session.execute(
            update(Recipient).where(Recipient.id == rid).values(whatsapp_inbound_at=at)
        )
    return rid


async def inbound_at(db: Database, recipient_id: int) -> dt.datetime | None:
    async with db.read() as session:
        return await session.scalar(
            select(Recipient.whatsapp_inbound_at).where(Recipient.id == recipient_id)
        )


async def deliveries(stack: Stack, message_id: str) -> dict[str, dict[str, Any]]:
    """The message's deliveries by channel, each with its events."""
    body = body_of(await stack.api.get(f"/v1/notifications/{message_id}"), 200)
    found = {}
    for d in body["deliveries"]:
        found[d["channel"]] = body_of(await stack.api.get(f"/v1/deliveries/{d['id']}"), 200)
    return found


def whatsapp_is(
    stack: Stack, message_id: str, state: str, *, sends: int
) -> Callable[[], Awaitable[bool]]:
    """Whether the message's WhatsApp delivery is in ``state`` and the stand-in took ``sends``
    messages in all."""

    async def check() -> bool:
        found = await deliveries(stack, message_id)
        wa = found.get("whatsapp")
        return wa is not None and wa["state"] == state and len(stack.whatsapp.accepted) == sends

    return check


def failed_for_a_closed_window(stack: Stack) -> list[dict[str, Any]]:
    """The failed statuses carrying 131047 that the stand-in posted, and Bulletin's answers."""
    posted = []
    for hook in stack.whatsapp.webhooks:
        for entry in hook.payload["entry"]:
            for change in entry["changes"]:
                for status in change["value"].get("statuses", []):
                    if any(e["code"] == 131047 for e in status.get("errors", [])):
                        assert hook.status == 200
                        posted.append(hook.payload)
    return posted


def types_sent(stack: Stack) -> list[str]:
    return [m.body["type"] for m in stack.whatsapp.sent_to(PHONE)]


async def template_refused_then_email(
    stack: Stack, message_id: str, wamid: str
) -> dict[str, dict[str, Any]]:
    """Meta posts a failed status with 131047 for the template it took as ``wamid``; once the
    email fallback went out, the message's deliveries by channel."""
    await stack.whatsapp.send_status(wamid, "failed", errors=[status_error(131047)])

    async def fell_back() -> bool:
        return len(stack.smtp.received) == 1

    await eventually(fell_back)
    return await deliveries(stack, message_id)


# --- the engine ---------------------------------------------------------------------------


async def test_free_text_failed_for_a_closed_window_is_sent_again_as_the_template(
    stack: Stack,
) -> None:
    await strict_stand_in(stack)
    # By Bulletin's records Ada wrote an hour ago: her window is open, so free text goes first.
    rid = await ada_wrote(stack, utcnow() - dt.timedelta(hours=1))
    message_id = await notify(stack.api, "ada", channels=["whatsapp", "email"], routing="first")

    await eventually(whatsapp_is(stack, message_id, "sent", sends=2))
    # The free text, which Meta took and then reported failed, and the template: one each.
    assert types_sent(stack) == ["text", "template"]
    _text, template = stack.whatsapp.sent_to(PHONE)
    assert len(failed_for_a_closed_window(stack)) == 1
    assert template.body["template"]["name"] == "bulletin_notice"
    wa = (await deliveries(stack, message_id))["whatsapp"]
    assert template.body["biz_opaque_callback_data"] == str(wa["id"])
    assert wa["provider_message_id"] == template.wamid
    again = [e for e in wa["events"] if e["state"] == "pending"]
    [requeued] = [e for e in again if e["detail"].startswith(SENDING_TEMPLATE)]
    assert "131047" in requeued["detail"]
    assert "failed" not in {e["state"] for e in wa["events"]}
    # The window is recorded as closed.
    assert await inbound_at(stack.api.services.db, rid) is None

    await stack.whatsapp.send_status(template.wamid, "delivered")
    await eventually(whatsapp_is(stack, message_id, "delivered", sends=2))
    # Never fell back: Ada was reached on WhatsApp.
    assert set(await deliveries(stack, message_id)) == {"whatsapp"}
    assert stack.smtp.received == []

    # Her next message goes as the template at once: nothing more is refused.
    second = await notify(stack.api, "ada", channels=["whatsapp"])
    await eventually(whatsapp_is(stack, second, "sent", sends=3))
    await stack.whatsapp.settle()
    assert types_sent(stack) == ["text", "template", "template"]
    assert [r.code for r in stack.whatsapp.refused] == [131047]


async def test_without_a_template_it_fails_with_the_reason_and_falls_back_to_email(
    stack: Stack,
) -> None:
    await strict_stand_in(stack, template=None)
    rid = await ada_wrote(stack, utcnow() - dt.timedelta(hours=1))
    message_id = await notify(stack.api, "ada", channels=["whatsapp", "email"], routing="first")

    async def fell_back() -> bool:
        found = await deliveries(stack, message_id)
        return found.get("email", {}).get("state") == "sent"

    await eventually(fell_back)
    found = await deliveries(stack, message_id)
    assert found["whatsapp"]["state"] == "failed"
    assert NO_TEMPLATE in (found["whatsapp"]["reason"] or "")
    assert types_sent(stack) == ["text"]
    assert len(failed_for_a_closed_window(stack)) == 1
    assert [m.recipients for m in stack.smtp.received] == [(ADA["email"],)]
    assert await inbound_at(stack.api.services.db, rid) is None


async def test_the_same_131047_posted_again_changes_nothing(stack: Stack) -> None:
    await strict_stand_in(stack)
    await ada_wrote(stack, utcnow() - dt.timedelta(hours=1))
    # The stand-in takes the template at once but answers it a second later, so the repeat
    # arrives while the template's send is still under way (the delivery is `sending`).
    stack.whatsapp.script = lambda body: Latency(1.0) if body["type"] == "template" else None
    message_id = await notify(stack.api, "ada", channels=["whatsapp", "email"], routing="first")

    await eventually(lambda: _accepted(stack, 2))
    [repeat] = failed_for_a_closed_window(stack)
    assert (await deliveries(stack, message_id))["whatsapp"]["state"] == "sending"
    assert await stack.whatsapp.post(repeat) == 200

    await eventually(whatsapp_is(stack, message_id, "sent", sends=2))
    # Once more after the template was accepted, and after it was delivered.
    assert await stack.whatsapp.post(repeat) == 200
    template = stack.whatsapp.accepted[-1]
    await stack.whatsapp.send_status(template.wamid, "delivered")
    await eventually(whatsapp_is(stack, message_id, "delivered", sends=2))
    assert await stack.whatsapp.post(repeat) == 200

    found = await deliveries(stack, message_id)
    assert set(found) == {"whatsapp"}
    assert found["whatsapp"]["state"] == "delivered"
    assert types_sent(stack) == ["text", "template"]
    requeues = [e for e in found["whatsapp"]["events"] if e["state"] == "pending"]
    assert len([e for e in requeues if e["detail"].startswith(SENDING_TEMPLATE)]) == 1
    assert stack.smtp.received == []


async def test_a_131047_for_a_template_fails_without_a_retry(stack: Stack) -> None:
    await strict_stand_in(stack)
    await ada_wrote(stack, None)  # never wrote: the template goes first
    message_id = await notify(stack.api, "ada", channels=["whatsapp", "email"], routing="first")
    await eventually(whatsapp_is(stack, message_id, "sent", sends=1))
    [template] = stack.whatsapp.accepted
    assert template.body["type"] == "template"

    found = await template_refused_then_email(stack, message_id, template.wamid)
    assert found["whatsapp"]["state"] == "failed"
    assert "131047" in (found["whatsapp"]["reason"] or "")
    assert found["email"]["state"] == "sent"
    assert types_sent(stack) == ["template"]  # asked once, never again


async def test_a_131047_for_the_template_sent_instead_fails_for_good(stack: Stack) -> None:
    await strict_stand_in(stack)
    await ada_wrote(stack, utcnow() - dt.timedelta(hours=1))
    message_id = await notify(stack.api, "ada", channels=["whatsapp", "email"], routing="first")
    await eventually(whatsapp_is(stack, message_id, "sent", sends=2))
    template = stack.whatsapp.accepted[-1]

    found = await template_refused_then_email(stack, message_id, template.wamid)
    assert found["whatsapp"]["state"] == "failed"
    assert found["email"]["state"] == "sent"
    assert types_sent(stack) == ["text", "template"]


async def _accepted(stack: Stack, n: int) -> bool:
    return len(stack.whatsapp.accepted) == n


# --- the message ----------------------------------------------------------------------------


async def sent_whatsapp(db: Database, message_state: str) -> Delivery:
    """A WhatsApp delivery accepted as free text (``wamid.A``), its message in ``message_state``."""
    return await sent_on_whatsapp(db, PHONE, "wamid.A", message_state=message_state)


async def apply_window_closed(db: Database, delivery: Delivery) -> None:
    receipt = Receipt(
        provider_message_id="wamid.A",
        delivery_id=delivery.id,
        state=ReportedState.FAILED,
        at=utcnow(),
        detail="131047: Re-engagement message",
        window_closed=True,
    )
    source = receipts.Source("whatsapp_cloud", "whatsapp", DEFAULT_ACCOUNT, [delivery.org_id])
    async with db.transaction() as session:
        await receipts.apply_receipts(session, source, [receipt])


async def test_a_completed_message_has_work_again(db: Database) -> None:
    delivery = await sent_whatsapp(db, "completed")
    await apply_window_closed(db, delivery)
    async with db.read() as session:
        found = await session.get(Delivery, delivery.id)
        message = await session.get(Message, delivery.message_id)
    assert found is not None
    assert message is not None
    assert found.state == "pending"
    assert (message.state, message.completed_at) == ("sending", None)


async def test_a_cancelled_message_is_not_sent_again(db: Database) -> None:
    delivery = await sent_whatsapp(db, "cancelled")
    await apply_window_closed(db, delivery)
    async with db.read() as session:
        found = await session.get(Delivery, delivery.id)
    assert found is not None
    assert found.state == "failed"
    assert "131047" in (found.reason or "")


# --- the window ---------------------------------------------------------------------------


async def test_a_window_reopened_after_the_failed_send_stays_open(db: Database) -> None:
    org = await new_org(db)
    ids = await insert_people(
        db, org, [person_row(1, whatsapp="+31600000001"), person_row(2, whatsapp="+31600000002")]
    )
    sent = utcnow() - dt.timedelta(minutes=10)
    before, after = sent - dt.timedelta(hours=2), sent + dt.timedelta(minutes=5)
    async with db.transaction() as session:
        for external, at in (("p1", before), ("p2", after)):
            await session.execute(
                update(Recipient)
                .where(Recipient.id == ids[external])
                .values(whatsapp_inbound_at=at)
            )
    async with db.transaction() as session:
        await recipients.close_windows_sent_before(session, [(ids["p1"], sent), (ids["p2"], sent)])
    assert await inbound_at(db, ids["p1"]) is None
    # p2 wrote after the send that failed: their window is open, whatever Meta said of it.
    assert await inbound_at(db, ids["p2"]) == after
