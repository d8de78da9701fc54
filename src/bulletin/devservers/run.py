"""The three stand-ins in one process, wired to a running Bulletin: ``bulletin devservers``.

:class:`DevServers` runs the WhatsApp Cloud API, Twilio and SMTP stand-ins on loopback ports
with credentials made for the occasion, as strict as the real services (the WhatsApp one
enforces the 24-hour window and knows one approved template; the Twilio one one sending
number), and plays the providers' other half the way they do:

* each WhatsApp message accepted is followed by its ``sent`` and ``delivered`` status webhooks,
  posted to Bulletin's webhook address of the installation's own account (``default``) and
  signed with the app secret; free text to a person whose window is closed gets the ``failed``
  status (131047) that Meta sends instead;
* each SMS by the same statuses, posted to the ``StatusCallback`` the message named and signed
  with the auth token;
* email has no receipts.

A webhook Bulletin cannot take yet (not started, 5xx) is posted again a few times; one it
refuses (401: it runs with other secrets) is given up, and the log says why.

:meth:`DevServers.environment` is the settings that point Bulletin at the stand-ins; with them,
real adapters send and receipts come back, with no provider account.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import shlex
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiohttp
import structlog

from bulletin.channels.accounts import DEFAULT_ACCOUNT, webhook_path
from bulletin.devservers.smtp import ReceivedEmail, SmtpServer
from bulletin.devservers.twilio import AcceptedSms, TwilioServer
from bulletin.devservers.whatsapp import AcceptedMessage, WhatsAppCloudServer

log = structlog.get_logger("bulletin.devservers")

HOST = "127.0.0.1"
#: The one template the WhatsApp stand-in knows as approved; Bulletin is told to use it.
TEMPLATE = "bulletin_notice"
#: The statuses each accepted WhatsApp message and SMS goes through, in order.
RECEIPTS = ("sent", "delivered")
#: How often the stand-ins' ledgers are looked at for what they accepted since.
POLL_SECONDS = 0.2
#: Posts of one webhook before it is given up, and the longest wait between two.
WEBHOOK_ATTEMPTS = 8
WEBHOOK_MAX_DELAY_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Credentials:
    """What Bulletin and the stand-ins share: ids, tokens and secrets, made per run."""

    whatsapp_phone_number_id: str
    whatsapp_access_token: str
    whatsapp_app_secret: str
    whatsapp_verify_token: str
    twilio_account_sid: str
    twilio_auth_token: str
    twilio_from: str
    smtp_username: str
    smtp_password: str
    smtp_from: str

    @classmethod
    def generate(cls) -> Credentials:
        """New random secrets (and fixed, fictitious numbers and addresses)."""
        return cls(
            whatsapp_phone_number_id="1" + "".join(secrets.choice("0123456789") for _ in range(14)),
            whatsapp_access_token="EAAG" + secrets.token_urlsafe(32),
            whatsapp_app_secret=secrets.token_hex(16),
            whatsapp_verify_token=secrets.token_urlsafe(16),
            twilio_account_sid="AC" + secrets.token_hex(16),
            twilio_auth_token=secrets.token_hex(16),
            twilio_from="+14155550100",
            smtp_username="bulletin",
            smtp_password=secrets.token_urlsafe(16),
            smtp_from="bulletin@example.com",
        )


class DevServers:
    """The WhatsApp Cloud API, Twilio and SMTP stand-ins on ``127.0.0.1``, sending receipts
    to the Bulletin at ``bulletin_url``. Use as ``async with DevServers(...) as servers``.

    A port of 0 (the default) takes any free one; :meth:`environment` names the ones in use
    once started.
    """

    def __init__(
        self,
        *,
        bulletin_url: str,
        whatsapp_port: int = 0,
        twilio_port: int = 0,
        smtp_port: int = 0,
        credentials: Credentials | None = None,
        receipt_delay: float = 1.0,
    ) -> None:
        self.credentials = c = credentials or Credentials.generate()
        self.bulletin_url = bulletin_url.rstrip("/")
        #: Where the WhatsApp stand-in posts its webhooks: the installation's own account's.
        self.whatsapp_webhook_url = self.bulletin_url + webhook_path("whatsapp", DEFAULT_ACCOUNT)
        #: Seconds between a message's acceptance and each of its receipts.
        self.receipt_delay = receipt_delay
        self.whatsapp = WhatsAppCloudServer(
            access_token=c.whatsapp_access_token,
            phone_number_id=c.whatsapp_phone_number_id,
            port=whatsapp_port,
            templates={TEMPLATE},
            # The Cloud API refuses free text outside the person's 24-hour window.
            enforce_window=True,
            webhook_url=self.whatsapp_webhook_url,
            app_secret=c.whatsapp_app_secret,
        )
        self.twilio = TwilioServer(
            account_sid=c.twilio_account_sid,
            auth_token=c.twilio_auth_token,
            host=HOST,
            port=twilio_port,
            senders=[c.twilio_from],
        )
        self.smtp = SmtpServer(
            security="none",
            username=c.smtp_username,
            password=c.smtp_password,
            port=smtp_port,
        )
        self._stack = contextlib.AsyncExitStack()
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._seen = {"whatsapp": 0, "sms": 0, "email": 0}

    async def __aenter__(self) -> Self:
        try:
            await self._stack.enter_async_context(self.whatsapp)
            await self._stack.enter_async_context(self.twilio)
            await self._stack.enter_async_context(self.smtp)
            self._http = await self._stack.enter_async_context(
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
            )
        except BaseException:
            await self._stack.aclose()
            raise
        self._spawn(self._watch())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stack.aclose()

    def environment(self) -> dict[str, str]:
        """The ``BULLETIN_*`` settings that point Bulletin at these stand-ins."""
        c = self.credentials
        return {
            # The stand-ins are on loopback and speak plain http and SMTP.
            "BULLETIN_ALLOW_PRIVATE_PROVIDER_ADDRESSES": "true",
            "BULLETIN_WHATSAPP_PHONE_NUMBER_ID": c.whatsapp_phone_number_id,
            "BULLETIN_WHATSAPP_ACCESS_TOKEN": c.whatsapp_access_token,
            "BULLETIN_WHATSAPP_APP_SECRET": c.whatsapp_app_secret,
            "BULLETIN_WHATSAPP_VERIFY_TOKEN": c.whatsapp_verify_token,
            "BULLETIN_WHATSAPP_BASE_URL": self.whatsapp.base_url,
            "BULLETIN_WHATSAPP_API_VERSION": self.whatsapp.api_version,
            "BULLETIN_WHATSAPP_TEMPLATE": f"{TEMPLATE}:en",
            "BULLETIN_TWILIO_ACCOUNT_SID": c.twilio_account_sid,
            "BULLETIN_TWILIO_AUTH_TOKEN": c.twilio_auth_token,
            "BULLETIN_TWILIO_FROM": c.twilio_from,
            "BULLETIN_TWILIO_BASE_URL": self.twilio.base_url,
            "BULLETIN_SMTP_HOST": self.smtp.host,
            "BULLETIN_SMTP_PORT": str(self.smtp.port),
            "BULLETIN_SMTP_SECURITY": "none",
            "BULLETIN_SMTP_USERNAME": c.smtp_username,
            "BULLETIN_SMTP_PASSWORD": c.smtp_password,
            "BULLETIN_SMTP_FROM": c.smtp_from,
        }

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self) -> None:
        """Log what each stand-in accepted, and send the receipts of what can have any."""
        while True:
            whatsapp = self.whatsapp.accepted[self._seen["whatsapp"] :]
            sms = self.twilio.accepted[self._seen["sms"] :]
            email = self.smtp.received[self._seen["email"] :]
            self._seen["whatsapp"] += len(whatsapp)
            self._seen["sms"] += len(sms)
            self._seen["email"] += len(email)
            for message in whatsapp:
                self._on_whatsapp(message)
            for text in sms:
                log.info("devservers.sms_accepted", to=text.to, sid=text.sid, body=text.body)
                self._spawn(self._sms_receipts(text))
            for received in email:
                _log_email(received)
            await asyncio.sleep(POLL_SECONDS)

    def _on_whatsapp(self, message: AcceptedMessage) -> None:
        kind = message.body.get("type", "text")
        # No one writes to these stand-ins, so a window closed when the text came is closed
        # still: the stand-in has answered it with a failed status, and there is nothing more.
        if kind != "template" and not self.whatsapp.window_open(message.to):
            log.info(
                "devservers.whatsapp_window_closed",
                to=message.to,
                wamid=message.wamid,
                note="free text outside the 24-hour window: a failed status (131047) follows",
            )
            return
        log.info("devservers.whatsapp_accepted", to=message.to, type=kind, wamid=message.wamid)
        self._spawn(self._whatsapp_receipts(message))

    async def _whatsapp_receipts(self, message: AcceptedMessage) -> None:
        for status in RECEIPTS:
            await asyncio.sleep(self.receipt_delay)
            payload = await self.whatsapp.send_status(message.wamid, status, post=False)
            post = functools.partial(self.whatsapp.post, payload)
            if not await _deliver("whatsapp", status, self.whatsapp_webhook_url, post):
                return

    async def _sms_receipts(self, text: AcceptedSms) -> None:
        if text.status_callback is None:
            return
        for status in RECEIPTS:
            await asyncio.sleep(self.receipt_delay)
            post = functools.partial(self._sms_status, text.sid, status)
            if not await _deliver("twilio", status, text.status_callback, post):
                return

    async def _sms_status(self, sid: str, status: str) -> int | None:
        if self._http is None:
            raise RuntimeError("the stand-ins are not started")
        try:
            return (await self.twilio.send_status(self._http, sid, status)).status
        except (aiohttp.ClientError, TimeoutError):
            return None


def _log_email(received: ReceivedEmail) -> None:
    log.info(
        "devservers.email_received",
        to=list(received.recipients),
        subject=str(received.message["Subject"]),
        message_id=str(received.message["Message-ID"]),
    )


async def _deliver(
    provider: str, status: str, url: str, post: Callable[[], Awaitable[int | None]]
) -> bool:
    """Post one webhook until Bulletin takes it; whether it did.

    ``post`` gives Bulletin's HTTP status, or ``None`` when it could not be reached. Not
    reached, or a 5xx (not started yet, its database away), is tried again later, as the
    providers do; a 4xx will not change, and ends it.
    """
    delay = 1.0
    for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
        answer = await post()
        if answer == 200:
            log.info("devservers.webhook_taken", provider=provider, status=status, url=url)
            return True
        if answer is not None and 400 <= answer < 500 and answer not in (408, 429):
            log.warning(
                "devservers.webhook_refused",
                provider=provider,
                status=status,
                url=url,
                answer=answer,
                hint="is Bulletin running with the settings `bulletin devservers` printed?",
            )
            return False
        if attempt == WEBHOOK_ATTEMPTS:
            break
        log.warning(
            "devservers.webhook_failed",
            provider=provider,
            status=status,
            url=url,
            answer=answer or "no connection",
            retry_in=delay,
        )
        await asyncio.sleep(delay)
        delay = min(delay * 2, WEBHOOK_MAX_DELAY_SECONDS)
    log.warning("devservers.webhook_given_up", provider=provider, status=status, url=url)
    return False


def environment_text(environment: dict[str, str]) -> str:
    """``environment`` as ``export NAME=value`` lines: for a POSIX shell, and for a ``.env``
    file (python-dotenv, and so Bulletin's settings, read that form too)."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in environment.items())
