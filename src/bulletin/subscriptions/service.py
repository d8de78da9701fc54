"""Webhook endpoints: create, read, change, delete, rotate the secret, send a test event, and
follow (and retry) what was sent. The API and the portal both call these; none commits.

Every function takes the calling organization: another organization's endpoint (or delivery)
is :class:`~bulletin.errors.NotFound`, exactly as an unknown one.

**Secrets.** An endpoint's signing secret (``whsec_...``) is returned by
:func:`create_endpoint` and :func:`rotate_secret` only. It is stored sealed with
:class:`~bulletin.crypto.SecretBox` when the server has ``BULLETIN_SECRET_KEY``; without one
it is stored as it is (it must be readable to sign, unlike an API key, of which only a digest
is kept), so a server without the key keeps webhook secrets in clear in its database. A
secret stored in clear stays readable once a key is set; a sealed one needs the key.

**Subscriptions.** The ``webhook_subscriptions`` rows, which the outbox insert joins, mirror
the ``kinds`` of *active* endpoints only: every change here rewrites them, and a disabled or
failing endpoint has none, so nothing new is recorded for it.

**Rotation.** After :func:`rotate_secret`, the previous secret also signs until
``previous_secret_expires_at`` (:func:`signing_secrets`), so receivers can be moved to the new
one without missing a request. Rotating again while an earlier previous secret still signs
keeps *that* one (the secret receivers most likely still hold) and replaces the current one:
a retried rotation, whose first answer was lost, does not cut off receivers that were never
moved. A grace of zero drops the previous secret at once (a secret that leaked).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

import structlog
from pydantic import AnyHttpUrl, TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.channels import egress
from bulletin.config import Settings
from bulletin.crypto import SecretBox
from bulletin.db import utcnow
from bulletin.errors import Conflict, FieldError, InvalidRequest, NotFound
from bulletin.ids import decode_cursor, decode_uuid_cursor, encode_cursor
from bulletin.subscriptions import kinds, repository, schemas, signing
from bulletin.subscriptions.models import WebhookAttempt, WebhookEndpoint, WebhookMessage

log = structlog.get_logger("bulletin.subscriptions")

#: The most endpoints an organization may have: every event is written once per endpoint.
MAX_ENDPOINTS = 20

_URL: TypeAdapter[AnyHttpUrl] = TypeAdapter(AnyHttpUrl)


def secret_box(settings: Settings) -> SecretBox | None:
    """The box that seals endpoint secrets, or ``None`` when the server has no key."""
    if settings.secret_key is None:
        return None
    return SecretBox(settings.secret_key.get_secret_value())


def check_url(url: str, *, allow_private: bool, loc: tuple[str, ...] = ("body", "url")) -> str:
    """``url`` as it is stored (normalized), or :class:`InvalidRequest` naming ``loc``.

    It must be an ``https`` URL at a public host: the provider address rules
    (:mod:`bulletin.channels.egress`), which ``allow_private`` (the server's
    ``BULLETIN_ALLOW_PRIVATE_PROVIDER_ADDRESSES``) turns off, also allowing ``http``. A name is
    judged again, by what it resolves to, each time the sender connects.
    """

    def refused(why: str, kind: str = "url_not_allowed") -> InvalidRequest:
        return InvalidRequest(
            "The endpoint URL is not allowed: it must be an https URL at a public address.",
            [FieldError(loc, why, kind)],
        )

    if len(url) > schemas.MAX_URL_LENGTH:
        raise refused(f"at most {schemas.MAX_URL_LENGTH} characters", "string_too_long")
    try:
        parsed = _URL.validate_python(url)
    except ValidationError:
        raise refused("is not a valid http(s) URL", "url_parsing") from None
    if parsed.username is not None or parsed.password is not None:
        raise refused("may not carry a user name or password")
    normalized = str(parsed)
    if len(normalized) > schemas.MAX_URL_LENGTH:
        raise refused(f"at most {schemas.MAX_URL_LENGTH} characters", "string_too_long")
    if not allow_private:
        problem = egress.url_problem(parsed.scheme, parsed.host)
        if problem is not None:
            raise refused(problem)
    return normalized


def _kinds(given: Sequence[str]) -> list[str]:
    """The kinds given, once each, in their documented order."""
    wanted = set(given)
    return [k for k in kinds.KINDS if k in wanted]


def _seal(secret: str, box: SecretBox | None) -> str:
    return secret if box is None else box.seal({"secret": secret})


def _open(stored: str, box: SecretBox | None) -> str:
    if stored.startswith(signing.PREFIX):
        return stored
    if box is None:
        raise Conflict("Stored webhook secrets need BULLETIN_SECRET_KEY to be read.")
    return box.open(stored)["secret"]


def signing_secrets(
    endpoint: WebhookEndpoint, box: SecretBox | None, now: dt.datetime
) -> list[str]:
    """The secrets that sign a request to ``endpoint`` sent at ``now``: its current one, and
    its previous one while a rotation's grace period lasts. For the sender.

    Raises :class:`~bulletin.errors.Conflict` when a secret is sealed and there is no key,
    :class:`~bulletin.crypto.SecretKeyError` when the key cannot open it.
    """
    found = [_open(endpoint.secret, box)]
    if _previous_signs(endpoint, now):
        assert endpoint.previous_secret is not None
        found.append(_open(endpoint.previous_secret, box))
    return found


def _previous_signs(endpoint: WebhookEndpoint, now: dt.datetime) -> bool:
    until = endpoint.previous_secret_until
    return endpoint.previous_secret is not None and until is not None and now < until


def as_endpoint(row: WebhookEndpoint, now: dt.datetime | None = None) -> schemas.Endpoint:
    """The endpoint as answers show it: never a secret."""
    return schemas.Endpoint.model_validate(_fields(row, now or utcnow()))


def _fields(row: WebhookEndpoint, now: dt.datetime) -> dict[str, object]:
    return {
        "id": row.id,
        "url": row.url,
        "description": row.description,
        "kinds": row.kinds,
        "state": row.state,
        "failing_since": row.failing_since,
        "previous_secret_expires_at": (
            row.previous_secret_until if _previous_signs(row, now) else None
        ),
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def _with_secret(
    row: WebhookEndpoint, secret: str | None, now: dt.datetime
) -> schemas.EndpointWithSecret:
    return schemas.EndpointWithSecret.model_validate({**_fields(row, now), "secret": secret})


def as_delivery(row: WebhookMessage, attempts: Sequence[WebhookAttempt]) -> schemas.Delivery:
    """An outbox row as an endpoint's deliveries list shows it, with its attempts."""
    return schemas.Delivery(
        id=row.id,
        webhook_id=signing.webhook_id(row.id),
        kind=row.kind,
        state=row.state,
        attempts=row.attempts,
        last_status=row.last_status,
        last_error=row.last_error,
        next_attempt_at=row.next_attempt_at if row.state == "pending" else None,
        occurred_at=row.occurred_at,
        created_at=row.created_at,
        finished_at=row.finished_at,
        history=[schemas.Attempt.model_validate(a, from_attributes=True) for a in attempts],
    )


def _not_found(endpoint_id: uuid.UUID) -> NotFound:
    return NotFound(f"There is no webhook endpoint {endpoint_id}.")


async def _require(
    session: AsyncSession, org_id: uuid.UUID, endpoint_id: uuid.UUID, *, lock: bool = False
) -> WebhookEndpoint:
    row = await repository.get_endpoint(session, org_id, endpoint_id, for_update=lock)
    if row is None:
        raise _not_found(endpoint_id)
    return row


async def _mirror(session: AsyncSession, row: WebhookEndpoint) -> None:
    """Rewrite the endpoint's subscription rows: its kinds while active, else none."""
    wanted = row.kinds if row.state == "active" else []
    await repository.set_subscriptions(session, row.id, row.org_id, wanted)


async def create_endpoint(
    session: AsyncSession,
    box: SecretBox | None,
    org_id: uuid.UUID,
    body: schemas.EndpointIn,
    *,
    allow_private: bool,
) -> schemas.EndpointWithSecret:
    """Create an active endpoint with a new secret; the answer is the only one that has it
    (with :func:`rotate_secret`'s). At most :data:`MAX_ENDPOINTS` per organization (409)."""
    url = check_url(body.url, allow_private=allow_private)
    if await repository.count_endpoints(session, org_id) >= MAX_ENDPOINTS:
        raise Conflict(
            f"The organization has {MAX_ENDPOINTS} webhook endpoints, the most it may have; "
            "delete one first (one endpoint can take every kind)."
        )
    now = utcnow()
    secret = signing.new_secret()
    row = WebhookEndpoint(
        org_id=org_id,
        url=url,
        description=body.description,
        kinds=_kinds(body.kinds),
        secret=_seal(secret, box),
        state="active",
        created_at=now,
        updated_at=now,
    )
    await repository.add_endpoint(session, row)
    await _mirror(session, row)
    log.info("webhooks.endpoint_created", org_id=str(org_id), endpoint_id=str(row.id))
    return _with_secret(row, secret, now)


async def get_endpoint(
    session: AsyncSession, org_id: uuid.UUID, endpoint_id: uuid.UUID
) -> schemas.Endpoint:
    """One of the organization's endpoints, without its secret."""
    return as_endpoint(await _require(session, org_id, endpoint_id))


async def list_endpoints(
    session: AsyncSession, org_id: uuid.UUID, cursor: str | None = None, limit: int = 50
) -> schemas.EndpointPage:
    """The organization's endpoints, oldest first, a page at a time (``next_cursor``)."""
    after = decode_uuid_cursor(cursor)
    found = await repository.page_endpoints(session, org_id, after, limit + 1)
    more = len(found) > limit
    found = found[:limit]
    now = utcnow()
    return schemas.EndpointPage(
        items=[as_endpoint(row, now) for row in found],
        next_cursor=encode_cursor(str(found[-1].id)) if more else None,
    )


async def update_endpoint(
    session: AsyncSession,
    org_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    patch: schemas.EndpointPatch,
    *,
    allow_private: bool,
) -> schemas.Endpoint:
    """Change the fields given. ``enabled`` true makes a disabled or failing endpoint active
    again (its pending events go out); false disables it (nothing new is recorded for it)."""
    row = await _require(session, org_id, endpoint_id, lock=True)
    given = patch.model_fields_set
    if "url" in given and patch.url is not None:
        row.url = check_url(patch.url, allow_private=allow_private)
    if "kinds" in given and patch.kinds is not None:
        row.kinds = _kinds(patch.kinds)
    if "description" in given:
        row.description = patch.description
    if "enabled" in given and patch.enabled is not None:
        before, row.state = row.state, "active" if patch.enabled else "disabled"
        row.failing_since = None
        event = "webhooks.endpoint_enabled" if patch.enabled else "webhooks.endpoint_disabled"
        log.info(event, org_id=str(org_id), endpoint_id=str(row.id), was=before)
    row.updated_at = utcnow()
    await session.flush()
    await _mirror(session, row)
    return as_endpoint(row)


async def set_enabled(
    session: AsyncSession, org_id: uuid.UUID, endpoint_id: uuid.UUID, enabled: bool
) -> schemas.Endpoint:
    """Enable (make active again, also when failing) or disable an endpoint."""
    patch = schemas.EndpointPatch(enabled=enabled)
    return await update_endpoint(session, org_id, endpoint_id, patch, allow_private=False)


async def delete_endpoint(session: AsyncSession, org_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
    """Delete an endpoint with everything recorded for it; nothing more is sent to it."""
    if not await repository.delete_endpoint(session, org_id, endpoint_id):
        raise _not_found(endpoint_id)
    log.info("webhooks.endpoint_deleted", org_id=str(org_id), endpoint_id=str(endpoint_id))


async def rotate_secret(
    session: AsyncSession,
    box: SecretBox | None,
    org_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    grace_seconds: int,
) -> schemas.EndpointWithSecret:
    """Give the endpoint a new secret, returned here only. The one it replaces goes on
    signing for ``grace_seconds`` (0: not at all); see the module's docstring for a
    rotation during another's grace period."""
    row = await _require(session, org_id, endpoint_id, lock=True)
    now = utcnow()
    secret = signing.new_secret()
    if grace_seconds <= 0:
        row.previous_secret, row.previous_secret_until = None, None
    else:
        if not _previous_signs(row, now):
            row.previous_secret = row.secret
        row.previous_secret_until = now + dt.timedelta(seconds=grace_seconds)
    row.secret = _seal(secret, box)
    row.updated_at = now
    await session.flush()
    log.info(
        "webhooks.secret_rotated",
        org_id=str(org_id),
        endpoint_id=str(row.id),
        grace_seconds=grace_seconds,
    )
    return _with_secret(row, secret, now)


async def send_test(
    session: AsyncSession, org_id: uuid.UUID, endpoint_id: uuid.UUID
) -> schemas.Delivery:
    """Record a ``webhook.test`` event for the endpoint, due now; it is sent (signed, retried)
    like every other. The endpoint must be active (409 otherwise: enable it first)."""
    row = await _require(session, org_id, endpoint_id)
    if row.state != "active":
        raise Conflict(
            f"The endpoint is {row.state}: nothing is sent to it. Enable it first "
            '(PATCH {"enabled": true}).'
        )
    now = utcnow()
    message = WebhookMessage(
        endpoint_id=row.id,
        org_id=org_id,
        kind=kinds.TEST,
        occurred_at=now,
        data={"endpoint_id": str(row.id), "test": True},
        state="pending",
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )
    await repository.add_message(session, message)
    return as_delivery(message, [])


async def list_deliveries(
    session: AsyncSession,
    org_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    cursor: str | None = None,
    limit: int = 50,
    state: str | None = None,
) -> schemas.DeliveryPage:
    """What was (or is to be) sent to the endpoint, newest first, each with its attempts;
    only those in ``state`` when given. Two statements per page."""
    await _require(session, org_id, endpoint_id)
    before = int(decode_cursor(cursor, int)) if cursor else None
    found = await repository.page_messages(session, endpoint_id, before, limit + 1, state)
    more = len(found) > limit
    found = found[:limit]
    attempts = await repository.attempts_of(session, [m.id for m in found])
    return schemas.DeliveryPage(
        items=[as_delivery(m, attempts[m.id]) for m in found],
        next_cursor=encode_cursor(found[-1].id) if more else None,
    )


async def retry_delivery(
    session: AsyncSession, org_id: uuid.UUID, endpoint_id: uuid.UUID, delivery_id: int
) -> schemas.Delivery:
    """Send a delivered or failed event again: pending, due now, with the same ``webhook-id``
    (receivers that saw it can tell). It goes out once the endpoint is active. Its tries go on
    counting (the sender's retry schedule continues from there: an event that had used up its
    retries gets one more try). A pending one is already on its way (409)."""
    await _require(session, org_id, endpoint_id)
    message = await repository.get_message(session, endpoint_id, delivery_id, for_update=True)
    if message is None:
        raise NotFound(f"The endpoint has no delivery {delivery_id}.")
    if message.state == "pending":
        raise Conflict("The delivery is pending already: it is sent at next_attempt_at.")
    await repository.make_due(session, message.id, utcnow())
    message = await repository.get_message(session, endpoint_id, delivery_id)
    assert message is not None
    attempts = await repository.attempts_of(session, [message.id])
    return as_delivery(message, attempts[message.id])
