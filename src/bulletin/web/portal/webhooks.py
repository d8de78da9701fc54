"""Portal pages for the organization's webhook endpoints: where status events are POSTed.

A list with a creation form, and a page per endpoint with its actions (enable or disable,
rotate the secret, send a test event, delete) and its recent deliveries, each with its tries
and a retry button. Everything goes through :mod:`bulletin.subscriptions.service`, as the API
does; every portal user is an organization admin (the portal has no other role), so each of
them may manage the endpoints of their own organization, and of no other (404).

**The secret is shown once**: in the page answering the creation, or a rotation, and never
in an address, a redirect or a later page. The creation form carries a key made when the page
is shown, kept in the Idempotency-Key store with the endpoint's id (never the secret): sending
the form twice (a double click) makes one endpoint, not two that would each be sent every
event, and the second answer shows that endpoint without its secret.

Notices after an action are chosen from :data:`NOTICES` by a short code in the address, so
that a link made elsewhere cannot put words of its own on a portal page.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.errors import InvalidRequest, RequestInProgress
from bulletin.idempotency import service as idempotency
from bulletin.services import Services
from bulletin.subscriptions import kinds, schemas, service
from bulletin.web.portal.accounts import Viewer
from bulletin.web.portal.render import PathId, PortalRoute, page
from bulletin.web.portal.security import CheckedPost, Posted, SignedInUser

log = structlog.get_logger("bulletin.portal")
router = APIRouter(prefix="/portal", route_class=PortalRoute, include_in_schema=False)

#: Deliveries shown on an endpoint's page at a time, newest first.
DELIVERIES_SHOWN = 50

#: What each kind tells, for the creation form.
KIND_LABELS: dict[str, str] = {
    "delivery.sent": "a delivery was handed to the provider",
    "delivery.delivered": "the provider reports it delivered",
    "delivery.read": "the person read it (WhatsApp)",
    "delivery.failed": "a delivery failed, with the reason",
    "delivery.suppressed": "a delivery was not sent (opted out, no address, suppressed)",
    "delivery.unknown": "the outcome of an attempt cannot be known",
    "message.completed": "a message has nothing left to send",
    "message.cancelled": "a message was cancelled",
}

#: The notices an action's redirect may ask a page to show.
NOTICES: dict[str, str] = {
    "enabled": "The endpoint is active: events are recorded and sent to it again.",
    "disabled": "The endpoint is disabled: nothing new is recorded or sent for it.",
    "tested": "A webhook.test event is on its way; it appears below.",
    "retried": "The delivery will be sent again now, with the same webhook-id.",
    "deleted": "The endpoint was deleted; nothing more is sent to it.",
    "again": (
        "This form was already sent: here is the endpoint it made. Its secret was shown "
        "then, and is not shown again: rotate it if it was not kept."
    ),
}
Notice = Annotated[str, Query(max_length=20)]

ONCE_FIELD = "submission_key"
# Beside API clients' keys; the fingerprint is the same for every form, so a form changed and
# sent again with the same key shows the first endpoint rather than an error.
_ONCE_PREFIX = "portal-webhook:"
_ONCE_PRINT = idempotency.fingerprint("POST", "/portal/webhooks", b"")
# On PostgreSQL a twin sent while the first is still being saved is told to wait.
_TWIN_WAIT_SECONDS = 0.1
_TWIN_TRIES = 50


def _svc(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _path(endpoint_id: uuid.UUID | str, notice: str | None = None) -> str:
    return f"/portal/webhooks/{endpoint_id}" + (f"?notice={notice}" if notice else "")


async def _list_page(
    request: Request,
    viewer: Viewer,
    status: int = 200,
    values: dict[str, Any] | None = None,
    problems: list[str] | None = None,
    notice: str = "",
) -> Response:
    async with _svc(request).db.read() as session:
        listed = await service.list_endpoints(session, viewer.org_id, limit=service.MAX_ENDPOINTS)
    return page(
        "webhooks.html",
        status,
        viewer=viewer,
        endpoints=listed.items,
        kind_labels=KIND_LABELS,
        values=values or {"kinds": list(kinds.KINDS), ONCE_FIELD: secrets.token_urlsafe(18)},
        problems=problems or [],
        notice=NOTICES.get(notice, ""),
        most=service.MAX_ENDPOINTS,
    )


async def _endpoint_page(
    request: Request,
    viewer: Viewer,
    endpoint_id: uuid.UUID,
    *,
    status: int = 200,
    secret: str | None = None,
    notice: str = "",
    cursor: str | None = None,
) -> Response:
    services = _svc(request)
    async with services.db.read() as session:
        endpoint = await service.get_endpoint(session, viewer.org_id, endpoint_id)
        deliveries = await service.list_deliveries(
            session, viewer.org_id, endpoint_id, cursor, DELIVERIES_SHOWN
        )
    return page(
        "webhook.html",
        status,
        viewer=viewer,
        endpoint=endpoint,
        deliveries=deliveries.items,
        next_cursor=deliveries.next_cursor,
        secret=secret,
        notice=NOTICES.get(notice, ""),
        grace_hours=services.settings.webhook_secret_grace_seconds / 3600,
    )


@router.get("/webhooks")
async def list_webhooks(request: Request, viewer: SignedInUser, notice: Notice = "") -> Response:
    return await _list_page(request, viewer, notice=notice)


def _problems(exc: ValidationError | InvalidRequest) -> list[str]:
    if isinstance(exc, ValidationError):
        return [
            f"{'.'.join(str(p) for p in e['loc']) or 'form'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        ]
    return [f"{e.loc[-1]}: {e.message}" for e in exc.errors] or [exc.detail]


def _endpoint_in(posted: Posted) -> schemas.EndpointIn:
    return schemas.EndpointIn.model_validate(
        {
            "url": posted.text("url"),
            "kinds": posted.all("kinds"),
            "description": posted.text("description") or None,
        }
    )


async def _create_once(
    services: Services, org_id: uuid.UUID, body: schemas.EndpointIn, key: str
) -> tuple[uuid.UUID, str | None]:
    """The endpoint made for ``key`` (made now unless it already was) and, when made now, its
    secret. Without a key (a form from before keys) it is always made now."""
    box = service.secret_box(services.settings)
    allow_private = services.settings.allow_private_provider_addresses
    made: list[str] = []

    async def make(session: AsyncSession) -> idempotency.StoredAnswer:
        created = await service.create_endpoint(
            session, box, org_id, body, allow_private=allow_private
        )
        assert created.secret is not None
        made.append(created.secret)
        # The stored answer names the endpoint; the secret is never kept with the key.
        return idempotency.StoredAnswer(303, {"id": str(created.id)}, _path(created.id))

    for _ in range(_TWIN_TRIES):
        made.clear()
        try:
            async with services.db.transaction() as session:
                if not key:
                    answer = await make(session)
                else:
                    answer, _replayed = await idempotency.once(
                        session,
                        org_id,
                        idempotency.check_key(_ONCE_PREFIX + key),
                        _ONCE_PRINT,
                        lambda: make(session),
                    )
        except RequestInProgress:
            await asyncio.sleep(_TWIN_WAIT_SECONDS)
            continue
        return uuid.UUID(str(answer.body["id"])), made[0] if made else None
    raise RequestInProgress("This endpoint is still being saved; reload the page shortly.")


@router.post("/webhooks")
async def create_webhook(request: Request, posted: CheckedPost) -> Response:
    """Create an endpoint and show its secret, this once."""
    viewer = posted.viewer
    values: dict[str, Any] = {k: posted.text(k) for k in posted.form if k != "kinds"}
    values["kinds"] = posted.all("kinds")
    services = _svc(request)
    try:
        body = _endpoint_in(posted)
        endpoint_id, secret = await _create_once(
            services, viewer.org_id, body, posted.text(ONCE_FIELD)
        )
    except (ValidationError, InvalidRequest) as exc:
        return await _list_page(request, viewer, 422, values, _problems(exc))
    if secret is None:
        log.info(
            "portal.webhook_sent_again", org_id=str(viewer.org_id), endpoint_id=str(endpoint_id)
        )
        return RedirectResponse(_path(endpoint_id, "again"), status_code=303)
    log.info("portal.webhook_created", org_id=str(viewer.org_id), endpoint_id=str(endpoint_id))
    return await _endpoint_page(request, viewer, endpoint_id, status=201, secret=secret)


@router.get("/webhooks/{endpoint_id}")
async def webhook(
    request: Request,
    viewer: SignedInUser,
    endpoint_id: uuid.UUID,
    notice: Notice = "",
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    return await _endpoint_page(request, viewer, endpoint_id, notice=notice, cursor=cursor)


async def _set_enabled(
    request: Request, posted: Posted, endpoint_id: uuid.UUID, enabled: bool
) -> Response:
    services = _svc(request)
    async with services.db.transaction() as session:
        await service.set_enabled(session, posted.viewer.org_id, endpoint_id, enabled)
    if enabled:
        services.notifier.work_available()  # what it had pending goes out
    return RedirectResponse(
        _path(endpoint_id, "enabled" if enabled else "disabled"), status_code=303
    )


@router.post("/webhooks/{endpoint_id}/enable")
async def enable(request: Request, posted: CheckedPost, endpoint_id: uuid.UUID) -> Response:
    """Make a disabled or failing endpoint active again."""
    return await _set_enabled(request, posted, endpoint_id, True)


@router.post("/webhooks/{endpoint_id}/disable")
async def disable(request: Request, posted: CheckedPost, endpoint_id: uuid.UUID) -> Response:
    return await _set_enabled(request, posted, endpoint_id, False)


@router.post("/webhooks/{endpoint_id}/rotate")
async def rotate(request: Request, posted: CheckedPost, endpoint_id: uuid.UUID) -> Response:
    """A new secret, shown this once; the old one goes on signing for the server's grace
    period, unless the form asks to stop it at once (a secret that leaked)."""
    services = _svc(request)
    grace = 0 if posted.text("at_once") == "on" else services.settings.webhook_secret_grace_seconds
    box = service.secret_box(services.settings)
    async with services.db.transaction() as session:
        rotated = await service.rotate_secret(
            session, box, posted.viewer.org_id, endpoint_id, grace
        )
    return await _endpoint_page(request, posted.viewer, endpoint_id, secret=rotated.secret)


@router.post("/webhooks/{endpoint_id}/test")
async def send_test(request: Request, posted: CheckedPost, endpoint_id: uuid.UUID) -> Response:
    services = _svc(request)
    async with services.db.transaction() as session:
        await service.send_test(session, posted.viewer.org_id, endpoint_id)
    services.notifier.work_available()
    return RedirectResponse(_path(endpoint_id, "tested"), status_code=303)


@router.post("/webhooks/{endpoint_id}/delete")
async def delete(request: Request, posted: CheckedPost, endpoint_id: uuid.UUID) -> Response:
    async with _svc(request).db.transaction() as session:
        await service.delete_endpoint(session, posted.viewer.org_id, endpoint_id)
    return RedirectResponse("/portal/webhooks?notice=deleted", status_code=303)


@router.post("/webhooks/{endpoint_id}/deliveries/{delivery_id}/retry")
async def retry(
    request: Request, posted: CheckedPost, endpoint_id: uuid.UUID, delivery_id: PathId
) -> Response:
    """Send a delivered or failed event again, with the same ``webhook-id``."""
    services = _svc(request)
    async with services.db.transaction() as session:
        await service.retry_delivery(session, posted.viewer.org_id, endpoint_id, delivery_id)
    services.notifier.work_available()
    return RedirectResponse(_path(endpoint_id, "retried"), status_code=303)
