"""Webhooks: provider receipts and people's replies, each verified by its account's signature.

Each provider account has its own URL, named by its account key (an organization's id for the
organization's own account, ``default`` for the installation-wide one from the environment;
see :func:`bulletin.channels.accounts.webhook_path`):

* ``/v1/webhooks/whatsapp/{account}``: Meta's verification handshake (GET, that account's
  verify token) and notifications (POST, ``X-Hub-Signature-256`` with its app secret).
* ``/v1/webhooks/twilio/{account}``: status callbacks and inbound SMS (``X-Twilio-Signature``
  with its auth token, or with its webhook signing key when
  ``X-Twilio-Webhooks-Signature-Settings`` says a SharedKey signed it). Bulletin gives Twilio
  this URL as each message's ``StatusCallback``.

The URLs without an account, ``/v1/webhooks/whatsapp`` and ``/v1/webhooks/twilio``, are kept
for the ``default`` account only, as they were before accounts had URLs of their own; an
organization's own account is never reached through them.

A post is attributed to the URL's account only: it must verify with that account's secret,
it speaks for the organizations that account serves, and the payload's own account fields
(``metadata.phone_number_id``, ``AccountSid``) must agree with it (a WhatsApp change about
another number is skipped; a Twilio post naming another ``AccountSid`` is refused). A post to
an account that does not exist, or whose signature does not verify, gets the same 401 and
changes nothing, so the answer does not tell which accounts exist. A verified post whose body
is not what the provider sends is a 400. A verified one is answered 200 once it is applied and
committed, so the provider retries anything that was not; posted again, it changes nothing
more (receipts only move forward, people's messages are recognised by the provider's id).
Bodies longer than ``BULLETIN_MAX_BODY_BYTES`` are refused (413) before they are read.
"""

from __future__ import annotations

import hmac
import json
import re
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse

from bulletin.api.deps import ServicesDep
from bulletin.api.problems import problem, responses
from bulletin.channels import twilio, whatsapp
from bulletin.channels.accounts import DEFAULT_ACCOUNT
from bulletin.channels.base import Inbound, Receipt
from bulletin.channels.configs import TwilioConfig, WhatsAppCloudConfig
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


_ACCOUNT_PARAMETER = {
    "description": "The account key: the organization's id for its own account, or "
    "'default' for the installation-wide one."
}


def _not_ours(provider: str, header: str) -> Response:
    # The same answer for an account that does not exist and for a wrong signature.
    return _unauthorized(f"{header} is missing or does not verify for this {provider} account.")


async def _whatsapp_verify(
    services: ServicesDep, key: str, mode: str | None, token: str | None, challenge: str | None
) -> Response:
    async with services.db.read() as session:
        account = await service.find_account(session, services.settings, "whatsapp", key)
    expected = (
        account.config.verify_token
        if account is not None and isinstance(account.config, WhatsAppCloudConfig)
        else None
    )
    if (
        mode == "subscribe"
        and token is not None
        and challenge is not None
        and expected is not None
        and hmac.compare_digest(token.encode(), expected.get_secret_value().encode())
    ):
        return PlainTextResponse(challenge)
    return problem(403, "forbidden", "Forbidden", "The verify token does not match this account's.")


@router.get("/whatsapp", response_class=PlainTextResponse, responses=responses(403, 422, 503))
async def whatsapp_verify(
    services: ServicesDep,
    mode: Annotated[str | None, Query(alias="hub.mode")] = None,
    token: Annotated[str | None, Query(alias="hub.verify_token")] = None,
    challenge: Annotated[str | None, Query(alias="hub.challenge", max_length=200)] = None,
) -> Response:
    """Meta's subscription handshake for the ``default`` account (kept for URLs given to Meta
    before accounts had their own)."""
    return await _whatsapp_verify(services, DEFAULT_ACCOUNT, mode, token, challenge)


@router.get(
    "/whatsapp/{account}", response_class=PlainTextResponse, responses=responses(403, 422, 503)
)
async def whatsapp_account_verify(
    services: ServicesDep,
    account: Annotated[str, Path(**_ACCOUNT_PARAMETER)],
    mode: Annotated[str | None, Query(alias="hub.mode")] = None,
    token: Annotated[str | None, Query(alias="hub.verify_token")] = None,
    challenge: Annotated[str | None, Query(alias="hub.challenge", max_length=200)] = None,
) -> Response:
    """Meta's subscription handshake: echo the challenge when the verify token is the
    account's."""
    return await _whatsapp_verify(services, account, mode, token, challenge)


async def _whatsapp_notify(request: Request, services: ServicesDep, key: str) -> Response:
    raw = await request.body()
    signature = request.headers.get(whatsapp.SIGNATURE_HEADER)
    async with services.db.read() as session:
        account = await service.find_account(session, services.settings, "whatsapp", key)
    config = account.config if account is not None else None
    secret = config.app_secret if isinstance(config, WhatsAppCloudConfig) else None
    if (
        account is None
        or not isinstance(config, WhatsAppCloudConfig)
        or secret is None
        or not whatsapp.verify_signature(secret.get_secret_value(), raw, signature)
    ):
        log.warning(
            "webhooks.whatsapp_bad_signature",
            account_known=account is not None,
            present=signature is not None,
        )
        return _not_ours("WhatsApp", whatsapp.SIGNATURE_HEADER)
    try:
        parsed = whatsapp.parse_webhook(json.loads(raw), config.phone_number_id)
    except (ValueError, RecursionError) as exc:
        # RecursionError: arrays nested deeper than the parser goes are not a notification.
        return problem(400, "bad-request", "Bad Request", f"Not a WhatsApp notification: {exc}")
    async with services.db.transaction() as session:
        done = await service.apply(session, account, parsed.receipts, parsed.inbound)
    log.info(
        "webhooks.whatsapp",
        account=account.key,
        moved=done.applied.moved,
        unchanged=done.applied.unchanged,
        unmatched=done.applied.unmatched,
        foreign=parsed.foreign,
        skipped=parsed.skipped,
        inbound=done.inbound_new,
        inbound_replayed=done.inbound_replayed,
        preferences_changed=done.preferences_changed,
    )
    return Response(status_code=200)


_WHATSAPP_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Applied"},
    **responses(400, 401, 413, 503),
}


@router.post(
    "/whatsapp",
    response_class=Response,
    responses=_WHATSAPP_RESPONSES,
    openapi_extra=_WHATSAPP_BODY,
)
async def whatsapp_notify(request: Request, services: ServicesDep) -> Response:
    """Notifications for the ``default`` account (kept for URLs given to Meta before accounts
    had their own); an organization's own account posts to ``/v1/webhooks/whatsapp/{id}``."""
    return await _whatsapp_notify(request, services, DEFAULT_ACCOUNT)


@router.post(
    "/whatsapp/{account}",
    response_class=Response,
    responses=_WHATSAPP_RESPONSES,
    openapi_extra=_WHATSAPP_BODY,
)
async def whatsapp_account_notify(
    request: Request, services: ServicesDep, account: Annotated[str, Path(**_ACCOUNT_PARAMETER)]
) -> Response:
    """Statuses (sent, delivered, read, failed) and inbound messages of one account."""
    return await _whatsapp_notify(request, services, account)


def _public_url(request: Request, base_url: str) -> str:
    # Twilio signs the URL it called, which is the public one, not what the proxy forwards.
    url = base_url + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    return url


async def _twilio_callback(request: Request, services: ServicesDep, key: str) -> Response:
    form = await request.form()
    params = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
    fields = dict(params)
    async with services.db.read() as session:
        account = await service.find_account(session, services.settings, "sms", key)
    config = account.config if account is not None else None
    url = _public_url(request, services.settings.base_url)
    signature = request.headers.get(twilio.SIGNATURE_HEADER)
    settings = request.headers.get(twilio.SIGNATURE_SETTINGS_HEADER)
    if (
        account is None
        or not isinstance(config, TwilioConfig)
        or not twilio.verify_webhook(config, url, params, signature, settings)
        # Signed with this account's secret, yet about another account: not this account's.
        or fields.get("AccountSid") != config.account_sid
    ):
        scheme = twilio.signature_scheme(settings)
        log.warning(
            "webhooks.twilio_bad_signature",
            account_known=account is not None,
            present=signature is not None,
            shared_key=scheme.shared_key,
            algorithm=scheme.algorithm or "unsupported",
            # A SharedKey signature with no key to check it: the operator's to fix.
            signing_key_set=isinstance(config, TwilioConfig)
            and config.webhook_signing_key is not None,
        )
        return _not_ours("Twilio", twilio.SIGNATURE_HEADER)
    delivery = request.query_params.get("delivery")
    # ASCII digits only: str.isdigit() also takes '²' and other scripts' digits.
    known = delivery is not None and _DELIVERY_ID.fullmatch(delivery) is not None
    delivery_id = int(delivery) if known and delivery is not None else None
    receipt = twilio.parse_status(fields, delivery_id)
    inbound = twilio.parse_inbound(fields)
    found: list[Receipt] = [receipt] if receipt is not None else []
    messages: list[Inbound] = [inbound] if inbound is not None else []
    async with services.db.transaction() as session:
        done = await service.apply(session, account, found, messages)
    log.info(
        "webhooks.twilio",
        account=account.key,
        moved=done.applied.moved,
        unchanged=done.applied.unchanged,
        unmatched=done.applied.unmatched,
        inbound=done.inbound_new,
        inbound_replayed=done.inbound_replayed,
        preferences_changed=done.preferences_changed,
    )
    return Response(twilio.inbound_reply(None), media_type="application/xml")


_TWILIO_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Applied; an empty TwiML answer", "content": {"application/xml": {}}},
    **responses(400, 401, 413, 503),
}


@router.post(
    "/twilio", response_class=Response, responses=_TWILIO_RESPONSES, openapi_extra=_TWILIO_BODY
)
async def twilio_callback(request: Request, services: ServicesDep) -> Response:
    """Callbacks for the ``default`` account (kept for status callbacks and inbound URLs given
    before accounts had their own); an organization's own account posts to
    ``/v1/webhooks/twilio/{id}``."""
    return await _twilio_callback(request, services, DEFAULT_ACCOUNT)


@router.post(
    "/twilio/{account}",
    response_class=Response,
    responses=_TWILIO_RESPONSES,
    openapi_extra=_TWILIO_BODY,
)
async def twilio_account_callback(
    request: Request, services: ServicesDep, account: Annotated[str, Path(**_ACCOUNT_PARAMETER)]
) -> Response:
    """Status callbacks of one account's SMS (``?delivery=`` names the delivery) and inbound
    SMS to its numbers."""
    return await _twilio_callback(request, services, account)
