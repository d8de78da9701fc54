"""The preference centre: a page where a person chooses how an organization reaches them.

Every message can carry the person's preference link (see :mod:`bulletin.recipients.links`).
The page needs no account: the signed link is the credential. ``GET /p/<token>`` shows the current
choices (channels, topics, quiet hours and their time zone); ``POST /p/<token>`` saves them
through the recipients service, with the same validation as the API's
``PUT /v1/recipients/{id}/preferences``, and shows a confirmation. The form carries a field
derived from the link under another purpose and is refused from another site's page (its
``Origin``), so a page elsewhere cannot submit it for the person. The page lists only the topics
of messages the person was sent, and those they chose before (never the organization's other
topics), and the form can change only those.

``/p/<token>/unsubscribe`` is the one-click unsubscribe of emails (RFC 8058): a GET only shows a
button, because mail scanners open links on their own; a POST (the button, or the mail
client's one-click request) unsubscribes.

A link that is malformed, forged, edited, cut short, or names a person no longer reachable
gets the same 404 page: nothing tells whether a person exists. Tokens are never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

import structlog
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.api.deps import ServicesDep
from bulletin.crypto import signing_key
from bulletin.deliveries import repository as deliveries
from bulletin.orgs import repository as orgs
from bulletin.recipients import schemas, service
from bulletin.recipients.addresses import CHANNELS, address_of, explicit_choice
from bulletin.recipients.links import form_check, token_is_valid, token_recipient_id
from bulletin.recipients.models import Recipient
from bulletin.recipients.validation import check_category, time_zones
from bulletin.web.rendering import render

log = structlog.get_logger("bulletin.web.preferences")

router = APIRouter(prefix="/p", tags=["preferences"], include_in_schema=False)

_LABELS = {"email": "Email", "sms": "SMS (text messages)", "whatsapp": "WhatsApp"}
_FIELD_NAMES = {
    "channels": "Channels",
    "categories": "Topics",
    "quiet_hours": "Quiet hours",
    "start": "from",
    "end": "until",
    "timezone": "Time zone",
}
_NOT_VALID = "This link is not valid. It may have been cut short or changed when it was copied."
_FORM_REFUSED = (
    "This form could not be accepted: it did not come from this page. "
    "Open your link again and resubmit your choices."
)

CategoryQuery = Annotated[str | None, Query(max_length=64)]


async def _signing_key(request: Request, services: ServicesDep) -> bytes:
    # Read once per app: the key never changes once made, and reading it is a write
    # transaction (it is made on first use), which a page view should not cost.
    key: bytes | None = getattr(request.app.state, "link_signing_key", None)
    if key is None:
        key = await signing_key(services.db)
        request.app.state.link_signing_key = key
    return key


#: This installation's link-signing key.
SigningKey = Annotated[bytes, Depends(_signing_key)]


@dataclass(frozen=True, slots=True)
class Choice:
    """One checkbox of the form."""

    name: str
    label: str
    on: bool


@dataclass(frozen=True, slots=True)
class FormView:
    """What the form shows: the stored preferences, or what was just submitted."""

    channels: list[Choice]
    categories: list[Choice]
    quiet_start: str
    quiet_end: str
    timezone: str


async def _open(session: AsyncSession, key: bytes, token: str) -> Recipient | None:
    """The person a valid link names, or ``None``, the same way whatever is wrong with it."""
    recipient_id = token_recipient_id(token)
    recipient = (
        await service.reachable_by_id(session, recipient_id) if recipient_id is not None else None
    )
    if not token_is_valid(key, token, recipient.org_id if recipient is not None else None):
        log.info("preferences.link_refused", malformed=recipient_id is None)
        return None
    return recipient


def refused_page(reason: str = _NOT_VALID, status: int = 404) -> HTMLResponse:
    """The page for a link or form that is refused, saying why in words for the person."""
    return render("preferences/refused.html", status, title="Link not valid", reason=reason)


def _reachable_channels(recipient: Recipient) -> list[str]:
    """Channels the person has an address for; only those are offered."""
    return [channel for channel in CHANNELS if address_of(recipient, channel)]


async def _categories(session: AsyncSession, recipient: Recipient) -> list[str]:
    """The topics the page offers: those of messages this person was sent, and those they
    have a choice stored for; never the organization's other topics, which the link's holder
    has no business learning."""
    sent = await deliveries.categories_sent_to(session, recipient.org_id, recipient.id)
    return sorted({*sent, *recipient.categories})


def _stored_view(recipient: Recipient, categories: Iterable[str]) -> FormView:
    effective = service.effective_preferences(recipient)
    return FormView(
        channels=[
            Choice(c, _LABELS[c], effective.channels[c]) for c in _reachable_channels(recipient)
        ],
        categories=[Choice(c, c, recipient.categories.get(c) is not False) for c in categories],
        quiet_start=recipient.quiet_start or "",
        quiet_end=recipient.quiet_end or "",
        timezone=recipient.timezone or "",
    )


async def _page(
    session: AsyncSession,
    services: ServicesDep,
    recipient: Recipient,
    key: bytes,
    token: str,
    view: FormView | None = None,
    *,
    saved: bool = False,
    errors: list[str] | None = None,
    status: int = 200,
) -> HTMLResponse:
    org = await orgs.get_organization(session, recipient.org_id)
    if view is None:
        view = _stored_view(recipient, await _categories(session, recipient))
    return render(
        "preferences/form.html",
        status,
        title="Your message preferences",
        sender=org.name if org is not None else "the sender",
        name=recipient.name,
        form=view,
        check=form_check(key, token),
        zones=time_zones(),
        default_timezone=services.settings.default_timezone,
        saved=saved,
        errors=errors or [],
    )


@router.get("/{token}", response_class=HTMLResponse)
async def show(token: str, services: ServicesDep, key: SigningKey) -> HTMLResponse:
    """The person's current preferences, in a form."""
    async with services.db.read() as session:
        recipient = await _open(session, key, token)
        if recipient is None:
            return refused_page()
        return await _page(session, services, recipient, key, token)


def _origins(request: Request, base_url: str) -> set[str]:
    """Origins a form of this site is posted from: the configured one and the one asked, and
    ``null``: the page's ``Referrer-Policy: no-referrer`` (its address is a credential) makes
    browsers send ``Origin: null`` on its own form. The form's check field, which only this
    page can know, is what refuses a form from elsewhere; a named other site is refused too."""
    configured = urlsplit(base_url)
    return {
        f"{configured.scheme}://{configured.netloc}",
        f"{request.url.scheme}://{request.url.netloc}",
        "null",
    }


def _texts(values: list[Any]) -> list[str] | None:
    """Form values that are all text (a file where text belongs makes the form invalid)."""
    texts = [v for v in values if isinstance(v, str)]
    return texts if len(texts) == len(values) else None


def _error_lines(exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False):
        where = " ".join(_FIELD_NAMES.get(str(part), str(part)) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "is not something you can choose here"
        lines.append(f"{where}: {message}" if where else message)
    return lines


def _may_choose(category: str, offered: set[str]) -> bool:
    """Whether the form may set ``category``: one the page offers, or one so malformed that
    validation will refuse it with a message saying why."""
    if category in offered:
        return True
    try:
        check_category(category)
    except ValueError:
        return True
    return False


def _submitted(
    recipient: Recipient, form: dict[str, list[str]], topics: Iterable[str]
) -> tuple[dict[str, Any], FormView]:
    """The preferences the form asks for, as the API's body, and the form as it was sent.

    Channels and topics the form did not offer keep their stored choice. An unknown channel or
    a malformed topic is passed on, for validation to refuse; a well-formed topic the page
    does not offer (``topics``: not sent to this person, no stored choice) is ignored, so that
    a link cannot be used to store topics the organization never sent that person.
    """
    offered = _reachable_channels(recipient)
    ticked = form.get("channel", [])
    channels: dict[str, bool | None] = {
        c: explicit_choice(recipient, c) for c in CHANNELS if c not in offered
    }
    channels.update({c: c in ticked for c in offered})
    channels.update({c: True for c in ticked if c not in offered})
    offered_topics = set(topics)
    listed = [c for c in form.get("category", []) if _may_choose(c, offered_topics)]
    receive = [c for c in form.get("receive", []) if _may_choose(c, offered_topics)]
    categories = {
        **recipient.categories,
        **{c: c in receive for c in listed},
        **{c: True for c in receive if c not in listed},
    }
    start = (form.get("quiet_start") or [""])[0].strip()
    end = (form.get("quiet_end") or [""])[0].strip()
    timezone = (form.get("timezone") or [""])[0].strip()
    body: dict[str, Any] = {
        "channels": channels,
        "categories": categories,
        "quiet_hours": {"start": start, "end": end} if start or end else None,
        "timezone": timezone or None,
    }
    view = FormView(
        channels=[Choice(c, _LABELS[c], c in ticked) for c in offered],
        categories=[Choice(c, c, c in receive) for c in listed],
        quiet_start=start,
        quiet_end=end,
        timezone=timezone or (recipient.timezone or ""),
    )
    return body, view


@router.post("/{token}", response_class=HTMLResponse)
async def save(
    token: str, request: Request, services: ServicesDep, key: SigningKey
) -> HTMLResponse:
    """Save the preferences the form sends, or show what is wrong and change nothing."""
    raw = await request.form()
    form: dict[str, list[str]] = {}
    for name in ("check", "channel", "category", "receive", "quiet_start", "quiet_end", "timezone"):
        values = _texts(raw.getlist(name))
        if values is None:
            return refused_page(_FORM_REFUSED, 400)
        form[name] = values
    async with services.db.transaction() as session:
        recipient = await _open(session, key, token)
        if recipient is None:
            return refused_page()
        origin = request.headers.get("origin")
        check = (form["check"] or [""])[0]
        if (origin is not None and origin not in _origins(request, services.settings.base_url)) or (
            not hmac.compare_digest(check, form_check(key, token))
        ):
            log.info("preferences.form_refused", recipient_id=recipient.id, cross_site=origin)
            return refused_page(_FORM_REFUSED, 403)
        body, view = _submitted(recipient, form, await _categories(session, recipient))
        try:
            choices = schemas.OwnPreferencesIn.model_validate(body)
        except ValidationError as exc:
            log.info("preferences.invalid", recipient_id=recipient.id, errors=exc.error_count())
            return await _page(
                session, services, recipient, key, token, view, errors=_error_lines(exc), status=422
            )
        await service.set_own_preferences(session, recipient, choices)
        log.info("preferences.saved", recipient_id=recipient.id, org_id=str(recipient.org_id))
        return await _page(session, services, recipient, key, token, saved=True)


def _link(services: ServicesDep, token: str) -> str:
    return f"{services.settings.base_url.rstrip('/')}/p/{token}"


def _what(category: str | None) -> str:
    return f"messages about {category}" if category else "email from this sender"


def _checked_category(category: str | None) -> tuple[bool, str | None]:
    if category is None:
        return True, None
    try:
        return True, check_category(category)
    except ValueError:
        return False, None


def unsubscribe_page(
    *, done: bool, category: str | None, preferences_url: str | None
) -> HTMLResponse:
    """The page that asks to confirm an unsubscribe (``done`` false), or confirms it."""
    return render(
        "preferences/unsubscribe.html",
        title="Unsubscribed" if done else "Unsubscribe",
        done=done,
        what=_what(category),
        preferences_url=preferences_url,
    )


@router.get("/{token}/unsubscribe", response_class=HTMLResponse)
async def confirm_unsubscribe(
    token: str, services: ServicesDep, key: SigningKey, category: CategoryQuery = None
) -> HTMLResponse:
    """A button to unsubscribe; opening the link alone changes nothing."""
    valid, category = _checked_category(category)
    async with services.db.read() as session:
        if not valid or await _open(session, key, token) is None:
            return refused_page()
    return unsubscribe_page(done=False, category=category, preferences_url=_link(services, token))


@router.post("/{token}/unsubscribe", response_class=HTMLResponse)
async def unsubscribe(
    token: str, services: ServicesDep, key: SigningKey, category: CategoryQuery = None
) -> HTMLResponse:
    """Unsubscribe: the page's button, or a mail client's RFC 8058 one-click POST."""
    valid, category = _checked_category(category)
    async with services.db.transaction() as session:
        recipient = await _open(session, key, token) if valid else None
        if recipient is None:
            return refused_page()
        await service.unsubscribe(session, recipient, category)
        log.info(
            "preferences.unsubscribed",
            recipient_id=recipient.id,
            org_id=str(recipient.org_id),
            category=category,
        )
    return unsubscribe_page(done=True, category=category, preferences_url=_link(services, token))
