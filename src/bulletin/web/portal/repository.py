"""Every query about portal users and their sessions."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.web.portal.models import PortalSession, PortalUser


async def email_taken(session: AsyncSession, email: str) -> bool:
    """Whether a portal user, of any organization, signs in with ``email``."""
    taken = await session.execute(select(PortalUser.id).where(PortalUser.email == email))
    return taken.first() is not None


async def add_user(session: AsyncSession, user: PortalUser) -> None:
    session.add(user)
    await session.flush()


async def user_by_email(session: AsyncSession, email: str) -> PortalUser | None:
    return (
        await session.execute(select(PortalUser).where(PortalUser.email == email))
    ).scalar_one_or_none()


async def replace_sessions(session: AsyncSession, portal_session: PortalSession) -> None:
    """Make ``portal_session`` the only session of its user: every other one is deleted."""
    await session.execute(
        delete(PortalSession).where(PortalSession.user_id == portal_session.user_id)
    )
    session.add(portal_session)
    await session.flush()


async def session_with_user(
    session: AsyncSession, stored_id: str
) -> tuple[PortalSession, PortalUser] | None:
    """The session stored as ``stored_id`` and its user, if there is one."""
    row = (
        await session.execute(
            select(PortalSession, PortalUser)
            .join(PortalUser, PortalUser.id == PortalSession.user_id)
            .where(PortalSession.id == stored_id)
        )
    ).first()
    return None if row is None else (row[0], row[1])


async def delete_session(session: AsyncSession, stored_id: str) -> None:
    await session.execute(delete(PortalSession).where(PortalSession.id == stored_id))
