"""RFC 9457 problem details: how every error leaves the API.

Bulletin's own exceptions are mapped to status codes here and nowhere else. An unexpected
exception becomes a 500 whose body says nothing about the internals. A database that cannot be
reached right now (see :func:`bulletin.db.is_unavailable`) is not a defect: it answers 503 with
``Retry-After``, and the same request succeeds once the database is back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException

from bulletin import errors, logs
from bulletin.db import describe, is_unavailable

log = structlog.get_logger("bulletin.api")

MEDIA_TYPE = "application/problem+json"
#: Seconds a client is asked to wait before retrying while the service cannot answer.
RETRY_AFTER_SECONDS = 5

_STATUS: list[tuple[type[errors.BulletinError], int, str, str]] = [
    (errors.NotFound, 404, "not-found", "Not found"),
    (errors.RequestInProgress, 409, "request-in-progress", "Request in progress"),
    (errors.Conflict, 409, "conflict", "Conflict"),
    (errors.IdempotencyKeyReused, 422, "idempotency-key-reused", "Idempotency-Key reused"),
    (errors.InvalidRequest, 422, "invalid-request", "Invalid request"),
    (errors.AuthenticationFailed, 401, "unauthenticated", "Unauthenticated"),
    (errors.PermissionDenied, 403, "forbidden", "Forbidden"),
]


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    instance: str | None = None,
    errors_: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:bulletin:problem:{slug}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if errors_ is not None:
        body["errors"] = errors_
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _clean_loc(loc: Any, known: Iterable[str] = ()) -> list[str | int]:
    return [part if isinstance(part, int) else logs.mask(str(part), known) for part in loc]


def _known(exc: RequestValidationError) -> list[str]:
    """What must not come back in a 422: the request's own secrets (headers, query, fields
    named like secrets in the body) and the input of every field named like a secret."""
    found = set(logs.known_secrets()) | logs.secret_values_of(exc.body)
    for error in exc.errors():
        names = [part for part in error.get("loc", ()) if isinstance(part, str)]
        if any(logs.is_secret_name(name) for name in names):
            found |= logs.secret_values_of({"secret": error.get("input")})
    return sorted(found, key=len, reverse=True)


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    """422 naming each invalid field, its message and type, never the input: the answer and
    the logs must not echo a password, token or key the request carried."""
    assert isinstance(exc, RequestValidationError)
    known = _known(exc)
    listed = [
        {
            "loc": _clean_loc(e.get("loc", ()), known),
            "message": logs.mask(str(e.get("msg", "")), known),
            "type": e.get("type"),
        }
        for e in exc.errors()
    ]
    return problem(
        422,
        "validation-error",
        "Invalid request",
        f"The request has {len(listed)} invalid field(s).",
        instance=request.url.path,
        errors_=listed,
    )


async def _bulletin(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.BulletinError)
    for kind, status, slug, title in _STATUS:
        if isinstance(exc, kind):
            listed = None
            known = logs.known_secrets()
            if isinstance(exc, errors.InvalidRequest):
                listed = [
                    {
                        "loc": _clean_loc(e.loc, known),
                        "message": logs.mask(e.message, known),
                        "type": e.type,
                    }
                    for e in exc.errors
                ]
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return problem(
                status,
                slug,
                title,
                logs.mask(exc.detail, known),
                instance=request.url.path,
                errors_=listed,
                headers=headers,
            )
    log.error("api.unmapped_error", error=repr(exc))
    return problem(500, "internal", "Internal error", "Something went wrong on our side.")


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else "HTTP error"
    return problem(
        exc.status_code,
        f"http-{exc.status_code}",
        detail,
        detail,
        instance=request.url.path,
        headers=dict(exc.headers or {}),
    )


def unavailable(
    detail: str, *, slug: str = "unavailable", instance: str | None = None
) -> JSONResponse:
    """503 with ``Retry-After``: the service cannot answer now, and will."""
    return problem(
        503,
        slug,
        "Service unavailable",
        detail,
        instance=instance,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def _database(request: Request, exc: Exception) -> JSONResponse:
    if not is_unavailable(exc):
        return await _unexpected(request, exc)
    log.warning("api.database_unavailable", path=request.url.path, error=describe(exc))
    return unavailable(
        "The database cannot be reached right now. Retry after Retry-After seconds, with the "
        "same Idempotency-Key, so that a request that did take effect is not made twice.",
        slug="database-unavailable",
        instance=request.url.path,
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("api.unhandled_error", path=request.url.path)
    return problem(500, "internal", "Internal error", "Something went wrong on our side.")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(errors.BulletinError, _bulletin)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(SQLAlchemyError, _database)
    app.add_exception_handler(OSError, _database)
    app.add_exception_handler(Exception, _unexpected)


class FieldProblem(BaseModel):
    loc: list[str | int]
    message: str
    type: str | None


class Problem(BaseModel):
    """An RFC 9457 problem details object."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldProblem] | None = None


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI description of the error answers a route can give."""
    described = {
        400: "The body cannot be read as what this route takes",
        401: "No API key, or one that is not valid",
        403: "The key's scope does not allow this",
        404: "Not found in this organization",
        409: "The resource's state does not allow this, or a twin request is in progress",
        413: "The request body is longer than the server's limit (BULLETIN_MAX_BODY_BYTES)",
        422: "Invalid request",
        503: "The database cannot be reached right now, or the service is starting; "
        "retry after Retry-After seconds",
    }
    schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    schema["properties"]["errors"] = {
        "anyOf": [
            {"type": "array", "items": FieldProblem.model_json_schema()},
            {"type": "null"},
        ]
    }
    return {
        status: {"description": described[status], "content": {MEDIA_TYPE: {"schema": schema}}}
        for status in statuses
    }
