"""Portal pages for announcements: list with live progress, compose with preview, detail."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import secrets
import uuid
import zoneinfo
from typing import Annotated, Any
from urllib.parse import quote

import structlog
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.deliveries import progress as message_progress
from bulletin.deliveries import repository as deliveries
from bulletin.deliveries import service as delivery_service
from bulletin.deliveries.states import DeliveryState
from bulletin.errors import FieldError, InvalidRequest, RequestInProgress
from bulletin.idempotency import service as idempotency
from bulletin.messages import content, schemas, service, templates
from bulletin.messages import repository as messages
from bulletin.messages.models import Message
from bulletin.recipients.addresses import CHANNELS
from bulletin.recipients.validation import check_timezone
from bulletin.services import Services
from bulletin.web.portal.render import PathId, PortalRoute, page
from bulletin.web.portal.security import CheckedPost, Posted, SignedInUser

log = structlog.get_logger("bulletin.portal")
router = APIRouter(prefix="/portal", route_class=PortalRoute, include_in_schema=False)

_PAGE_SIZE = 50
_DELIVERIES_SHOWN = 200
#: Not yet received: nothing reached the person (yet). ``sent`` counts as received, because
#: email reports nothing after the server's acceptance.
NOT_RECEIVED = ("pending", "sending", "failed", "suppressed", "cancelled", "unknown")
_SPLIT = re.compile(r"[\s,;]+")
#: The compose form's one-time key, made when the page is rendered: sending the same form
#: twice (a double click, the browser sending it again) makes one announcement, not two.
ONCE_FIELD = "submission_key"
# Portal keys live beside API clients' Idempotency-Keys; the prefix keeps them apart, and the
# fingerprint is the same for every compose so that a form edited and sent again with the same
# key shows the first announcement instead of an error.
_ONCE_PREFIX = "portal-compose:"
_ONCE_PRINT = idempotency.fingerprint("POST", "/portal/announcements/new", b"")
# On PostgreSQL a twin sent while the first is still being saved is told to wait; it asks again
# this often, this many times, and then shows what the first made.
_TWIN_WAIT_SECONDS = 0.1
_TWIN_TRIES = 50


def _svc(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def progress(message: Message, counts: dict[str, int]) -> dict[str, Any]:
    """What the progress bar of one announcement shows."""
    total = sum(counts.values())
    open_ = counts.get("pending", 0) + counts.get("sending", 0)
    settled = total - open_
    if message.state in ("scheduled", "resolving"):
        percent = 0
    elif total == 0:
        percent = 100
    else:
        percent = settled * 100 // total
    return {
        "id": str(message.id),
        "state": message.state,
        "counts": {k: v for k, v in counts.items() if v},
        "total": total,
        "settled": settled,
        "percent": percent,
        "active": message.state in ("scheduled", "resolving", "sending"),
    }


@router.get("")
@router.get("/")
async def home() -> Response:
    return RedirectResponse("/portal/announcements", status_code=303)


@router.get("/announcements")
async def list_announcements(
    request: Request,
    viewer: SignedInUser,
    before: Annotated[uuid.UUID | None, Query()] = None,
) -> Response:
    async with _svc(request).db.read() as session:
        found = await messages.page(
            session, viewer.org_id, service.ANNOUNCEMENT, before, _PAGE_SIZE + 1
        )
        more = len(found) > _PAGE_SIZE
        found = found[:_PAGE_SIZE]
        counts = await deliveries.count_by_state_for(session, [m.id for m in found])
    rows = [(m, progress(m, counts[m.id])) for m in found]
    return page(
        "announcements.html",
        viewer=viewer,
        rows=rows,
        older=str(found[-1].id) if more else None,
    )


@router.get("/announcements/progress")
async def announcements_progress(
    request: Request,
    viewer: SignedInUser,
    id: Annotated[list[uuid.UUID], Query(max_length=100)],
) -> JSONResponse:
    """Progress of the named announcements, for the list page's polling script."""
    async with _svc(request).db.read() as session:
        found = [
            m
            for m in [
                await messages.get(session, viewer.org_id, i, service.ANNOUNCEMENT) for i in id
            ]
            if m is not None
        ]
        counts = await deliveries.count_by_state_for(session, [m.id for m in found])
    return JSONResponse({"items": [progress(m, counts[m.id]) for m in found]})


def _audience(kind: str, groups: str, people: str) -> dict[str, Any]:
    if kind == "groups":
        return {"groups": [g.strip() for g in groups.split(",") if g.strip()] or None}
    if kind == "recipients":
        return {"recipients": [p for p in _SPLIT.split(people) if p] or None}
    return {"all": True}


@router.get("/announcements/audience")
async def audience_size(
    request: Request,
    viewer: SignedInUser,
    audience: Annotated[str, Query(max_length=20)] = "all",
    groups: Annotated[str, Query(max_length=20_000)] = "",
    recipients: Annotated[str, Query(max_length=200_000)] = "",
) -> JSONResponse:
    """How many people the audience being composed reaches (the compose page asks as it changes)."""
    try:
        chosen = schemas.Audience.model_validate(_audience(audience, groups, recipients))
    except ValidationError:
        return JSONResponse({"count": 0, "unknown": [], "error": "Choose who it goes to."})
    async with _svc(request).db.read() as session:
        count, unknown = await message_progress.count_audience(session, viewer.org_id, chosen)
    return JSONResponse({"count": count, "unknown": unknown[:20], "error": None})


def _send_at(form: Posted) -> str | None:
    """The UTC send time of the form, from a local date and time in the chosen IANA zone."""
    if form.text("when", "now") != "later":
        return None
    zone_name = form.text("timezone") or "UTC"
    try:
        zone = zoneinfo.ZoneInfo(check_timezone(zone_name))
    except ValueError as exc:
        raise InvalidRequest(
            "The time zone is not valid.", [FieldError(("timezone",), str(exc))]
        ) from exc
    local = f"{form.text('send_date')} {form.text('send_time')}"
    # Browsers send HH:MM, or HH:MM:SS when seconds were given.
    for pattern in ("%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"):
        try:
            at = dt.datetime.strptime(local, pattern)  # noqa: DTZ007 - the zone is attached next
        except ValueError:
            continue
        return at.replace(tzinfo=zone).astimezone(dt.UTC).isoformat()
    raise InvalidRequest(
        "Give the date (YYYY-MM-DD) and time (HH:MM) to send at.",
        [FieldError(("send_date",), "a date and a time are needed")],
    )


def payload_of(form: Posted) -> dict[str, Any]:
    """The announcement the compose form describes, as the API would receive it."""
    payload: dict[str, Any] = {
        "title": form.text("title"),
        "body": form.text("body"),
        "audience": _audience(
            form.text("audience", "all"), form.text("groups"), form.text("recipients")
        ),
        "channels": [c for c in form.all("channels") if c],
        "routing": form.text("routing", "first"),
        "urgent": form.text("urgent") == "on",
        "send_at": _send_at(form),
    }
    if form.text("category"):
        payload["category"] = form.text("category")
    if form.text("sms_body"):
        payload["overrides"] = {"sms": {"body": form.text("sms_body")}}
    return payload


def previews(title: str, body: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Each channel's text as the channels render it, for a sample person."""
    try:
        shown = content.previews(title, body, overrides)
    except templates.TemplateFailed as exc:
        return {"error": str(exc)}
    return {
        "error": None,
        "sms": {
            "text": shown.sms,
            "characters": shown.sms_length.characters,
            "encoding": shown.sms_length.encoding,
            "segments": shown.sms_length.segments,
        },
        "whatsapp": shown.whatsapp,
        "email_html": shown.email_html,
    }


def _problems(exc: ValidationError | InvalidRequest) -> list[str]:
    if isinstance(exc, ValidationError):
        return [
            f"{'.'.join(str(p) for p in e['loc']) or 'form'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        ]
    return [f"{'.'.join(str(p) for p in e.loc[-2:])}: {e.message}" for e in exc.errors] or [
        exc.detail
    ]


def _compose(viewer: Any, values: dict[str, Any], status: int = 200, **extra: Any) -> Response:
    return page("compose.html", status, viewer=viewer, values=values, zones=_zones(), **extra)


def _zones() -> list[str]:
    return sorted(zoneinfo.available_timezones())


@router.get("/announcements/new")
async def compose(viewer: SignedInUser) -> Response:
    values = {
        "channels": list(CHANNELS),
        "routing": "first",
        "audience": "all",
        "timezone": "",
        ONCE_FIELD: secrets.token_urlsafe(18),
    }
    return _compose(viewer, values)


async def _create_once(
    services: Services, org_id: uuid.UUID, body: schemas.AnnouncementIn, key: str
) -> tuple[str, bool]:
    """The id of the announcement made for ``key`` (made now unless it was already), and
    whether it was made now. Without a key (a form from before keys), it is always made now."""

    async def make(session: AsyncSession) -> idempotency.StoredAnswer:
        count, unknown = await message_progress.count_audience(session, org_id, body.audience)
        if count == 0 and not unknown:
            raise InvalidRequest(
                "The audience reaches nobody: choose other groups or add recipients first.",
                [FieldError(("audience",), "reaches nobody")],
            )
        message = await service.create_announcement(session, org_id, body)
        return idempotency.StoredAnswer(
            303, {"id": str(message.id)}, f"/portal/announcements/{message.id}"
        )

    for _ in range(_TWIN_TRIES):
        try:
            async with services.db.transaction() as session:
                if not key:
                    answer, replayed = await make(session), False
                else:
                    answer, replayed = await idempotency.once(
                        session,
                        org_id,
                        idempotency.check_key(_ONCE_PREFIX + key),
                        _ONCE_PRINT,
                        lambda: make(session),
                    )
        except RequestInProgress:
            await asyncio.sleep(_TWIN_WAIT_SECONDS)
            continue
        return str(answer.body["id"]), not replayed
    raise RequestInProgress("This announcement is still being saved; reload the page shortly.")


@router.post("/announcements/new")
async def create(request: Request, posted: CheckedPost) -> Response:
    """Preview, or send (now or at the chosen time) the composed announcement."""
    viewer = posted.viewer
    values: dict[str, Any] = {k: posted.text(k) for k in posted.form if k != "channels"}
    values["channels"] = posted.all("channels")
    try:
        payload = payload_of(posted)
        if posted.text("action") == "preview":
            shown = previews(payload["title"], payload["body"], payload.get("overrides", {}))
            return _compose(viewer, values, preview=shown)
        body = schemas.AnnouncementIn.model_validate(payload)
        services = _svc(request)
        message_id, made = await _create_once(
            services, viewer.org_id, body, posted.text(ONCE_FIELD)
        )
    except (ValidationError, InvalidRequest) as exc:
        return _compose(viewer, values, 422, problems=_problems(exc))
    location = f"/portal/announcements/{message_id}"
    if made:
        services.notifier.work_available()
        log.info("portal.announcement_created", org_id=str(viewer.org_id), message_id=message_id)
    else:
        log.info("portal.announcement_sent_again", org_id=str(viewer.org_id), message_id=message_id)
        location += "?notice=" + quote("This form was already sent: here is what it made.")
    return RedirectResponse(location, status_code=303)


@router.post("/announcements/preview")
async def preview(posted: CheckedPost) -> JSONResponse:
    """Channel previews of the form being composed (the compose page's script)."""
    overrides = {"sms": {"body": posted.text("sms_body")}} if posted.text("sms_body") else {}
    return JSONResponse(previews(posted.text("title"), posted.text("body"), overrides))


@router.get("/announcements/{message_id}")
async def detail(
    request: Request,
    viewer: SignedInUser,
    message_id: uuid.UUID,
    show: Annotated[str, Query(pattern="^(all|not-received)$")] = "all",
    after: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
    notice: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    async with _svc(request).db.read() as session:
        message = await service.require(session, viewer.org_id, message_id, service.ANNOUNCEMENT)
        counts = await deliveries.count_by_state(session, message.id)
        rows = await deliveries.page_for_message(
            session,
            message.id,
            state=None,
            states=NOT_RECEIVED if show == "not-received" else None,
            after_id=after,
            limit=_DELIVERIES_SHOWN + 1,
        )
    more = len(rows) > _DELIVERIES_SHOWN
    rows = rows[:_DELIVERIES_SHOWN]
    return page(
        "announcement.html",
        viewer=viewer,
        message=message,
        bar=progress(message, counts),
        rows=rows,
        show=show,
        next_after=rows[-1][0].id if more else None,
        notice=notice,
        cancellable=message.state in ("scheduled", "resolving", "sending"),
        unknown=DeliveryState.UNKNOWN.value,
    )


@router.post("/announcements/{message_id}/cancel")
async def cancel(request: Request, posted: CheckedPost, message_id: uuid.UUID) -> Response:
    services = _svc(request)
    async with services.db.transaction() as session:
        _, cancelled = await message_progress.cancel(
            session, posted.viewer.org_id, message_id, service.ANNOUNCEMENT
        )
    in_flight = await message_progress.wait_for_in_flight(
        services.db, message_id, services.settings.cancel_wait_seconds
    )
    log.info("portal.announcement_cancelled", message_id=str(message_id), cancelled=cancelled)
    notice = f"Cancelled: {cancelled} deliveries will not start."
    if in_flight:
        notice += f" {in_flight} already under way may still arrive."
    return RedirectResponse(
        f"/portal/announcements/{message_id}?notice={quote(notice)}", status_code=303
    )


@router.post("/deliveries/{delivery_id}/resend")
async def resend(request: Request, posted: CheckedPost, delivery_id: PathId) -> Response:
    """Send an ``unknown`` delivery again, deliberately."""
    services = _svc(request)
    async with services.db.transaction() as session:
        delivery = await delivery_service.resend_unknown(session, posted.viewer.org_id, delivery_id)
    services.notifier.work_available()
    log.info("portal.delivery_resent", delivery_id=delivery_id)
    notice = quote(f"Delivery {delivery_id} will be sent again.")
    return RedirectResponse(
        f"/portal/announcements/{delivery.message_id}?notice={notice}", status_code=303
    )
