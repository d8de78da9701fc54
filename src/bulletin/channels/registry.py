"""Which provider sends a given organization's messages on a given channel.

Three sources, first match wins:

1. the organization's own configuration (``PUT /v1/channels/{name}``), read from the
   database and refreshed every few seconds, so every worker picks up a change;
2. providers configured for every organization (environment settings, or given directly);
3. the default, the sandbox.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping

import structlog

from bulletin.channels.base import Provider
from bulletin.channels.configs import AnyProviderConfig

log = structlog.get_logger("bulletin.channels")

#: Stored configurations: (org, channel) -> (version, configuration), or only the versions.
Versions = dict[tuple[uuid.UUID, str], int]
#: Given the versions a registry has, the ones that changed; ``(-1, None)`` marks a removal.
StoredLoader = Callable[
    [Versions], Awaitable[dict[tuple[uuid.UUID, str], tuple[int, AnyProviderConfig | None]]]
]
#: Builds the adapter of a configuration; the second argument is the account's webhook key.
Builder = Callable[[AnyProviderConfig, str], Provider]


class ChannelRegistry:
    """Providers by organization and channel, with the sandbox for anything not configured."""

    def __init__(
        self,
        default: Provider,
        by_channel: Mapping[str, Provider] | None = None,
        *,
        configs: Mapping[str, AnyProviderConfig] | None = None,
        stored: StoredLoader | None = None,
        build: Builder | None = None,
        refresh_seconds: float = 2.0,
    ) -> None:
        self._default = default
        self._by_channel = dict(by_channel or {})
        self._configs: dict[str, AnyProviderConfig] = dict(configs or {})
        self._stored = stored
        self._build = build
        self._refresh_seconds = refresh_seconds
        self._refreshed_at = float("-inf")
        self._own: dict[tuple[uuid.UUID, str], tuple[int, AnyProviderConfig, Provider]] = {}
        self._retired: list[Provider] = []
        self._started = False

    def provider_for(self, org_id: uuid.UUID, channel: str) -> Provider:
        own = self._own.get((org_id, channel))
        if own is not None:
            return own[2]
        return self._by_channel.get(channel, self._default)

    def config_for(self, org_id: uuid.UUID, channel: str) -> AnyProviderConfig | None:
        """The configuration behind :meth:`provider_for`, when it is a real provider."""
        own = self._own.get((org_id, channel))
        if own is not None:
            return own[1]
        return self._configs.get(channel) if channel in self._by_channel else None

    async def confirm_unconfigured(
        self, keys: Iterable[tuple[uuid.UUID, str]], since: float
    ) -> None:
        """Look again before anything goes to the default provider.

        ``since`` is when (``time.monotonic()``) the work at hand was read from the database.
        A configuration saved before that, by another process, may not have been seen yet;
        sending to the sandbox instead would drop the message.
        """
        if self._stored is None or self._refreshed_at >= since:
            return
        if any(key not in self._own and key[1] not in self._by_channel for key in keys):
            await self.refresh(force=True)

    async def refresh(self, *, force: bool = False) -> None:
        """Pick up configurations changed since the last look (at most every few seconds)."""
        if self._stored is None or self._build is None:
            return
        if not force and time.monotonic() - self._refreshed_at < self._refresh_seconds:
            return
        self._refreshed_at = time.monotonic()
        known = {key: version for key, (version, _, _) in self._own.items()}
        changed = await self._stored(known)
        for key, (version, config) in changed.items():
            old = self._own.get(key)
            if config is None:
                if old is not None:
                    self._retired.append(self._own.pop(key)[2])
                continue
            provider = self._build(config, str(key[0]))
            if self._started:
                await provider.start()
            if old is not None:
                self._retired.append(old[2])
            self._own[key] = (version, config, provider)
            log.info("channels.configured", org_id=str(key[0]), channel=key[1], version=version)

    def _all(self) -> list[Provider]:
        unique: dict[int, Provider] = {id(self._default): self._default}
        unique.update({id(p): p for p in self._by_channel.values()})
        unique.update({id(p): p for _, _, p in self._own.values()})
        unique.update({id(p): p for p in self._retired})
        return list(unique.values())

    async def start(self) -> None:
        self._started = True
        for provider in self._all():
            await provider.start()

    async def close(self) -> None:
        for provider in self._all():
            await provider.close()
        self._retired.clear()
