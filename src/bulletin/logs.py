"""Structured logging: one event name per line, with bound ids, as JSON or for a console.

Ids bound with ``structlog.contextvars`` (the API's ``request_id``, a send's ``delivery_id``
and ``message_id``) appear on every line logged while they are bound. Records of the standard
library's loggers (uvicorn, SQLAlchemy, asyncio) go through the same renderer, so with
``json`` every line on stderr is one JSON object.

No secret reaches a line, in either format (see :func:`redact`):

* a field whose name says it holds a secret (:func:`is_secret_name`) is replaced by
  ``[redacted]``, at any depth of nested dicts and lists;
* every string is masked (:func:`mask`): API keys (``bk_...``), webhook signing secrets
  (``whsec_...``), signed session and link tokens, ``name=value`` / ``"name": "value"`` pairs
  with a secret name (query strings, headers, dict and JSON text), pydantic's
  ``input_value=`` and SQLAlchemy's ``[parameters: ...]``, and the values the current request
  carried in its credential headers, cookies, secret-named query parameters and secret-named
  body fields (:class:`RequestSecrets`);
* tracebacks are plain text without local variables, their exception messages masked alike.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import traceback
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus

import structlog

REDACTED = "[redacted]"

#: Headers whose whole value is a credential.
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "cookie",
        "set-cookie",
        "x-csrf-token",
    }
)
#: A field, key, header, cookie or parameter whose name contains one of these is a secret.
_SECRET_PARTS = (
    "secret",
    "password",
    "passwd",
    "token",
    "key",
    "authorization",
    "cookie",
    "session",
    "csrf",
    "signature",
    "credential",
)
#: Names that contain a part above but name no secret: identifiers of keys, the inbound
#: keyword (``STOP``), the client's idempotency key and the request id. Everything else
#: that matches is redacted: a name redacted for nothing costs a debugging session less
#: than a secret in a log costs its owner.
NOT_SECRET_NAMES = frozenset({"key_id", "api_key_id", "keyword", "idempotency_key", "request_id"})
#: Nested values deeper than this are replaced whole (a log line is not a data dump).
MAX_DEPTH = 8
#: Request values shorter than this are not searched for in logged text (``"a"`` is
#: everywhere); names and patterns still redact them.
MIN_KNOWN_LENGTH = 6
#: The most of a request body kept to find the secret-named fields it carried.
MAX_BODY_BYTES = 64 * 1024

_NAME = r"[A-Za-z0-9_.\-]*(?:" + "|".join(_SECRET_PARTS) + r")[A-Za-z0-9_.\-]*"
_QUOTED_PAIR = re.compile(
    r"(?P<q>['\"])(?P<name>" + _NAME + r")(?P=q)(?P<sep>\s*:\s*b?)(?P<vq>['\"])"
    r"(?P<value>(?:\\.|[^\\])*?)(?P=vq)",
    re.IGNORECASE,
)
_HEADER_PAIR = re.compile(
    r"(?P<head>b?(?P<q>['\"])(?P<name>" + _NAME + r")(?P=q)\s*,\s*b?)(?P<vq>['\"])"
    r"(?P<value>(?:\\.|[^\\])*?)(?P=vq)",
    re.IGNORECASE,
)
_PLAIN_PAIR = re.compile(
    r"(?<![A-Za-z0-9_.\-])(?P<name>" + _NAME + r")(?P<sep>\s*[=:]\s*)"
    r"(?:(?P<vq>['\"])(?P<quoted>(?:\\.|[^\\])*?)(?P=vq)"
    r"|(?P<scheme>(?:Bearer|Basic|Token|Digest)\s+)?(?P<value>[^\s&;,'\"})\[\]]+))",
    re.IGNORECASE,
)
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Bulletin API keys: bk_ and 43 URL-safe characters (shorter runs too: a cut key).
    (re.compile(r"bk_[A-Za-z0-9_-]{16,}"), "bk_" + REDACTED),
    # Webhook signing secrets: whsec_ and base64 (a cut one too).
    (re.compile(r"whsec_[A-Za-z0-9+/=]{16,}"), "whsec_" + REDACTED),
    # Signed tokens (portal sessions, sign-in nonces, preference links): payload.MAC.
    (re.compile(r"[A-Za-z0-9_-]{24,}\.[A-Za-z0-9_-]{22}(?![A-Za-z0-9_-])"), REDACTED),
    # pydantic's ValidationError text repeats the input.
    (re.compile(r"input_value=[^\n]*?, input_type="), f"input_value={REDACTED}, input_type="),
    # SQLAlchemy's error text repeats the statement's parameters.
    (re.compile(r"\[parameters: [^\n]*"), f"[parameters: {REDACTED}]"),
]


def is_secret_name(name: str) -> bool:
    """Whether a field, key, header, cookie or parameter of this name holds a secret."""
    lowered = name.lower()
    if lowered in NOT_SECRET_NAMES:
        return False
    return lowered in SECRET_HEADERS or any(part in lowered for part in _SECRET_PARTS)


def _quoted_pair(match: re.Match[str]) -> str:
    if not is_secret_name(match["name"]):
        return match[0]
    q, vq = match["q"], match["vq"]
    return f"{q}{match['name']}{q}{match['sep']}{vq}{REDACTED}{vq}"


def _header_pair(match: re.Match[str]) -> str:
    if not is_secret_name(match["name"]):
        return match[0]
    return f"{match['head']}{match['vq']}{REDACTED}{match['vq']}"


def _plain_pair(match: re.Match[str]) -> str:
    if not is_secret_name(match["name"]):
        return match[0]
    if match["vq"] is not None:
        return f"{match['name']}{match['sep']}{match['vq']}{REDACTED}{match['vq']}"
    return f"{match['name']}{match['sep']}{match['scheme'] or ''}{REDACTED}"


def mask(text: str, known: Iterable[str] = ()) -> str:
    """``text`` without secrets: the patterns in this module's docstring, and every value of
    ``known`` (by default, the current request's, see :func:`known_secrets`)."""
    for value in known:
        if value in text:
            text = text.replace(value, REDACTED)
    text = _QUOTED_PAIR.sub(_quoted_pair, text)
    text = _HEADER_PAIR.sub(_header_pair, text)
    text = _PLAIN_PAIR.sub(_plain_pair, text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


# --- What the current request carries ------------------------------------------------------


def _secret_values(data: Any, depth: int = 0, under_secret: bool = False) -> Iterable[str]:
    """Every string in ``data`` (parsed JSON) held under a secret-named key."""
    if depth > MAX_DEPTH * 4:
        return
    if isinstance(data, Mapping):
        for key, value in data.items():
            yield from _secret_values(
                value, depth + 1, under_secret or (isinstance(key, str) and is_secret_name(key))
            )
    elif isinstance(data, list | tuple):
        for value in data:
            yield from _secret_values(value, depth + 1, under_secret)
    elif under_secret and isinstance(data, str):
        yield data
    elif under_secret and isinstance(data, int | float) and not isinstance(data, bool):
        yield str(data)


def secret_values_of(data: Any) -> set[str]:
    """The strings of ``data`` (a parsed request body) held under secret-named keys, in the
    forms in which they may be written (as given, and URL-encoded), long enough to look for."""
    found: set[str] = set()
    for value in _secret_values(data):
        found.update(_forms(value))
    return found


def _forms(value: str) -> set[str]:
    if len(value) < MIN_KNOWN_LENGTH:
        return set()
    return {value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1]}


class RequestSecrets:
    """The credentials one request carried, so that no logged text repeats them.

    Headers, cookies and query parameters are read at once (cheap); the body, kept up to
    :data:`MAX_BODY_BYTES`, is parsed only when a warning or an error is logged.
    """

    def __init__(self, headers: Iterable[tuple[bytes, bytes]], query_string: bytes) -> None:
        self._known: set[str] = set()
        self._content_type = ""
        self._body = bytearray()
        self._parsed = 0
        for raw_name, raw_value in headers:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            if name == "content-type":
                self._content_type = value.lower()
            if name in ("cookie", "set-cookie"):
                for pair in value.split(";"):
                    cookie_value = pair.strip().partition("=")[2]
                    if cookie_value:
                        self._known |= _forms(cookie_value)
            if is_secret_name(name):
                self._known |= _forms(value)
                scheme, _, credential = value.partition(" ")
                if credential and scheme.lower() in ("bearer", "basic", "token", "digest"):
                    self._known |= _forms(credential.strip())
        query = query_string.decode("latin-1")
        for name, value in parse_qsl(query, keep_blank_values=True):
            if is_secret_name(name):
                self._known |= _forms(value)

    def add_body(self, chunk: bytes) -> None:
        room = MAX_BODY_BYTES - len(self._body)
        if room > 0 and chunk:
            self._body += chunk[:room]

    def values(self, with_body: bool) -> set[str]:
        if with_body and len(self._body) > self._parsed:
            self._parsed = len(self._body)
            self._known |= self._body_values(bytes(self._body))
        return self._known

    def _body_values(self, body: bytes) -> set[str]:
        text = body.decode("utf-8", "replace")
        if "json" in self._content_type:
            try:
                return secret_values_of(json.loads(text))
            except (ValueError, RecursionError):
                # A cut, broken or too deeply nested body (logging its refusal must not fail in
                # turn): the patterns still mask "name": "value".
                return set()
        if "x-www-form-urlencoded" in self._content_type:
            found: set[str] = set()
            for name, value in parse_qsl(text, keep_blank_values=True):
                if is_secret_name(name):
                    found |= _forms(value)
            return found
        return set()


_REQUEST: contextvars.ContextVar[RequestSecrets | None] = contextvars.ContextVar(
    "bulletin_request_secrets", default=None
)


def watch(secrets: RequestSecrets) -> contextvars.Token[RequestSecrets | None]:
    """Make ``secrets`` the current request's (until :func:`unwatch` with the token)."""
    return _REQUEST.set(secrets)


def unwatch(token: contextvars.Token[RequestSecrets | None]) -> None:
    _REQUEST.reset(token)


def known_secrets(with_body: bool = True) -> list[str]:
    """The current request's secret values, longest first (so none is left half masked)."""
    current = _REQUEST.get()
    if current is None:
        return []
    return sorted(current.values(with_body), key=len, reverse=True)


# --- The processor -------------------------------------------------------------------------

_LOUD = frozenset({"warning", "warn", "error", "critical", "exception", "fatal"})
_PLAIN = (int, float, bool, type(None))


def _clean(value: Any, known: list[str], depth: int) -> Any:
    if isinstance(value, str):
        return mask(value, known)
    if isinstance(value, _PLAIN):
        return value
    if depth >= MAX_DEPTH:
        return REDACTED
    if isinstance(value, Mapping):
        return {
            key: REDACTED
            if isinstance(key, str) and is_secret_name(key)
            else _clean(item, known, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(item, known, depth + 1) for item in value]
    if isinstance(value, bytes | bytearray):
        return mask(bytes(value).decode("utf-8", "replace"), known)
    return mask(repr(value), known)


ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def _exc_info(given: Any) -> ExcInfo | None:
    if isinstance(given, BaseException):
        return type(given), given, given.__traceback__
    if isinstance(given, tuple) and len(given) == 3 and given[1] is not None:
        return given
    if given is True:
        current = sys.exc_info()
        if current[1] is not None:
            return current
    return None


def traceback_text(exc_info: ExcInfo, known: Iterable[str] = ()) -> str:
    """A traceback as plain text, never with local variables. Its code lines are kept as they
    are (source code holds no runtime secret); its exception messages are masked."""
    chunks = traceback.TracebackException(*exc_info, capture_locals=False).format()
    kept = [chunk if chunk.startswith(_CODE_CHUNKS) else mask(chunk, known) for chunk in chunks]
    return "".join(kept).rstrip("\n")


#: How the chunks of ``TracebackException.format`` that are not exception messages start.
_CODE_CHUNKS = ("Traceback (most recent call last):", '  File "', "    [Previous line repeated")


def redact(
    _logger: Any, method_name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """The structlog processor that takes secrets out of every line (see the module's
    docstring). It renders an ``exc_info`` into an ``exception`` string itself, so it must
    come before the renderer, and no renderer sees the exception object."""
    exc_info = _exc_info(event_dict.pop("exc_info", None))
    loud = method_name in _LOUD or exc_info is not None or "exception" in event_dict
    known = known_secrets(with_body=loud)
    for key in list(event_dict):
        if key.startswith("_"):  # structlog's own (the LogRecord of a foreign line)
            continue
        if is_secret_name(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _clean(event_dict[key], known, 0)
    if exc_info is not None:
        event_dict["exception"] = traceback_text(exc_info, known)
    return event_dict


class _WithoutAlembicPreamble(logging.Filter):
    """Drops the two lines Alembic logs each time it looks at a database (which dialect, and
    whether DDL is transactional): ``/ready`` looks at each probe. Its migration steps stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(("Context impl ", "Will assume "))


def configure(level: str = "info", fmt: str = "console") -> None:
    """Set up structlog and the standard library's logging. Call once, from an entry point."""
    numeric = logging.getLevelName(level.upper())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(),
            # ``redact`` has rendered any exception already; should one still arrive, no
            # locals (the rich formatter's default shows them, with every secret in scope).
            exception_formatter=structlog.dev.plain_traceback,
        )
    )
    # ``redact`` turns exceptions into plain text (no locals) for both formats.
    finishing: list[structlog.typing.Processor] = [redact, renderer]
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, *finishing],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *finishing],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    alembic = logging.getLogger("alembic.runtime.migration")
    if not any(isinstance(f, _WithoutAlembicPreamble) for f in alembic.filters):
        alembic.addFilter(_WithoutAlembicPreamble())
