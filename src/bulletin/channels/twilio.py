"""SMS through Twilio's Programmable Messaging REST API (``2010-04-01``), and its webhooks.

Sending is one form-encoded ``POST .../Accounts/{AccountSid}/Messages.json`` per message. Twilio
has no idempotency key for it, so :class:`TwilioProvider` does not deduplicate: a send whose
answer was lost is reported in doubt and is never retried blindly.

Twilio's errors are mapped here, at the boundary, onto Bulletin's three outcomes:

* rate limited (HTTP 429, code 20429): transient, and the whole account slows down;
* a recipient Twilio will never reach (21211, 21408, 21606, 21612, 21614) or one who replied
  STOP (21610, which also suppresses the address): permanent;
* bad credentials or an unknown account (20003, 20404): transient for a minute, logged loudly,
  because failing every message for good over a typo in the settings would be worse;
* any other 4xx: permanent; any 5xx: transient;
* a connection that could not be made: transient; a connection lost after the request went
  out, or a success whose body cannot be read: in doubt.

Webhooks (status callbacks and inbound messages) are form posts signed with
``X-Twilio-Signature``; :func:`verify_webhook`, :func:`parse_status`, :func:`parse_inbound`
and :func:`inbound_reply` are what an endpoint needs to serve them. A post is signed with the
account's auth token (HMAC-SHA1), or, when a Webhook Setting of the account covers its URL,
with that setting's SharedKey and algorithm, named in ``X-Twilio-Webhooks-Signature-Settings``.
Twilio signs the URL sometimes with its port written out and sometimes without, so each form
of the URL is tried (:func:`signed_urls`).

It is over 400 lines because it holds both halves of one provider, sending and the signed
webhooks, which share the account's settings, its error codes and its message ids; split in
two, a reader would follow one protocol across two modules.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

import aiohttp
import structlog
from structlog.typing import FilteringBoundLogger

from bulletin.channels.base import (
    Accepted,
    Inbound,
    OutboundMessage,
    Provider,
    Receipt,
    ReportedState,
)
from bulletin.channels.configs import TwilioConfig
from bulletin.channels.http import ACCOUNT_RETRY_SECONDS, exchange
from bulletin.channels.sms import sms_text
from bulletin.channels.text import fit
from bulletin.errors import (
    ChannelError,
    InDoubtSendError,
    PermanentSendError,
    TransientSendError,
)

log = structlog.get_logger("bulletin.channels.twilio")

API_VERSION = "2010-04-01"

#: Twilio's "the recipient has opted out (replied STOP)".
UNSUBSCRIBED = 21610
#: The longest ``Body`` Twilio takes, in UTF-16 units (21617); longer text is cut, keeping the
#: preference link.
BODY_LIMIT = 1600
#: Codes meaning this address cannot be reached by this sender, now or later.
_UNREACHABLE_ADDRESS = frozenset({21211, 21408, 21606, 21612, 21614, UNSUBSCRIBED})
_RATE_LIMITED = 20429
#: Credentials or account problems that only an operator can fix.
_ACCOUNT_PROBLEMS = frozenset({20003, 20404})
_DEFAULT_RATE_LIMIT_PAUSE = 1.0

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")

_RECEIPT_STATES = {
    "sent": ReportedState.SENT,
    "delivered": ReportedState.DELIVERED,
    "read": ReportedState.READ,
    "undelivered": ReportedState.FAILED,
    "failed": ReportedState.FAILED,
}

#: Short explanations of the delivery error codes Twilio reports most often.
_DELIVERY_ERRORS = {
    "21610": "the recipient has unsubscribed (replied STOP)",
    "21211": "invalid 'To' phone number",
    "21408": "sending to this region is not enabled",
    "21612": "Twilio cannot route to this number",
    "21614": "the number is not a mobile number",
    "30001": "queue overflow",
    "30002": "account suspended",
    "30003": "unreachable destination handset",
    "30004": "message blocked",
    "30005": "unknown destination handset",
    "30006": "landline or unreachable carrier",
    "30007": "message filtered by the carrier",
    "30008": "unknown error",
    "30034": "message from an unregistered number (US A2P 10DLC)",
}


class TwilioProvider(Provider):
    """Sends SMS through one Twilio account, from one number or one Messaging Service.

    The aiohttp session belongs to the caller, who closes it. ``status_callback_url``, when
    given, is sent as each message's ``StatusCallback`` with ``delivery=<delivery id>`` added
    to its query, so that receipts name the delivery they are about; it is the webhook URL of
    this account (``account_key``, see :func:`bulletin.channels.accounts.webhook_path`), so
    that only this account's auth token verifies them.
    """

    name = "twilio"
    deduplicates = False

    def __init__(
        self,
        config: TwilioConfig,
        session: aiohttp.ClientSession,
        *,
        account_key: str | None = None,
        status_callback_url: str | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        if config.auth_token is None:
            raise ValueError("a Twilio configuration needs an auth_token to send")
        self._session = session
        self.account_key = account_key
        self._status_callback_url = status_callback_url
        self._sender = (
            ("From", config.from_number)
            if config.from_number is not None
            else ("MessagingServiceSid", str(config.messaging_service_sid))
        )
        self._account_sid = config.account_sid
        self._url = (
            f"{config.base_url_str()}/{API_VERSION}/Accounts/{config.account_sid}/Messages.json"
        )
        credentials = f"{config.account_sid}:{config.auth_token.get_secret_value()}".encode()
        self._headers = {
            "Accept": "application/json",
            "Authorization": "Basic " + base64.b64encode(credentials).decode("ascii"),
        }
        # No total limit: the engine bounds the whole send. Only making the connection is
        # bounded here, because a failure to connect is known not to have sent anything.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout)
        self.account = f"twilio:{config.account_sid}:{self._sender[1]}"
        self.rate_per_second = config.rate_per_second

    def _form(self, message: OutboundMessage) -> dict[str, str]:
        fields = {
            "To": message.address,
            self._sender[0]: self._sender[1],
            "Body": fit(sms_text(message.title, message.body), BODY_LIMIT, message.preferences_url),
        }
        if self._status_callback_url is not None:
            fields["StatusCallback"] = _with_delivery_id(
                self._status_callback_url, message.delivery_id
            )
        return fields

    async def send(self, message: OutboundMessage) -> Accepted:
        """Create the Message resource; its sid (``SM...``/``MM...``) is the provider id."""
        bound = log.bind(delivery_id=message.delivery_id, account_sid=self._account_sid)
        answer = await exchange(
            self._session,
            self._url,
            provider="Twilio",
            bound=bound,
            data=self._form(message),
            headers=self._headers,
            timeout=self._timeout,
        )
        status, retry_after, raw = answer.status, answer.retry_after, answer.body
        if answer.error is not None or status is None or raw is None:
            if status is not None and not 200 <= status < 300:
                # The status line already said no; only the explanation was lost.
                raise self._refusal(bound, status, retry_after, _TwilioError(None, None))
            bound.warning("twilio.in_doubt", error=repr(answer.error), status=status)
            raise InDoubtSendError(
                "the connection to Twilio failed after the request was sent"
            ) from answer.error

        if 200 <= status < 300:
            sid = _message_sid(raw)
            if sid is None:
                bound.warning("twilio.unreadable_success", status=status, body=raw[:200])
                raise InDoubtSendError(f"Twilio answered {status} with no readable message sid")
            return Accepted(sid)
        raise self._refusal(bound, status, retry_after, _TwilioError.parse(raw))

    def _refusal(
        self,
        bound: FilteringBoundLogger,
        status: int,
        retry_after: float | None,
        error: _TwilioError,
    ) -> ChannelError:
        code = error.code
        detail = f"Twilio answered {status}" + (f", {error}" if code or error.message else "")
        if status == 429 or code == _RATE_LIMITED:
            pause = retry_after if retry_after is not None else _DEFAULT_RATE_LIMIT_PAUSE
            bound.warning("twilio.rate_limited", status=status, code=code, retry_after=pause)
            return TransientSendError(detail, retry_after=pause, slow_down=True)
        if code in _UNREACHABLE_ADDRESS:
            return PermanentSendError(detail, suppress_address=code == UNSUBSCRIBED)
        if status in (401, 404) or code in _ACCOUNT_PROBLEMS:
            bound.error(
                "twilio.account_problem",
                status=status,
                code=code,
                message=error.message,
                hint="check the Twilio account SID and auth token",
            )
            return TransientSendError(detail, retry_after=ACCOUNT_RETRY_SECONDS, slow_down=True)
        if 400 <= status < 500:
            return PermanentSendError(detail)
        if status >= 500:
            bound.warning("twilio.server_error", status=status, code=code)
            return TransientSendError(detail, retry_after=retry_after)
        # A redirect or an informational answer: the base URL points somewhere else.
        bound.error("twilio.unexpected_status", status=status, url=self._url)
        return TransientSendError(detail, retry_after=ACCOUNT_RETRY_SECONDS, slow_down=True)


@dataclass(frozen=True, slots=True)
class _TwilioError:
    code: int | None
    message: str | None

    @classmethod
    def parse(cls, raw: bytes) -> _TwilioError:
        try:
            payload = json.loads(raw)
        except ValueError:
            return cls(None, None)
        if not isinstance(payload, dict):
            return cls(None, None)
        code = payload.get("code")
        message = payload.get("message")
        if isinstance(code, str) and code.isdigit():
            code = int(code)
        return cls(
            code if isinstance(code, int) and not isinstance(code, bool) else None,
            message if isinstance(message, str) else None,
        )

    def __str__(self) -> str:
        return f"code {self.code}: {self.message or 'no message'}"


def _message_sid(raw: bytes) -> str | None:
    try:
        payload = json.loads(raw)
    except ValueError:
        return None
    sid = payload.get("sid") if isinstance(payload, dict) else None
    return sid if isinstance(sid, str) and sid else None


def _with_delivery_id(url: str, delivery_id: int) -> str:
    if url.endswith(("?", "&")):
        return f"{url}delivery={delivery_id}"
    return f"{url}{'&' if '?' in url else '?'}delivery={delivery_id}"


def _sorted_pairs(params: Mapping[str, str] | Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
    # Sorting the pairs orders by name, then by value for a name given more than once.
    return sorted(pairs)


#: The header every webhook is signed in.
SIGNATURE_HEADER = "X-Twilio-Signature"
#: Sent when a Webhook Setting signed the post with a SharedKey: ``key=<id>,algorithm=<name>``.
SIGNATURE_SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
HMAC_SHA1 = "HMAC_SHA1"
HMAC_SHA256 = "HMAC_SHA256"
_HASHES: dict[str, Callable[..., Any]] = {HMAC_SHA1: hashlib.sha1, HMAC_SHA256: hashlib.sha256}
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def signature(
    key: str,
    url: str,
    params: Mapping[str, str] | Sequence[tuple[str, str]],
    algorithm: str = HMAC_SHA1,
) -> str:
    """The ``X-Twilio-Signature`` Twilio sends with a form post of ``params`` to ``url``.

    It is base64(HMAC(key, url followed by every parameter's name and value, sorted by name)),
    with SHA-1 and the auth token unless a Webhook Setting chose a SharedKey and an
    ``algorithm``. ``url`` is the full URL Twilio was given, query string included.
    """
    hash_function = _HASHES.get(algorithm.upper())
    if hash_function is None:
        raise ValueError(f"Twilio has no signature algorithm {algorithm!r}")
    data = url + "".join(name + value for name, value in _sorted_pairs(params))
    digest = hmac.new(key.encode(), data.encode(), hash_function).digest()
    return base64.b64encode(digest).decode("ascii")


def _split_port(netloc: str) -> tuple[str, str | None]:
    """``netloc`` without its port, and the port; an IPv6 address keeps its brackets."""
    userinfo, at, hostport = netloc.rpartition("@")
    if hostport.startswith("["):
        end = hostport.find("]")
        host, rest = hostport[: end + 1], hostport[end + 1 :]
        port = rest[1:] if rest.startswith(":") else None
    else:
        host, colon, port_text = hostport.partition(":")
        port = port_text if colon else None
    return userinfo + at + host, port


def signed_urls(url: str) -> list[str]:
    """Every form of ``url`` Twilio may have signed a post to it with.

    Twilio's back end signs the URL sometimes with the scheme's default port written out
    (``:443`` for https, ``:80`` for http, when the URL has none), and sometimes without any
    port at all, even one that is not the default (its requests for TwiML drop it). Twilio's
    own helper libraries accept each of these forms, and so does Bulletin: the key, not the
    URL's spelling, is what proves a post is Twilio's.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return [url]
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    bare, port = _split_port(netloc)
    forms = [url, f"{scheme}://{bare}{tail}"]
    default = _DEFAULT_PORTS.get(scheme.lower())
    if port is None and default is not None:
        forms.append(f"{scheme}://{bare}:{default}{tail}")
    return list(dict.fromkeys(forms))


def verify_signature(
    key: str,
    url: str,
    params: Mapping[str, str] | Sequence[tuple[str, str]],
    header: str | None,
    algorithm: str = HMAC_SHA1,
) -> bool:
    """Whether ``header`` is Twilio's signature of this post with ``key`` and ``algorithm``,
    over any form of ``url`` (:func:`signed_urls`); ``False`` when it is missing."""
    if not header:
        return False
    given = header.strip().encode()
    # Every form is compared, each in constant time, so the time taken tells nothing either.
    matches = [
        hmac.compare_digest(signature(key, form, params, algorithm).encode(), given)
        for form in signed_urls(url)
    ]
    return any(matches)


@dataclass(frozen=True, slots=True)
class SignatureScheme:
    """How a webhook says it was signed, from its ``X-Twilio-Webhooks-Signature-Settings``."""

    #: Signed with a SharedKey of a Webhook Setting, not with the account's auth token.
    shared_key: bool
    #: ``HMAC_SHA1`` or ``HMAC_SHA256``; ``None`` for an algorithm Bulletin does not know.
    algorithm: str | None
    #: The SharedKey's id, as the header names it.
    key_id: str | None = None


def signature_scheme(settings: str | None) -> SignatureScheme:
    """The scheme a post was signed with: the auth token and HMAC-SHA1 when ``settings`` (the
    ``X-Twilio-Webhooks-Signature-Settings`` header) is absent or empty, else the SharedKey and
    the header's ``algorithm`` (HMAC-SHA1 when it names none)."""
    if settings is None or not settings.strip():
        return SignatureScheme(shared_key=False, algorithm=HMAC_SHA1)
    fields: dict[str, str] = {}
    for part in settings.split(","):
        name, equals, value = part.partition("=")
        if equals and value.strip():
            fields.setdefault(name.strip().lower(), value.strip())
    algorithm = fields.get("algorithm", HMAC_SHA1).upper()
    return SignatureScheme(
        shared_key=True,
        algorithm=algorithm if algorithm in _HASHES else None,
        key_id=fields.get("key"),
    )


def verify_webhook(
    config: TwilioConfig,
    url: str,
    params: Mapping[str, str] | Sequence[tuple[str, str]],
    signature_header: str | None,
    settings_header: str | None,
) -> bool:
    """Whether a post to ``url`` was signed by this account, as its headers say it was.

    Without ``X-Twilio-Webhooks-Signature-Settings`` the signature must be the auth token's
    (HMAC-SHA1). With it, it must be the configured ``webhook_signing_key``'s, with the
    algorithm the header names: an unknown algorithm, or no signing key to check it with, is
    refused, and the auth token never stands in for the key.
    """
    scheme = signature_scheme(settings_header)
    secret = config.webhook_signing_key if scheme.shared_key else config.auth_token
    if scheme.algorithm is None or secret is None:
        return False
    return verify_signature(
        secret.get_secret_value(), url, params, signature_header, scheme.algorithm
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_status(params: Mapping[str, str], delivery_id: int | None) -> Receipt | None:
    """The receipt a status callback reports, or ``None`` when its status is not one we track.

    ``delivery_id`` is the ``delivery`` query parameter of the callback URL, when present.
    Twilio puts no time in its callbacks, so the receipt is dated when it is read.
    """
    status = params.get("MessageStatus") or params.get("SmsStatus")
    sid = params.get("MessageSid") or params.get("SmsSid") or None
    state = _RECEIPT_STATES.get(status or "")
    if state is None or (sid is None and delivery_id is None):
        return None
    if state is not ReportedState.FAILED:
        return Receipt(provider_message_id=sid, delivery_id=delivery_id, state=state, at=_now())
    code = (params.get("ErrorCode") or "").strip()
    if code:
        detail = f"{code}: {_DELIVERY_ERRORS.get(code, f'message {status}')}"
    else:
        detail = f"message {status}"
    return Receipt(
        provider_message_id=sid,
        delivery_id=delivery_id,
        state=state,
        at=_now(),
        detail=detail,
        suppress_address=code == str(UNSUBSCRIBED),
    )


def parse_inbound(params: Mapping[str, str]) -> Inbound | None:
    """The message a person texted to one of our numbers, or ``None`` if this is not one.

    Status callbacks carry a ``MessageStatus`` other than ``received`` and are not inbound.
    Only senders with an E.164 number are read: a ``whatsapp:`` address is not an SMS. The
    message's sid (``MessageSid``) is its ``provider_id``; a post without one is not read.
    """
    for field in ("MessageStatus", "SmsStatus"):
        if params.get(field, "received") != "received":
            return None
    sender, to, body = params.get("From"), params.get("To"), params.get("Body")
    if sender is None or to is None or body is None or not _E164.fullmatch(sender):
        return None
    # The message's sid tells a replayed webhook from a new message; without one it is not
    # something Twilio sent.
    sid = params.get("MessageSid") or params.get("SmsSid")
    if not sid or len(sid) > 64:
        return None
    return Inbound(channel="sms", address=sender, text=body, at=_now(), provider_id=sid)


def inbound_reply(text: str | None) -> str:
    """The TwiML answer to an inbound message: empty, or one ``<Message>`` replying ``text``."""
    head = '<?xml version="1.0" encoding="UTF-8"?>'
    if not text:
        return f"{head}<Response/>"
    return f"{head}<Response><Message>{escape(text)}</Message></Response>"
