"""Pieces of HTTP shared by the adapters that call providers over HTTP."""

from __future__ import annotations

import datetime as dt
import email.utils
from dataclasses import dataclass
from typing import Any

import aiohttp

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
    bound: Any,
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
    except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError) as exc:
        bound.info(f"{event}.connect_failed", error=repr(exc))
        raise TransientSendError(f"could not connect to {provider}: {exc!r}") from exc
    except aiohttp.InvalidURL as exc:
        bound.error(f"{event}.bad_base_url", url=url)
        raise TransientSendError(
            f"the {provider} URL is not valid: {exc!r}",
            retry_after=ACCOUNT_RETRY_SECONDS,
            slow_down=True,
        ) from exc
    except aiohttp.ClientError as exc:
        if status is None and failed_while_writing(exc):
            bound.info(f"{event}.write_failed", error=repr(exc))
            raise TransientSendError(
                f"the connection to {provider} failed before the request was sent: {exc!r}"
            ) from exc
        return Answer(status, retry_after, None, exc)


def failed_while_writing(exc: aiohttp.ClientError) -> bool:
    """Whether the request cannot have reached the provider whole.

    aiohttp raises ClientConnectionResetError when the connection was gone before the
    request could be written, and reports a failed body write as a ClientOSError.
    """
    if isinstance(exc, aiohttp.ClientConnectionResetError):
        return True
    return isinstance(exc, aiohttp.ClientOSError) and "Can not write request body" in str(exc)
