"""Builds a provider adapter from its configuration; owns the HTTP client they share."""

from __future__ import annotations

import aiohttp

from bulletin.channels.accounts import webhook_path
from bulletin.channels.base import DEFAULT_ACCOUNT, Provider
from bulletin.channels.configs import (
    AnyProviderConfig,
    SmtpConfig,
    TwilioConfig,
    WhatsAppCloudConfig,
)
from bulletin.channels.egress import Resolver
from bulletin.channels.http import provider_session
from bulletin.config import Settings


class ProviderFactory:
    """Makes adapters for one process. One aiohttp session (one connection pool) serves all."""

    def __init__(self, settings: Settings, *, resolver: Resolver | None = None) -> None:
        self._settings = settings
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = provider_session(
                allow_private=self._settings.allow_private_provider_addresses,
                resolver=self._resolver,
            )
        return self._session

    def build(self, config: AnyProviderConfig, account_key: str = DEFAULT_ACCOUNT) -> Provider:
        """The adapter of one configured account; ``account_key`` is what its webhooks are
        keyed by (the organization's id for its own account, ``default`` for the
        environment's), recorded on every delivery it accepts and put in its callback URLs."""
        # Adapters are imported when first configured: a sandbox-only process never loads them.
        from bulletin.channels.smtp import SmtpProvider
        from bulletin.channels.twilio import TwilioProvider
        from bulletin.channels.whatsapp import WhatsAppCloudProvider

        timeout = self._settings.provider_connect_timeout_seconds
        if isinstance(config, WhatsAppCloudConfig):
            return WhatsAppCloudProvider(
                config, self._http(), account_key=account_key, connect_timeout=timeout
            )
        if isinstance(config, TwilioConfig):
            callback = self._settings.base_url + webhook_path("sms", account_key)
            return TwilioProvider(
                config,
                self._http(),
                account_key=account_key,
                status_callback_url=callback,
                connect_timeout=timeout,
            )
        if isinstance(config, SmtpConfig):
            return SmtpProvider(
                config,
                connect_timeout=timeout,
                allow_private=self._settings.allow_private_provider_addresses,
                resolver=self._resolver,
            )
        raise TypeError(f"no adapter for {type(config).__name__}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
