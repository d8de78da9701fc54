"""Bulletin's exceptions. Every error the package raises on purpose derives from one root.

::

    BulletinError
    ├── NotFound                 the thing does not exist for this organization
    ├── Conflict                 the thing exists, but its state forbids the action
    │   └── RequestInProgress    an identical request (same Idempotency-Key) is still running
    ├── InvalidRequest           well-formed input that breaks a rule (carries field errors)
    │   └── IdempotencyKeyReused the key was used before with another request
    ├── AuthenticationFailed     no key, or a key that is unknown or revoked
    ├── PermissionDenied         the key's scope does not allow the action
    └── ChannelError             raised by channel adapters, never by anything else
        ├── TransientSendError   the provider did not take it; trying later may work
        ├── PermanentSendError   the provider refused it; trying again will not help
        │   └── WindowClosed     free text refused: the conversation window is closed
        └── InDoubtSendError     the request may have reached the provider; outcome unknown

Nothing here knows about HTTP: ``bulletin.api.problems`` maps these to status codes.
"""

from __future__ import annotations

from dataclasses import dataclass


class BulletinError(Exception):
    """Root of every error Bulletin raises on purpose."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(BulletinError):
    """The resource does not exist, or belongs to another organization (same answer, by design)."""


class Conflict(BulletinError):
    """The resource's current state does not allow the requested change."""


class RequestInProgress(Conflict):
    """A request with the same Idempotency-Key is still being processed."""


@dataclass(frozen=True)
class FieldError:
    """One reason a request was rejected, pointing at the offending field."""

    loc: tuple[str | int, ...]
    message: str
    type: str = "value_error"


class InvalidRequest(BulletinError):
    """Input that parsed but breaks a rule, such as an audience naming unknown recipients."""

    def __init__(self, detail: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(detail)
        self.errors = errors or []


class IdempotencyKeyReused(InvalidRequest):
    """The Idempotency-Key was already used with a different request body or path."""


class AuthenticationFailed(BulletinError):
    """The request carries no API key, or one that is unknown or revoked."""


class PermissionDenied(BulletinError):
    """The API key is valid but its scope does not cover the action."""


class ChannelError(BulletinError):
    """A provider call did not end in acceptance. Only channel adapters raise these."""


class TransientSendError(ChannelError):
    """The provider did not accept the message, and a later attempt may succeed.

    ``retry_after`` is the provider's own hint (seconds), when it gave one. ``slow_down`` says
    the whole provider account is over its rate limit: every worker then pauses that account
    for ``retry_after`` seconds, instead of this one message being retried in a tight loop.
    """

    def __init__(
        self, detail: str, *, retry_after: float | None = None, slow_down: bool = False
    ) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.slow_down = slow_down


class PermanentSendError(ChannelError):
    """The provider refused the message for good (bad address, blocked, content rejected).

    ``suppress_address`` asks for the address to be put on the organization's suppression list
    (a hard bounce, a recipient who replied STOP), so that nothing is sent to it again.
    """

    def __init__(self, detail: str, *, suppress_address: bool = False) -> None:
        super().__init__(detail)
        self.suppress_address = suppress_address


class WindowClosed(PermanentSendError):
    """The provider refused the message because the person's conversation window is closed
    (WhatsApp's 131047, re-engagement required). Nothing was sent.

    Only a free-form message needs an open window: the engine records the window as closed and
    sends the approved template instead, if there is one. A template refused this way is a
    permanent refusal like any other.
    """


class InDoubtSendError(ChannelError):
    """The request may have reached the provider but no answer came (a timeout after sending).

    The delivery is then handled by the channel's in-doubt policy, exactly as an expired lease.
    """
