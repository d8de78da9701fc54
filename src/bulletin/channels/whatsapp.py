"""WhatsApp through Meta's WhatsApp Business Cloud API (the Graph API), and its webhooks.

Sending is one JSON ``POST {base}/{version}/{phone_number_id}/messages`` per message, with the
delivery id in ``biz_opaque_callback_data`` so that every status webhook names the delivery it
is about. The Cloud API has no idempotency key, so :class:`WhatsAppCloudProvider` does not
deduplicate: a send whose answer was lost is reported in doubt and never retried blindly.

Graph API errors (``{"error": {"code", "error_subcode", "message", "error_data"}}``) are mapped
here, at the boundary, onto Bulletin's three outcomes:

* throughput and API rate limits (130429, 4, 80007, 131048): transient, the account slows down;
* the pair rate limit (131056, too many messages to one person): transient for this message;
* a recipient or a template the Cloud API will never accept (131026, 131030, 131047, 131051,
  132xxx, 100 such as an invalid ``to``, any other 4xx): permanent, without suppressing the
  address (falling back to another channel is the engine's job);
* an expired token, a missing permission, a wrong phone number id (190, 10, 200-299, 100/33):
  transient for a minute and logged loudly, because failing every message for good over an
  account problem would be worse;
* 5xx and Meta's "try again" codes: transient, honouring ``Retry-After``;
* a connection that could not be made, or that failed while the request was being written:
  transient; one lost after the request went out, or a success whose body cannot be read:
  in doubt.

Webhooks are JSON posts signed with ``X-Hub-Signature-256``; :func:`verify_signature` and
:func:`parse_webhook` are what an endpoint needs to serve them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from bulletin.channels.base import (
    Accepted,
    Inbound,
    OutboundMessage,
    Provider,
    Receipt,
    ReportedState,
)
from bulletin.channels.configs import WhatsAppCloudConfig
from bulletin.channels.http import ACCOUNT_RETRY_SECONDS, exchange
from bulletin.errors import (
    ChannelError,
    InDoubtSendError,
    PermanentSendError,
    TransientSendError,
)

log = structlog.get_logger("bulletin.channels.whatsapp")

SIGNATURE_HEADER = "X-Hub-Signature-256"

#: Throughput (130429), application (4), WhatsApp Business Account (80007) rate limits, and
#: the spam rate limit (131048) that Meta imposes on numbers whose messages were blocked.
_RATE_LIMITED = frozenset({130429, 4, 80007, 131048})
_PAIR_RATE_LIMITED = 131056
#: The recipient, or the template, will not be accepted however often we try.
_REFUSED = frozenset(
    {
        131008,  # required parameter missing
        131009,  # parameter value not valid
        131021,  # recipient is the sender
        131026,  # message undeliverable
        131030,  # recipient not in the allowed list (test numbers)
        131047,  # re-engagement: the 24-hour window is closed
        131049,  # Meta chose not to deliver (per-user marketing limit)
        131050,  # the person stopped marketing messages
        131051,  # unsupported message type
        132000,  # template parameter count mismatch
        132001,  # template does not exist
        132005,  # translated text too long
        132007,  # template format character policy violated
        132012,  # parameter format mismatch
        132015,  # template paused
        132016,  # template disabled
    }
)
#: Problems with the access token, its permissions or the business account: an operator must
#: act, and until then every message would fail the same way.
_ACCOUNT_PROBLEMS = frozenset(
    {0, 3, 10, 190, 368, 131031, 131042, 131045, 133010} | set(range(200, 300))
)
#: Meta's own "temporary, try again" codes, whatever the HTTP status says.
_TRY_AGAIN = frozenset({1, 2, 131000, 131016, 133004})
#: Graph's "object does not exist or you may not use it": here, the phone number id.
_UNKNOWN_OBJECT_SUBCODE = 33

#: How long the account pauses after a rate-limit answer without ``Retry-After``. Throughput
#: (130429) is counted per second, so one second without sends is enough: a longer pause after
#: a send that reached Meta a little late would cost seconds of the account's whole rate. The
#: spam limit (131048) lasts longer. The application and business-account limits count calls
#: over longer periods than a second.
_RATE_LIMIT_PAUSES = {130429: 1.0, 131048: 60.0}
_RATE_LIMIT_PAUSE = 5.0
_DEFAULT_PAIR_INTERVAL = 6.0

_RECEIPT_STATES = {
    "sent": ReportedState.SENT,
    "delivered": ReportedState.DELIVERED,
    "read": ReportedState.READ,
    "failed": ReportedState.FAILED,
}
_DECIMAL = re.compile(r"[0-9]{1,19}")
_DIGITS = re.compile(r"[0-9]{1,20}")
_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")
#: Longest provider message id kept to recognise a replay (wamids are about 60 characters).
_MAX_ID_LENGTH = 255


def text_body(title: str, body: str) -> str:
    """The text of a free-form WhatsApp message: the title in bold, a blank line, the body."""
    return f"*{title}*\n\n{body}" if title else body


class WhatsAppCloudProvider(Provider):
    """Sends WhatsApp messages from one business phone number of the Cloud API.

    The aiohttp session belongs to the caller, who closes it. ``connect_timeout`` bounds only
    the making of the connection (a failure there is known not to have sent anything); the
    engine bounds the whole send.
    """

    name = "whatsapp_cloud"
    deduplicates = False

    def __init__(
        self,
        config: WhatsAppCloudConfig,
        session: aiohttp.ClientSession,
        *,
        account_key: str | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        if config.access_token is None:
            raise ValueError("a WhatsApp Cloud configuration needs an access_token to send")
        self._session = session
        self.account_key = account_key
        self._phone_number_id = config.phone_number_id
        self._url = (
            f"{config.base_url_str()}/{config.api_version}/{config.phone_number_id}/messages"
        )
        self._headers = {
            "Authorization": f"Bearer {config.access_token.get_secret_value()}",
            "Accept": "application/json",
        }
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout)
        self._pair_interval = config.pair_interval_seconds or _DEFAULT_PAIR_INTERVAL
        self.account = f"whatsapp:{config.phone_number_id}"
        self.rate_per_second = config.rate_per_second
        self.pair_interval_seconds = config.pair_interval_seconds

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        """The JSON body a send of ``message`` posts to the Cloud API."""
        body: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": message.address.removeprefix("+"),
            "biz_opaque_callback_data": str(message.delivery_id),
        }
        template = message.whatsapp_template
        if template is not None:
            spec: dict[str, Any] = {"name": template.name, "language": {"code": template.language}}
            if template.parameters:
                parameters = [{"type": "text", "text": text} for text in template.parameters]
                spec["components"] = [{"type": "body", "parameters": parameters}]
            body["type"] = "template"
            body["template"] = spec
        else:
            body["type"] = "text"
            body["text"] = {"preview_url": False, "body": text_body(message.title, message.body)}
        return body

    async def send(self, message: OutboundMessage) -> Accepted:
        """Send the message; its ``wamid`` is the provider id."""
        bound = log.bind(delivery_id=message.delivery_id, phone_number_id=self._phone_number_id)
        answer = await exchange(
            self._session,
            self._url,
            provider="the Cloud API",
            bound=bound,
            json=self.payload(message),
            headers=self._headers,
            timeout=self._timeout,
        )
        status, retry_after, raw = answer.status, answer.retry_after, answer.body
        if answer.error is not None or status is None or raw is None:
            exc = answer.error
            if status is not None and not 200 <= status < 300:
                # The status line already said no; only the explanation was lost.
                raise self._refusal(bound, status, retry_after, _GraphError())
            bound.warning("whatsapp.in_doubt", error=repr(exc), status=status)
            raise InDoubtSendError(
                "the connection to the Cloud API failed after the request was sent"
            ) from exc

        if 200 <= status < 300:
            wamid = _message_id(raw)
            if wamid is None:
                bound.warning("whatsapp.unreadable_success", status=status, body=raw[:200])
                raise InDoubtSendError(f"the Cloud API answered {status} with no readable wamid")
            return Accepted(wamid)
        raise self._refusal(bound, status, retry_after, _GraphError.parse(raw))

    def _refusal(
        self,
        bound: structlog.typing.FilteringBoundLogger,
        status: int,
        retry_after: float | None,
        error: _GraphError,
    ) -> ChannelError:
        code = error.code
        detail = f"the Cloud API answered {status}" + (f", {error}" if error.known else "")
        if code == _PAIR_RATE_LIMITED:
            pause = retry_after if retry_after is not None else self._pair_interval
            bound.info("whatsapp.pair_rate_limited", retry_after=pause)
            return TransientSendError(detail, retry_after=pause, slow_down=False)
        if code in _RATE_LIMITED or (code is None and status == 429):
            if retry_after is not None:
                pause = retry_after
            else:
                pause = _RATE_LIMIT_PAUSES.get(code or 0, _RATE_LIMIT_PAUSE)
            bound.warning("whatsapp.rate_limited", status=status, code=code, retry_after=pause)
            return TransientSendError(detail, retry_after=pause, slow_down=True)
        if (
            code in _ACCOUNT_PROBLEMS
            or (code == 100 and error.subcode == _UNKNOWN_OBJECT_SUBCODE)
            or (code is None and status in (401, 403))
        ):
            bound.error(
                "whatsapp.account_problem",
                status=status,
                code=code,
                subcode=error.subcode,
                message=error.message,
                fbtrace_id=error.fbtrace_id,
                hint="check the access token, its permissions and the phone number id",
            )
            return TransientSendError(detail, retry_after=ACCOUNT_RETRY_SECONDS, slow_down=True)
        if code in _REFUSED:
            return PermanentSendError(detail)
        if status >= 500 or code in _TRY_AGAIN:
            bound.warning("whatsapp.server_error", status=status, code=code)
            return TransientSendError(detail, retry_after=retry_after)
        if 400 <= status < 500:
            bound.info("whatsapp.refused", status=status, code=code, message=error.message)
            return PermanentSendError(detail)
        # A redirect or an informational answer: the base URL points somewhere else.
        bound.error("whatsapp.unexpected_status", status=status, url=self._url)
        return TransientSendError(detail, retry_after=ACCOUNT_RETRY_SECONDS, slow_down=True)


@dataclass(frozen=True, slots=True)
class _GraphError:
    code: int | None = None
    subcode: int | None = None
    message: str | None = None
    details: str | None = None
    fbtrace_id: str | None = None

    @classmethod
    def parse(cls, raw: bytes) -> _GraphError:
        try:
            payload = json.loads(raw)
        except ValueError:
            return cls()
        error = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(error, dict):
            return cls()
        data = error.get("error_data")
        details = data.get("details") if isinstance(data, dict) else None
        return cls(
            code=_as_int(error.get("code")),
            subcode=_as_int(error.get("error_subcode")),
            message=_as_str(error.get("message")),
            details=_as_str(details),
            fbtrace_id=_as_str(error.get("fbtrace_id")),
        )

    @property
    def known(self) -> bool:
        return self.code is not None or self.message is not None

    def __str__(self) -> str:
        text = f"code {self.code}: {self.message or 'no message'}"
        return f"{text} ({self.details})" if self.details else text


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _DECIMAL.fullmatch(value):
        return int(value)
    return None


def _as_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _message_id(raw: bytes) -> str | None:
    try:
        payload = json.loads(raw)
    except ValueError:
        return None
    messages = payload.get("messages") if isinstance(payload, dict) else None
    if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
        return None
    return _as_str(messages[0].get("id"))


# --- webhooks -------------------------------------------------------------------------------


def sign(app_secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends with ``body``: ``sha256=<hex HMAC>``."""
    digest = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(app_secret: str, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is Meta's signature of the raw ``body``.

    ``False`` when the header is missing or malformed, and when no app secret is configured:
    an HMAC keyed by an empty secret proves nothing.
    """
    if not app_secret or header is None:
        return False
    match = _SIGNATURE.fullmatch(header.strip())
    if match is None:
        return False
    expected = sign(app_secret, body).removeprefix("sha256=")
    return hmac.compare_digest(expected, match.group(1).lower())


@dataclass
class WhatsAppWebhook:
    """What one webhook post reports: receipts and inbound messages, and which numbers they
    concern (``metadata.phone_number_id``). ``foreign`` counts the changes about a number
    other than the one asked for, which were left out."""

    phone_number_ids: set[str] = field(default_factory=set)
    receipts: list[Receipt] = field(default_factory=list)
    inbound: list[Inbound] = field(default_factory=list)
    foreign: int = 0


def parse_webhook(payload: object, phone_number_id: str | None = None) -> WhatsAppWebhook:
    """Read a ``whatsapp_business_account`` webhook (already JSON-decoded).

    Changes other than ``messages`` and statuses other than sent, delivered, read and failed
    are skipped, and unknown fields are ignored. A payload that does not have the structure
    Meta documents raises :class:`ValueError` saying where it went wrong.

    With ``phone_number_id`` (the number of the account whose secret signed the post), a
    change about another number is validated, counted in ``foreign`` and left out: a signature
    speaks for its own account's number only, whatever the payload says.
    """
    root = _object(payload, "payload")
    if root.get("object") != "whatsapp_business_account":
        raise ValueError(
            f"payload.object is {root.get('object')!r}, not 'whatsapp_business_account'"
        )
    result = WhatsAppWebhook()
    for e, raw_entry in enumerate(_array(root.get("entry"), "entry")):
        entry = _object(raw_entry, f"entry[{e}]")
        for c, raw_change in enumerate(_array(entry.get("changes"), f"entry[{e}].changes")):
            where = f"entry[{e}].changes[{c}]"
            change = _object(raw_change, where)
            if change.get("field") != "messages":
                continue
            value = _object(change.get("value"), f"{where}.value")
            _read_value(value, f"{where}.value", result, phone_number_id)
    return result


def _read_value(
    value: Mapping[str, Any], where: str, result: WhatsAppWebhook, only: str | None
) -> None:
    metadata = _object(value.get("metadata"), f"{where}.metadata")
    number = _string(metadata.get("phone_number_id"), f"{where}.metadata.phone_number_id")
    receipts: list[Receipt] = []
    inbound: list[Inbound] = []
    for s, raw in enumerate(_array(value.get("statuses", []), f"{where}.statuses")):
        receipt = _receipt(_object(raw, f"{where}.statuses[{s}]"), f"{where}.statuses[{s}]")
        if receipt is not None:
            receipts.append(receipt)
    for m, raw in enumerate(_array(value.get("messages", []), f"{where}.messages")):
        message = _inbound(_object(raw, f"{where}.messages[{m}]"), f"{where}.messages[{m}]")
        if message is not None:
            inbound.append(message)
    if only is not None and number != only:
        result.foreign += 1
        return
    result.phone_number_ids.add(number)
    result.receipts.extend(receipts)
    result.inbound.extend(inbound)


def _receipt(status: Mapping[str, Any], where: str) -> Receipt | None:
    state = _RECEIPT_STATES.get(_string(status.get("status"), f"{where}.status"))
    wamid = _string(status.get("id"), f"{where}.id")
    at = _timestamp(status.get("timestamp"), f"{where}.timestamp")
    if state is None:
        # "deleted", "warning" and whatever Meta adds later say nothing about delivery.
        return None
    callback = status.get("biz_opaque_callback_data")
    delivery_id = (
        int(callback) if isinstance(callback, str) and _DECIMAL.fullmatch(callback) else None
    )
    detail = None
    if state is ReportedState.FAILED:
        errors = _array(status.get("errors", []), f"{where}.errors")
        detail = "; ".join(_error_detail(error) for error in errors) or "failed"
    return Receipt(
        provider_message_id=wamid, delivery_id=delivery_id, state=state, at=at, detail=detail
    )


def _error_detail(error: object) -> str:
    if not isinstance(error, dict):
        return "failed"
    code = _as_int(error.get("code"))
    title = _as_str(error.get("title")) or _as_str(error.get("message")) or "failed"
    data = error.get("error_data")
    details = _as_str(data.get("details")) if isinstance(data, dict) else None
    text = f"{code}: {title}" if code is not None else title
    return f"{text} ({details})" if details and details != title else text


def _inbound(message: Mapping[str, Any], where: str) -> Inbound | None:
    sender = _string(message.get("from"), f"{where}.from")
    if not _DIGITS.fullmatch(sender):
        raise ValueError(f"{where}.from is not a phone number in digits: {sender!r}")
    # The message's own id (a wamid) tells a replayed webhook from a new message.
    wamid = _string(message.get("id"), f"{where}.id")
    if len(wamid) > _MAX_ID_LENGTH:
        raise ValueError(f"{where}.id is longer than {_MAX_ID_LENGTH} characters")
    at = _timestamp(message.get("timestamp"), f"{where}.timestamp")
    kind = message.get("type")
    if kind == "system":
        # Sent by WhatsApp (the person changed number), not by the person: no reply, no window.
        return None
    return Inbound(
        channel="whatsapp",
        address=f"+{sender}",
        text=_text_of(message),
        at=at,
        provider_id=wamid,
    )


def _text_of(message: Mapping[str, Any]) -> str:
    kind = message.get("type")
    part = message.get(kind) if isinstance(kind, str) else None
    if not isinstance(part, dict):
        return ""
    if kind == "text":
        return _as_str(part.get("body")) or ""
    if kind == "button":
        return _as_str(part.get("text")) or ""
    if kind == "interactive":
        for reply in ("button_reply", "list_reply"):
            chosen = part.get(reply)
            if isinstance(chosen, dict):
                return _as_str(chosen.get("title")) or ""
    return ""


def _object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        # ValueError, not TypeError: callers treat any malformed payload alike.
        raise ValueError(f"{where} must be a JSON object, not {type(value).__name__}")  # noqa: TRY004
    return value


def _array(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{where} must be a JSON array, not {type(value).__name__}")  # noqa: TRY004
    return value


def _string(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where} must be a non-empty string")
    return value


def _timestamp(value: object, where: str) -> dt.datetime:
    seconds = _as_int(value)
    if seconds is None:
        raise ValueError(f"{where} must be unix seconds, not {value!r}")
    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise ValueError(f"{where} is out of range: {value!r}") from exc
