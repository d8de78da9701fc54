"""End to end: Bulletin served over real HTTP, its engine sending to local protocol servers
(WhatsApp Cloud API, Twilio, SMTP) that call its webhooks back, as the real ones would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import pytest
import uvicorn

from bulletin.app import create_app
from bulletin.config import Settings
from bulletin.crypto import generate_key
from bulletin.devservers.smtp import SmtpServer
from bulletin.devservers.twilio import TwilioServer
from bulletin.devservers.whatsapp import WhatsAppCloudServer
from bulletin.orgs.keys import Scope
from conftest import Api, make_settings
from support.processes import free_port

WA_TOKEN = "EAAG-test-access-token"
WA_SECRET = "wa-app-secret"
WA_VERIFY = "wa-verify-token"
WA_NUMBER_ID = "100000000000001"
TW_SID = "AC" + "1" * 32
TW_TOKEN = "twilio-auth-token"
TW_FROM = "+14155550100"


@dataclass
class Stack:
    """A served Bulletin, its client, and the providers it talks to."""

    api: Api
    base_url: str
    whatsapp: WhatsAppCloudServer
    twilio: TwilioServer
    smtp: SmtpServer
    http: aiohttp.ClientSession
    settings: Settings

    async def configure(self, **whatsapp: Any) -> None:
        """Point the organization's three channels at the local providers."""
        configs: dict[str, dict[str, Any]] = {
            "whatsapp": {
                "provider": "whatsapp_cloud",
                "phone_number_id": WA_NUMBER_ID,
                "access_token": WA_TOKEN,
                "app_secret": WA_SECRET,
                "verify_token": WA_VERIFY,
                "base_url": self.whatsapp.base_url,
                "template": {
                    "name": "bulletin_notice",
                    "language": "en",
                    "parameters": ["{{ title }}", "{{ body }}"],
                },
                "pair_interval_seconds": 0,
                **whatsapp,
            },
            "sms": {
                "provider": "twilio",
                "account_sid": TW_SID,
                "auth_token": TW_TOKEN,
                "from_number": TW_FROM,
                "base_url": self.twilio.base_url,
                "rate_per_second": None,
            },
            "email": {
                "provider": "smtp",
                "host": self.smtp.host,
                "port": self.smtp.port,
                "security": "none",
                "from_address": "news@acme.example",
                "from_name": "Acme News",
            },
        }
        for channel, config in configs.items():
            response = await self.api.put(f"/v1/channels/{channel}", config, Scope.ADMIN)
            assert response.status_code in (200, 201), response.text


async def serve(settings: Settings, port: int) -> AsyncIterator[tuple[Api, uvicorn.Server]]:
    app = create_app(settings, run_worker=True)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        await app.state.services.startup.wait()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            api = Api(client, app.state.services)
            await api.new_org()
            yield api, server
    finally:
        server.should_exit = True
        await task


def served_settings(database_url: str, port: int) -> Settings:
    """The settings of a Bulletin served by :func:`serve` on ``port``, its links and callbacks
    naming that address, whose providers are local stand-ins on 127.0.0.1, reached over plain
    http."""
    return make_settings(
        database_url,
        public_url=f"http://127.0.0.1:{port}",
        secret_key=generate_key(),
        port=port,
        allow_private_provider_addresses=True,
    )


@pytest.fixture
async def stack(database_url: str) -> AsyncIterator[Stack]:
    port = free_port()
    settings = served_settings(database_url, port)
    async with (
        WhatsAppCloudServer(access_token=WA_TOKEN, phone_number_id=WA_NUMBER_ID) as whatsapp,
        TwilioServer(account_sid=TW_SID, auth_token=TW_TOKEN) as twilio,
        SmtpServer(security="none") as smtp,
        aiohttp.ClientSession() as http,
    ):
        async for api, _server in serve(settings, port):
            yield Stack(api, f"http://127.0.0.1:{port}", whatsapp, twilio, smtp, http, settings)
