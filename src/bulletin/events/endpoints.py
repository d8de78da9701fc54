"""HTTP routes of event types and events.

An event's ``id`` is the producer's own: Bulletin keeps it as long as the organization, and an
event whose id it has seen answers the original messages and creates nothing, whatever the
rest of the body says. A producer that retries with the same id after a timeout, or sends the
same event twice, is therefore idempotent without an ``Idempotency-Key`` (which is honoured as
well).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin import logs
from bulletin.api.common import Cursor, IdempotencyKey, Limit, create_idempotently
from bulletin.api.deps import ServicesDep
from bulletin.api.problems import responses
from bulletin.db import utcnow
from bulletin.errors import FieldError, InvalidRequest
from bulletin.events import schemas, service
from bulletin.idempotency.service import StoredAnswer
from bulletin.messages.service import as_notification
from bulletin.orgs.auth import Admin, Reader, Sender

types_router = APIRouter(
    prefix="/v1/event-types", tags=["event types"], responses=responses(401, 403, 422, 503)
)
router = APIRouter(prefix="/v1/events", tags=["events"], responses=responses(401, 403, 422, 503))

KeyPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        pattern=schemas.KEY_PATTERN,
        description="The event type's key: lower case letters, digits, '.', '_' and '-'.",
    ),
]


@types_router.put(
    "/{key}",
    response_model=schemas.EventType,
    responses={201: {"model": schemas.EventType, "description": "Created"}, **responses(413)},
)
async def put_event_type(
    key: KeyPath,
    body: schemas.EventTypeIn,
    principal: Admin,
    services: ServicesDep,
    response: Response,
) -> schemas.EventType:
    """Create (201) or replace (200) an event type: what an event of this type becomes.

    The templates are checked now, as a message's are. A change applies to events accepted
    afterwards; the messages of earlier ones keep the texts they were made with.
    """
    async with services.db.transaction() as session:
        shown, created = await service.put_type(session, principal.org_id, key, body)
    response.status_code = 201 if created else 200
    return shown


@types_router.get("/{key}", response_model=schemas.EventType, responses=responses(404))
async def get_event_type(
    key: KeyPath, principal: Reader, services: ServicesDep
) -> schemas.EventType:
    async with services.db.read() as session:
        return await service.get_type(session, principal.org_id, key)


@types_router.get("", response_model=schemas.EventTypePage)
async def list_event_types(
    principal: Reader, services: ServicesDep, limit: Limit = 50, cursor: Cursor = None
) -> schemas.EventTypePage:
    """Event types, by key."""
    async with services.db.read() as session:
        return await service.page_types(session, principal.org_id, cursor, limit)


@types_router.delete("/{key}", status_code=204, responses=responses(404))
async def delete_event_type(key: KeyPath, principal: Admin, services: ServicesDep) -> Response:
    """Delete an event type. Events accepted already keep their messages; new events of the
    type are refused until it is defined again."""
    async with services.db.transaction() as session:
        await service.delete_type(session, principal.org_id, key)
    return Response(status_code=204)


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with every ``#/$defs/...`` reference replaced by its definition, so that it
    can stand inside the OpenAPI document (whose root has no ``$defs``)."""
    definitions = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return {**resolve(definitions[ref.removeprefix("#/$defs/")]), **resolve(rest)}
            return {k: resolve(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


EVENT_SCHEMA = _inlined(schemas.EventIn.model_json_schema())
# The body is read as any JSON object and validated by the service, which tells a duplicate
# (an id seen before, whatever the rest says) from an invalid event; the document still shows
# what an event is.
EventBody = Annotated[dict[str, Any], Body(json_schema_extra=EVENT_SCHEMA)]


def _shown(outcome: service.Outcome) -> list[dict[str, Any]]:
    return [as_notification(m).model_dump(mode="json") for m in outcome.messages]


@router.post(
    "",
    status_code=202,
    response_model=schemas.EventAnswer,
    responses={
        200: {"model": schemas.EventAnswer, "description": "A duplicate: the original messages"},
        **responses(409, 413),
    },
)
async def post_event(
    body: EventBody,
    request: Request,
    principal: Sender,
    services: ServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Accept an event: one notification to each of its recipients, made from its type.

    Answers 202 with the notifications once they are stored. An event whose ``id`` was seen
    before in the organization answers 200 with the original notifications and creates
    nothing, whatever the rest of the body: the event id is how a producer retries safely
    without an ``Idempotency-Key``. Inline recipients (``external_id`` and contact fields) are
    created or updated in the same transaction.
    """
    region = services.settings.default_phone_region

    async def create(session: AsyncSession) -> StoredAnswer:
        [outcome] = await service.accept(
            session, principal.org_id, [body], region=region, now=utcnow()
        )
        if outcome.status == "refused":
            raise InvalidRequest(
                outcome.reason or "The event is invalid.",
                [FieldError(("body", *e.loc), e.message, e.type) for e in outcome.errors],
            )
        answer = {
            "id": outcome.event_id,
            "type": outcome.event_type,
            "status": outcome.status,
            "messages": _shown(outcome),
        }
        status = 202 if outcome.status == "accepted" else 200
        location = None
        if len(outcome.messages) == 1:
            location = f"/v1/notifications/{outcome.messages[0].id}"
        return StoredAnswer(status, answer, location)

    return await create_idempotently(
        request, services, principal.org_id, idempotency_key, create, wakes_worker=True
    )


@router.post("/batch", response_model=schemas.EventBatchAnswer, responses=responses(409, 413))
async def post_events(
    body: schemas.EventBatchIn,
    request: Request,
    principal: Sender,
    services: ServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Accept up to 1,000 events at once, each as ``POST /v1/events`` would, in one
    transaction: each is answered on its own (accepted, duplicate, or refused with its
    reasons), and the good ones are accepted even if others are refused. The events may name
    at most 10,000 recipients in all.

    As for a single event, an id seen before (or earlier in the batch) is a duplicate that
    creates nothing: resending a whole batch after a timeout is safe."""
    named = service.named_recipients(body.events)
    if named > service.MAX_RECIPIENTS_PER_CALL:
        raise InvalidRequest(
            f"The events name {named} recipients in all; at most "
            f"{service.MAX_RECIPIENTS_PER_CALL} per call. Split the batch.",
            [FieldError(("body", "events"), "too many recipients in all", "too_many")],
        )
    region = services.settings.default_phone_region

    async def create(session: AsyncSession) -> StoredAnswer:
        outcomes = await service.accept(
            session, principal.org_id, body.events, region=region, now=utcnow()
        )
        results = [_result(o) for o in outcomes]
        counts = {s: sum(o.status == s for o in outcomes) for s in service.STATUSES}
        answer = {
            "results": results,
            "accepted": counts["accepted"],
            "duplicates": counts["duplicate"],
            "refused": counts["refused"],
        }
        return StoredAnswer(200, answer, None)

    return await create_idempotently(
        request, services, principal.org_id, idempotency_key, create, wakes_worker=True
    )


def _result(outcome: service.Outcome) -> dict[str, Any]:
    result: dict[str, Any] = {
        "index": outcome.index,
        "id": outcome.event_id,
        "status": outcome.status,
    }
    if outcome.event_type is not None:
        result["type"] = outcome.event_type
    if outcome.status == "refused":
        # Masked as every problem answer is (bulletin.api.problems): a message may quote a
        # key or a place in the event, and the request's own secrets never come back.
        known = logs.known_secrets()
        result["problem"] = {
            "title": logs.mask(outcome.reason or "The event is invalid.", known),
            "errors": [
                {
                    "loc": [p if isinstance(p, int) else logs.mask(str(p), known) for p in e.loc],
                    "message": logs.mask(e.message, known),
                    "type": e.type,
                }
                for e in outcome.errors
            ],
        }
    else:
        result["messages"] = _shown(outcome)
    return result
