"""Which provider sends a given organization's messages on a given channel."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from bulletin.channels.base import Provider


class ChannelRegistry:
    """Providers by channel, with a default (the sandbox) for every channel not configured."""

    def __init__(self, default: Provider, by_channel: Mapping[str, Provider] | None = None) -> None:
        self._default = default
        self._by_channel = dict(by_channel or {})

    def provider_for(self, org_id: uuid.UUID, channel: str) -> Provider:
        return self._by_channel.get(channel, self._default)

    def _all(self) -> list[Provider]:
        unique: dict[int, Provider] = {id(self._default): self._default}
        unique.update({id(p): p for p in self._by_channel.values()})
        return list(unique.values())

    async def start(self) -> None:
        for provider in self._all():
            await provider.start()

    async def close(self) -> None:
        for provider in self._all():
            await provider.close()
