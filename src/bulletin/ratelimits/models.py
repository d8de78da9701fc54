"""Tables of the abuse limits: shared rate-limit windows, used sign-in nonces, sign-in failures."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from bulletin.db import Base, UTCDateTime


class RateLimitWindow(Base):
    """Quota units of one rate-limit key in one fixed window, reserved by all processes together.

    ``bucket`` is the window's number (seconds since the epoch divided by the window's length).
    ``reserved`` only grows; ``last_grant`` is what the latest reservation obtained (read back
    by that reservation in the same statement). Rows outlive their window by one window, as the
    sliding-window count weighs the previous window too, then go.
    """

    __tablename__ = "rate_limit_windows"
    __table_args__ = (Index("ix_rate_limit_windows_expires_at", "expires_at"),)

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    reserved: Mapped[int] = mapped_column(BigInteger)
    last_grant: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class UsedSignInNonce(Base):
    """A sign-in form's nonce that was posted once; ``id`` is its SHA-256. Kept as long as the
    form's cookie could still carry it."""

    __tablename__ = "used_sign_in_nonces"
    __table_args__ = (Index("ix_used_sign_in_nonces_expires_at", "expires_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class SignInThrottle(Base):
    """Sign-in attempts since the last success of one account or one client address.

    ``subject`` is ``account:<email>`` or ``address:<ip>``. Every attempt counts until it
    succeeds; from a threshold on, the next attempt must wait until ``blocked_until``.
    """

    __tablename__ = "sign_in_throttles"

    subject: Mapped[str] = mapped_column(String(400), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    last_failure_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    blocked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
