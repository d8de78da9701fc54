"""Webhooks: provider receipts and people's replies, each verified by its signature.

* ``/v1/webhooks/whatsapp``: Meta's verification handshake (GET) and notifications (POST,
  ``X-Hub-Signature-256``).
* ``/v1/webhooks/twilio``: status callbacks and inbound SMS (``X-Twilio-Signature``).

A request whose signature does not verify with a configured account's secret is answered 401
and changes nothing; so is a verified one whose body is not what the provider sends (400). A
verified one is answered 200 once it is applied and committed, so the provider retries anything
that was not; posted again, it changes nothing more. Bodies longer than
``BULLETIN_MAX_BODY_BYTES`` are refused (413) before they are read.
"""

from __future__ import annotations

import json
import re
from typing import Annotated

import structlog
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse

from bulletin.api.deps import ServicesDep
from bulletin.api.problems import problem, responses
from bulletin.channels import twilio, whatsapp
from bulletin.channels.configs import TwilioConfig, WhatsAppCloudConfig
from bulletin.deliveries import receipts
from bulletin.webhooks import service

log = structlog.get_logger("bulletin.webhooks")
router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

#: The ``delivery`` parameter Bulletin puts in its status callback URLs.
_DELIVERY_ID = re.compile(r"[0-9]{1,18}")


def _unauthorized(detail: str) -> Response:
    return problem(401, "unauthenticated", "Unauthenticated", detail)


# The routes read their bodies themselves (a signature covers the exact bytes), so what they
# take is declared here for the OpenAPI document rather than by a model.
_WHATSAPP_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "A whatsapp_business_account notification, as Meta sends it.",
                }
            }
        },
    }
}
_TWILIO_BODY = {
    "parameters": [
        {
            "name": "delivery",
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": "The delivery a status callback is about, as Bulletin gave it.",
        }
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object", "additionalProperties": {"type": "string"}}
            }
        },
    },
}


@router.get("/whatsapp", response_class=PlainTextResponse, responses=responses(403, 422, 503))
async def whatsapp_verify(
    svc: ServicesDep,
    mode: Annotated[str | None, Query(alias="hub.mode")] = None,
    token: Annotated[str | None, Query(alias="hub.verify_token")] = None,
    challenge: Annotated[str | None, Query(alias="hub.challenge", max_length=200)] = None,
) -> Response:
    """Meta's subscription handshake: echo the challenge when the verify token is ours."""
    async with svc.db.read() as session:
        accounts = await service.whatsapp_accounts(session, svc.settings)
    tokens = [
        a.config.verify_token.get_secret_value()
        for a in accounts
        if isinstance(a.config, WhatsAppCloudConfig) and a.config.verify_token is not None
    ]
    if mode == "subscribe" and token is not None and challenge is not None and token in tokens:
        return PlainTextResponse(challenge)
    return problem(
        403, "forbidden", "Forbidden", "The verify token does not match a configured account."
    )


@router.post(
    "/whatsapp",
    response_class=Response,
    responses={200: {"description": "Applied"}, **responses(400, 401, 413, 503)},
    openapi_extra=_WHATSAPP_BODY,
)
async def whatsapp_notify(request: Request, svc: ServicesDep) -> Response:
    """Statuses (sent, delivered, read, failed) and inbound messages from the Cloud API."""
    raw = await request.body()
    signature = request.headers.get("X-Hub-Signature-256")
    async with svc.db.read() as session:
        accounts = await service.whatsapp_accounts(session, svc.settings)
    secrets = {
        a.config.app_secret.get_secret_value()
        for a in accounts
        if isinstance(a.config, WhatsAppCloudConfig) and a.config.app_secret is not None
    }
    if not any(whatsapp.verify_signature(s, raw, signature) for s in secrets):
        log.warning("webhooks.whatsapp_bad_signature", present=signature is not None)
        return _unauthorized("X-Hub-Signature-256 is missing or does not match.")
    try:
        parsed = whatsapp.parse_webhook(json.loads(raw))
    except (ValueError, RecursionError) as exc:
        # RecursionError: arrays nested deeper than the parser goes are not a notification.
        return problem(400, "bad-request", "Bad Request", f"Not a WhatsApp notification: {exc}")
    serving = service.whatsapp_by_number(accounts, parsed.phone_number_ids)
    orgs = sorted({org for a in serving for org in a.orgs})
    async with svc.db.transaction() as session:
        applied = await receipts.apply_receipts(session, "whatsapp_cloud", parsed.receipts, orgs)
        changed = await receipts.apply_inbound(session, parsed.inbound, orgs)
    log.info(
        "webhooks.whatsapp",
        moved=applied.moved,
        unchanged=applied.unchanged,
        unmatched=applied.unmatched,
        inbound=len(parsed.inbound),
        preferences_changed=changed,
    )
    return Response(status_code=200)


def _public_url(request: Request, base_url: str) -> str:
    # Twilio signs the URL it called, which is the public one, not what the proxy forwards.
    url = base_url + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    return url


@router.post(
    "/twilio",
    response_class=Response,
    responses={
        200: {"description": "Applied; an empty TwiML answer", "content": {"application/xml": {}}},
        **responses(400, 401, 413, 503),
    },
    openapi_extra=_TWILIO_BODY,
)
async def twilio_callback(request: Request, svc: ServicesDep) -> Response:
    """Status callbacks of sent SMS (``?delivery=`` names the delivery) and inbound SMS."""
    form = await request.form()
    params = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
    fields = dict(params)
    async with svc.db.read() as session:
        accounts = await service.twilio_accounts(session, svc.settings)
    serving = service.twilio_by_sid(accounts, fields.get("AccountSid", ""))
    url = _public_url(request, svc.settings.base_url)
    signature = request.headers.get("X-Twilio-Signature")
    verified = [
        a
        for a in serving
        if isinstance(a.config, TwilioConfig)
        and a.config.auth_token is not None
        and twilio.verify_signature(a.config.auth_token.get_secret_value(), url, params, signature)
    ]
    if not verified:
        log.warning("webhooks.twilio_bad_signature", present=signature is not None)
        return _unauthorized("X-Twilio-Signature is missing or does not match.")
    orgs = sorted({org for a in verified for org in a.orgs})
    delivery = request.query_params.get("delivery")
    # ASCII digits only: str.isdigit() also takes '²' and other scripts' digits.
    known = delivery is not None and _DELIVERY_ID.fullmatch(delivery) is not None
    delivery_id = int(delivery) if known and delivery is not None else None
    receipt = twilio.parse_status(fields, delivery_id)
    inbound = twilio.parse_inbound(fields)
    async with svc.db.transaction() as session:
        if receipt is not None:
            await receipts.apply_receipts(session, "twilio", [receipt], orgs)
        if inbound is not None:
            await receipts.apply_inbound(session, [inbound], orgs)
    return Response(twilio.inbound_reply(None), media_type="application/xml")
