"""A local webhook endpoint for tests: it verifies every request as a receiver would, with the
Standard Webhooks reference package, records it, and answers what the test says."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from support.processes import free_port


@dataclass(frozen=True)
class Received:
    webhook_id: str
    timestamp: int
    body: bytes
    payload: dict[str, Any]


@dataclass
class Receiver:
    """Answers each request with ``answer(webhook_id, nth)`` (``nth``: 1 for the first time
    this id arrives); a request whose signature does not verify is answered 400 and kept in
    ``refused``."""

    secret: str = ""
    answer: Callable[[str, int], int] = lambda _id, _nth: 200
    #: Awaited before each answer (a slow receiver).
    before_answer: Callable[[], Awaitable[None]] | None = None
    received: list[Received] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    @property
    def by_id(self) -> dict[str, list[Received]]:
        found: dict[str, list[Received]] = defaultdict(list)
        for r in self.received:
            found[r.webhook_id].append(r)
        return dict(found)

    def payloads(self, kind: str | None = None) -> list[dict[str, Any]]:
        """One payload per webhook-id (deduplicated as a receiver would), of ``kind`` if given."""
        unique = [tries[0].payload for tries in self.by_id.values()]
        return [p for p in unique if kind is None or p["type"] == kind]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            payload = Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            self.refused.append(f"{request.headers.get('webhook-id')}: {exc}")
            return web.Response(status=400)
        assert request.headers["content-type"] == "application/json"
        webhook_id = request.headers["webhook-id"]
        nth = 1 + sum(1 for r in self.received if r.webhook_id == webhook_id)
        self.received.append(
            Received(webhook_id, int(request.headers["webhook-timestamp"]), body, payload)
        )
        if self.before_answer is not None:
            await self.before_answer()
        return web.Response(status=self.answer(webhook_id, nth), text=json.dumps({"ok": True}))

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
