"""Builds a provider adapter from its configuration; owns the HTTP client they share."""

from __future__ import annotations

import aiohttp

from bulletin.channels.base import Provider
from bulletin.channels.configs import (
    AnyProviderConfig,
    SmtpConfig,
    TwilioConfig,
    WhatsAppCloudConfig,
)
from bulletin.config import Settings


class ProviderFactory:
    """Makes adapters for one process. One aiohttp session (one connection pool) serves all."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No overall limit: concurrency is bounded by the worker's max_in_flight.
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def build(self, config: AnyProviderConfig) -> Provider:
        # Adapters are imported when first configured: a sandbox-only process never loads them.
        from bulletin.channels.smtp import SmtpProvider
        from bulletin.channels.twilio import TwilioProvider
        from bulletin.channels.whatsapp import WhatsAppCloudProvider

        timeout = self._settings.provider_connect_timeout_seconds
        if isinstance(config, WhatsAppCloudConfig):
            return WhatsAppCloudProvider(config, self._http(), connect_timeout=timeout)
        if isinstance(config, TwilioConfig):
            callback = f"{self._settings.base_url}/v1/webhooks/twilio"
            return TwilioProvider(
                config, self._http(), status_callback_url=callback, connect_timeout=timeout
            )
        if isinstance(config, SmtpConfig):
            return SmtpProvider(config, connect_timeout=timeout)
        raise TypeError(f"no adapter for {type(config).__name__}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
