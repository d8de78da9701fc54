"""Pieces of HTTP shared by the adapters that call providers over HTTP."""

from __future__ import annotations

import datetime as dt
import email.utils
import socket
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from structlog.typing import FilteringBoundLogger

from bulletin.channels.egress import NOT_ALLOWED, AddressNotAllowed, Resolver, guarded_socket
from bulletin.errors import TransientSendError

#: A provider's Retry-After is honoured up to an hour; beyond that it is most likely a mistake.
LONGEST_RETRY_AFTER = 3600.0


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - dt.datetime.now(dt.UTC)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), LONGEST_RETRY_AFTER)


#: How long to wait after an answer that only an operator can fix (credentials, a bad URL).
ACCOUNT_RETRY_SECONDS = 60.0


class HttpsRequired(aiohttp.InvalidURL):
    """A provider URL that is not ``https``, while only public providers are allowed."""


async def _https_only(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    if request.url.scheme != "https":
        raise HttpsRequired(request.url, "must be https")
    return await handler(request)


class _ResolverAdapter(AbstractResolver):
    """Lets aiohttp resolve names with a :data:`~bulletin.channels.egress.Resolver`."""

    def __init__(self, resolve: Resolver) -> None:
        self._resolve = resolve

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        flags = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
        return [
            ResolveResult(
                hostname=host,
                host=str(sockaddr[0]),
                port=int(sockaddr[1]),
                family=found,
                proto=proto,
                flags=flags,
            )
            for found, _, proto, _, sockaddr in await self._resolve(host, port)
            if not family or found == family
        ]

    async def close(self) -> None:
        return None


def provider_session(
    *, allow_private: bool, resolver: Resolver | None = None
) -> aiohttp.ClientSession:
    """The HTTP client that calls providers: one connection pool for every adapter.

    Unless ``allow_private``, it only speaks ``https`` and only connects to public addresses:
    each address is checked right before its socket connects (see
    :mod:`bulletin.channels.egress`), whatever the name resolved to earlier. ``resolver``
    replaces the system's name resolution (tests use it to map names to local addresses).
    """
    # No overall limit: concurrency is bounded by the worker's max_in_flight.
    connector = aiohttp.TCPConnector(
        limit=0,
        limit_per_host=0,
        resolver=_ResolverAdapter(resolver) if resolver is not None else None,
        socket_factory=None if allow_private else guarded_socket,
    )
    middlewares = () if allow_private else (_https_only,)
    return aiohttp.ClientSession(connector=connector, middlewares=middlewares)


@dataclass(frozen=True, slots=True)
class Answer:
    """What came back from a provider: the status and body, or the error that cut it off.

    ``status`` is set as soon as the status line arrived, even if the body was then lost
    (``error`` is set and ``body`` is ``None``).
    """

    status: int | None
    retry_after: float | None
    body: bytes | None
    error: aiohttp.ClientError | None = None


async def exchange(
    session: aiohttp.ClientSession,
    url: str,
    *,
    provider: str,
    bound: FilteringBoundLogger,
    **request: Any,
) -> Answer:
    """POST to a provider.

    A connection that could not be made, or that broke while the request was being written,
    is a transient error: nothing was taken. Anything that breaks later comes back in
    :attr:`Answer.error` for the adapter to judge, since only it knows whether the request
    could have been taken.
    """
    status: int | None = None
    retry_after: float | None = None
    event = provider.lower().replace(" ", "_")
    try:
        async with session.post(url, allow_redirects=False, **request) as response:
            status = response.status
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return Answer(status, retry_after, await response.read())
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, AddressNotAllowed):
            raise _not_allowed(bound, event, url) from exc
        # What answered, or did not, is for the operator's log: the text goes to tenants.
        bound.info(f"{event}.connect_failed", error=repr(exc))
        raise TransientSendError(f"could not connect to {provider}") from exc
    except aiohttp.ConnectionTimeoutError as exc:
        bound.info(f"{event}.connect_failed", error=repr(exc))
        raise TransientSendError(f"could not connect to {provider} in time") from exc
    except HttpsRequired as exc:
        bound.warning(f"{event}.https_required", url=url)
        raise TransientSendError(
            f"the URL of {provider} is not allowed: it must be https",
            retry_after=ACCOUNT_RETRY_SECONDS,
            slow_down=True,
        ) from exc
    except aiohttp.InvalidURL as exc:
        bound.error(f"{event}.bad_base_url", url=url, error=repr(exc))
        raise TransientSendError(
            f"the URL of {provider} is not valid",
            retry_after=ACCOUNT_RETRY_SECONDS,
            slow_down=True,
        ) from exc
    except aiohttp.ClientError as exc:
        if status is None and failed_while_writing(exc):
            bound.info(f"{event}.write_failed", error=repr(exc))
            raise TransientSendError(
                f"the connection to {provider} failed before the request was sent"
            ) from exc
        return Answer(status, retry_after, None, exc)


def _not_allowed(bound: FilteringBoundLogger, event: str, url: str) -> TransientSendError:
    """A provider address refused by the policy: the account pauses until an admin fixes it."""
    bound.warning(
        f"{event}.address_not_allowed",
        url=url,
        hint="the provider's address resolves to a non-public address; fix the configuration "
        "or set BULLETIN_ALLOW_PRIVATE_PROVIDER_ADDRESSES=true for a provider on this network",
    )
    return TransientSendError(NOT_ALLOWED, retry_after=ACCOUNT_RETRY_SECONDS, slow_down=True)


def failed_while_writing(exc: aiohttp.ClientError) -> bool:
    """Whether the request cannot have reached the provider whole.

    aiohttp raises ClientConnectionResetError when the connection was gone before the
    request could be written, and reports a failed body write as a ClientOSError.
    """
    if isinstance(exc, aiohttp.ClientConnectionResetError):
        return True
    return isinstance(exc, aiohttp.ClientOSError) and "Can not write request body" in str(exc)
