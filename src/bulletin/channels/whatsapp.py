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
:func:`parse_webhook` are what an endpoint needs to serve them. A failed status whose errors
name 131047 is marked ``window_closed``: the Cloud API usually takes free text outside the
window and refuses it afterwards that way, and the engine then sends the approved template.

It is over 400 lines because it holds both halves of one provider, sending and the webhooks,
which share the Graph API's error codes, message ids and payload shapes; split in two, a
reader would follow one protocol across two modules.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import unicodedata
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
from bulletin.channels.text import ELLIPSIS, fit, shorten
from bulletin.errors import (
    ChannelError,
    InDoubtSendError,
    PermanentSendError,
    TransientSendError,
    WindowClosed,
)

log = structlog.get_logger("bulletin.channels.whatsapp")

SIGNATURE_HEADER = "X-Hub-Signature-256"

#: Throughput (130429), application (4), WhatsApp Business Account (80007) rate limits, and
#: the spam rate limit (131048) that Meta imposes on numbers whose messages were blocked.
_RATE_LIMITED = frozenset({130429, 4, 80007, 131048})
_PAIR_RATE_LIMITED = 131056
#: Re-engagement required: free text to a person whose 24-hour window is closed.
_WINDOW_CLOSED = 131047
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
        132018,  # a parameter has a new-line, a tab or more than four consecutive spaces
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


#: The longest free-form text the Cloud API takes (``text.body``); longer text is cut, keeping
#: the preference link.
TEXT_LIMIT = 4096
#: The longest text parameter Bulletin sends. Meta allows 1024 characters in a body parameter
#: when the template has components besides its body (a header, a footer, buttons), and 32768
#: when the body is all there is (the OpenAPI description's ``TextParameter.maxLength``).
#: Bulletin does not know which components an approved template has, so it keeps to the
#: smaller limit.
TEMPLATE_PARAMETER_LIMIT = 1024
#: What a line break becomes after a line that does not end in punctuation (a heading, a list
#: item), so that it stays apart from what follows.
PARAMETER_SEPARATOR = " · "
#: What a parameter with no text at all becomes: the Cloud API refuses an empty one.
EMPTY_PARAMETER = "-"
#: Runs of whitespace and control characters within a line.
_BLANKS = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")


def template_parameter(text: str, limit: int = TEMPLATE_PARAMETER_LIMIT) -> str:
    """``text`` made acceptable as a text parameter of a WhatsApp template.

    The Cloud API refuses a parameter containing a new-line, a tab or more than four
    consecutive spaces (error 132018), an empty one, and one longer than the template allows.
    A multi-paragraph announcement therefore goes out on one line:

    * each line break, with the blank lines and spaces around it, becomes one space after a line
      ending in punctuation (the end of a sentence), and :data:`PARAMETER_SEPARATOR` after one
      that does not (a heading, a list item);
    * every other run of whitespace or control characters becomes a single space, and the ends
      are trimmed;
    * text longer than ``limit`` is cut between two characters, never inside a character
      sequence that draws as one (an accent, an emoji with its modifiers, a flag), and ends
      with ``…``;
    * text that is left empty becomes :data:`EMPTY_PARAMETER`.

    Length is counted in UTF-16 code units, which are never fewer than the characters: the
    limit holds whichever of the two Meta counts.
    """
    parts: list[str] = []
    for raw in text.splitlines():
        line = _BLANKS.sub(" ", raw).strip()
        if not line:
            continue
        if parts:
            ends_sentence = unicodedata.category(parts[-1][-1]).startswith("P")
            parts.append(" " if ends_sentence else PARAMETER_SEPARATOR)
        parts.append(line)
    joined = "".join(parts)
    cut = shorten(joined, limit)
    if cut != joined:
        # A cut right after a separator would leave it dangling before the ellipsis.
        kept = cut.removesuffix(ELLIPSIS).rstrip()
        joined = kept.removesuffix(PARAMETER_SEPARATOR.rstrip()).rstrip() + ELLIPSIS
    return joined or EMPTY_PARAMETER


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
                parameters = [
                    {"type": "text", "text": template_parameter(text)}
                    for text in template.parameters
                ]
                spec["components"] = [{"type": "body", "parameters": parameters}]
            body["type"] = "template"
            body["template"] = spec
        else:
            body["type"] = "text"
            text = fit(text_body(message.title, message.body), TEXT_LIMIT, message.preferences_url)
            body["text"] = {"preview_url": False, "body": text}
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
        if code == _WINDOW_CLOSED:
            # Re-engagement required: the person's 24-hour window is closed and nothing was
            # sent. The engine may send the approved template instead.
            return WindowClosed(detail)
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
    other than the one asked for, which were left out. ``skipped`` counts the people's
    messages Bulletin cannot act on (a sender known only by a username, a message without an
    id), which were left out while the rest of the post is applied."""

    phone_number_ids: set[str] = field(default_factory=set)
    receipts: list[Receipt] = field(default_factory=list)
    inbound: list[Inbound] = field(default_factory=list)
    foreign: int = 0
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class _Skipped:
    """A person's message left out of a post, and why."""

    reason: str
    provider_id: str | None


def parse_webhook(payload: object, phone_number_id: str | None = None) -> WhatsAppWebhook:
    """Read a ``whatsapp_business_account`` webhook (already JSON-decoded).

    Changes other than ``messages`` and statuses other than sent, delivered, read and failed
    are skipped, and unknown fields are ignored. A person's message that Bulletin cannot
    attribute to a phone number (a sender who uses a WhatsApp username: Meta sends an empty
    ``from`` and the business-scoped ``from_user_id``), or that has no id to recognise a
    replay by, is logged, counted in ``skipped`` and left out: the statuses and other messages
    of the post still count. A payload that does not have the structure Meta documents raises
    :class:`ValueError` saying where it went wrong.

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
    skipped: list[_Skipped] = []
    for s, raw in enumerate(_array(value.get("statuses", []), f"{where}.statuses")):
        receipt = _receipt(_object(raw, f"{where}.statuses[{s}]"), f"{where}.statuses[{s}]")
        if receipt is not None:
            receipts.append(receipt)
    for m, raw in enumerate(_array(value.get("messages", []), f"{where}.messages")):
        message = _inbound(_object(raw, f"{where}.messages[{m}]"), f"{where}.messages[{m}]")
        if isinstance(message, _Skipped):
            skipped.append(message)
        elif message is not None:
            inbound.append(message)
    if only is not None and number != only:
        result.foreign += 1
        return
    result.phone_number_ids.add(number)
    result.receipts.extend(receipts)
    result.inbound.extend(inbound)
    result.skipped += len(skipped)
    for left_out in skipped:
        log.info(
            "whatsapp.inbound_skipped",
            phone_number_id=number,
            reason=left_out.reason,
            provider_id=left_out.provider_id,
        )


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
    window_closed = False
    if state is ReportedState.FAILED:
        errors = _array(status.get("errors", []), f"{where}.errors")
        detail = "; ".join(_error_detail(error) for error in errors) or "failed"
        # How the Cloud API usually reports free text outside the 24-hour window: it takes the
        # message (200 and a wamid), then sends this failed status. Any of the errors counts:
        # Meta's ``errors`` is an array, though pywa (4.5) reads only its first entry.
        window_closed = any(
            isinstance(error, dict) and _as_int(error.get("code")) == _WINDOW_CLOSED
            for error in errors
        )
    return Receipt(
        provider_message_id=wamid,
        delivery_id=delivery_id,
        state=state,
        at=at,
        detail=detail,
        window_closed=window_closed,
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


def _inbound(message: Mapping[str, Any], where: str) -> Inbound | _Skipped | None:
    if message.get("type") == "system":
        # Sent by WhatsApp (the person changed number or user id), not by the person: no reply,
        # no window.
        return None
    raw_id, raw_sender = message.get("id"), message.get("from")
    # The message's own id (a wamid) tells a replayed webhook from a new message: without one,
    # a STOP could not be told from its replay after a START.
    if raw_id in (None, ""):
        return _Skipped("the message has no id", None)
    wamid = _string(raw_id, f"{where}.id")
    if len(wamid) > _MAX_ID_LENGTH:
        raise ValueError(f"{where}.id is longer than {_MAX_ID_LENGTH} characters")
    if raw_sender in (None, ""):
        # Bulletin knows people by their numbers; a business-scoped user id names nobody here.
        reason = (
            "the sender uses a username and shared no phone number"
            if message.get("from_user_id")
            else "the message names no sender"
        )
        return _Skipped(reason, wamid)
    sender = _string(raw_sender, f"{where}.from")
    if not _DIGITS.fullmatch(sender):
        raise ValueError(f"{where}.from is not a phone number in digits: {sender!r}")
    at = _timestamp(message.get("timestamp"), f"{where}.timestamp")
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
