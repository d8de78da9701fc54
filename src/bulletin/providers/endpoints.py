"""HTTP routes that set which provider sends an organization's messages on each channel."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Path, Response

from bulletin.api.deps import ServicesDep
from bulletin.api.problems import responses
from bulletin.channels.configs import ProviderConfig
from bulletin.orgs.auth import Admin, Reader
from bulletin.providers import schemas, service
from bulletin.services import Services

router = APIRouter(
    prefix="/v1/channels", tags=["channels"], responses=responses(401, 403, 422, 503)
)

ChannelPath = Annotated[
    Literal["whatsapp", "email", "sms"], Path(description="whatsapp, email or sms")
]


@router.get("", response_model=schemas.ChannelList)
async def list_channels(principal: Reader, services: ServicesDep) -> schemas.ChannelList:
    """Each channel and the provider it uses: the organization's own, the environment's, or
    the sandbox. Secrets are never shown, only which are set."""
    async with services.db.read() as session:
        items = await service.list_all(
            session, service.secret_box(services.settings), services.settings, principal.org_id
        )
    return schemas.ChannelList(items=items)


@router.get("/{channel}", response_model=schemas.ChannelOut)
async def get_channel(
    channel: ChannelPath, principal: Reader, services: ServicesDep
) -> schemas.ChannelOut:
    async with services.db.read() as session:
        return await service.get(
            session,
            service.secret_box(services.settings),
            services.settings,
            principal.org_id,
            channel,
        )


@router.put(
    "/{channel}",
    response_model=schemas.ChannelOut,
    responses={
        201: {"model": schemas.ChannelOut, "description": "Created"},
        **responses(409, 413),
    },
)
async def put_channel(
    channel: ChannelPath,
    config: Annotated[ProviderConfig, Body()],
    principal: Admin,
    services: ServicesDep,
    response: Response,
) -> schemas.ChannelOut:
    """Configure the organization's provider for a channel. Secret fields are write-only:
    leave one out to keep the stored value. Workers use the new configuration within
    ``BULLETIN_CHANNEL_REFRESH_SECONDS``."""
    config.check_addresses(allow_private=services.settings.allow_private_provider_addresses)
    async with services.db.transaction() as session:
        out, created = await service.put(
            session, service.secret_box(services.settings), principal.org_id, channel, config
        )
    response.status_code = 201 if created else 200
    await _use_now(services)
    return service.with_webhook_url(out, services.settings, principal.org_id)


async def _use_now(services: Services) -> None:
    # The engine of this process uses the change at once; others within the refresh interval.
    if services.engine is not None:
        await services.registry.refresh(force=True)


@router.delete("/{channel}", status_code=204, responses=responses(404))
async def delete_channel(channel: ChannelPath, principal: Admin, services: ServicesDep) -> Response:
    """Remove the organization's own provider; the channel falls back to the environment's
    provider or the sandbox."""
    async with services.db.transaction() as session:
        await service.remove(session, principal.org_id, channel)
    await _use_now(services)
    return Response(status_code=204)
