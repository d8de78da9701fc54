"""The client of a chaos run: people, then announcements and notifications, every POST sent
twice with the same ``Idempotency-Key``, through API processes that are being killed."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp

CHANNELS = ["whatsapp", "email"]


class ClientError(Exception):
    """Bulletin refused a request the harness believes is valid: a bug on one side."""


@dataclass
class Sent:
    """One message the client asked for, and what Bulletin answered."""

    key: str
    kind: str
    audience: frozenset[str]
    channels: tuple[str, ...]
    routing: str
    scheduled: bool
    #: Message ids of every 2xx answer to this key: more than one distinct id is a duplicate.
    answers: list[str] = field(default_factory=list)
    #: When a cancel of this message answered 200 (``time.time()`` at the client).
    cancelled_at: float | None = None

    @property
    def message_id(self) -> str:
        return self.answers[0]

    @property
    def expected(self) -> int:
        """Deliveries that must end well: one per person and channel, or per person."""
        per_person = len(self.channels) if self.routing == "all" else 1
        return len(self.audience) * per_person


@dataclass
class People:
    ids: list[str]
    groups: dict[str, set[str]]

    @classmethod
    def make(cls, n: int, groups: int, rng: random.Random) -> People:
        ids = [f"p{i:06d}" for i in range(n)]
        members: dict[str, set[str]] = {f"team-{g}": set() for g in range(groups)}
        names = list(members)
        for person in ids:
            for group in rng.sample(names, rng.choice((1, 1, 2))):
                members[group].add(person)
        return cls(ids, members)

    def rows(self) -> list[dict[str, Any]]:
        groups_of: dict[str, list[str]] = {p: [] for p in self.ids}
        for group, members in self.groups.items():
            for person in members:
                groups_of[person].append(group)
        return [
            {
                "external_id": person,
                "name": f"Person {i}",
                "whatsapp": f"+2782{i:07d}",
                "email": f"{person}@chaos.example",
                "groups": groups_of[person],
            }
            for i, person in enumerate(self.ids)
        ]


class Client:
    """Talks to whichever API process answers; retries through kills, 409s and 503s."""

    def __init__(self, urls: list[str], api_key: str, rng: random.Random) -> None:
        self.urls = urls
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.rng = rng
        self.http: aiohttp.ClientSession | None = None
        self.retries: dict[str, int] = {}
        #: Answers with a 5xx other than 503: each one is a defect.
        self.server_errors: list[str] = []

    async def __aenter__(self) -> Client:
        connector = aiohttp.TCPConnector(limit=64, force_close=False)
        self.http = aiohttp.ClientSession(connector=connector)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.http is not None
        await self.http.close()

    def _count(self, why: str) -> None:
        self.retries[why] = self.retries.get(why, 0) + 1

    async def once(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, Any] | None:
        """One attempt; ``None`` when no answer came (connection refused or cut, timeout)."""
        assert self.http is not None
        headers = dict(self.headers)
        if key is not None:
            headers["Idempotency-Key"] = key
        url = self.rng.choice(self.urls) + path
        try:
            async with self.http.request(
                method,
                url,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                text = await response.text()
                try:
                    payload = json.loads(text)
                except ValueError:
                    payload = text[:200]
                return response.status, payload
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._count(type(exc).__name__)
            return None

    async def until_answered(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        first_timeout: float = 30.0,
        accept: tuple[int, ...] = (),
    ) -> tuple[int, Any]:
        """Repeat (same key) until a 2xx, or a status in ``accept``; anything else is a bug."""
        timeout = first_timeout
        delay = 0.05
        for _ in range(2000):
            answer = await self.once(method, path, body, key=key, timeout=timeout)
            timeout = 30.0
            if answer is not None:
                status, payload = answer
                if 200 <= status < 300 or status in accept:
                    return status, payload
                if status == 409 and key is not None:
                    self._count("409 twin in progress")
                elif status == 503:
                    self._count("503")
                elif status >= 500:
                    # Never acceptable, but a real client retries it; the run reports it.
                    self._count(f"{status}")
                    self.server_errors.append(f"{method} {path}: {status} {payload}")
                else:
                    raise ClientError(f"{method} {path} answered {status}: {payload}")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 2.0)
        raise ClientError(f"{method} {path} never answered")

    async def create_twice(self, path: str, body: dict[str, Any], sent: Sent) -> None:
        """POST the same request twice, in one of three ways real clients do it."""
        mode = self.rng.choice(("concurrent", "after-timeout", "sequential"))
        answers: list[tuple[int, Any]]
        if mode == "concurrent":
            answers = list(
                await asyncio.gather(
                    self.until_answered("POST", path, body, key=sent.key),
                    self.until_answered("POST", path, body, key=sent.key),
                )
            )
        elif mode == "after-timeout":
            # The first try gives up almost at once, as an impatient client does; the
            # server may well have finished it.
            quick = self.rng.uniform(0.002, 0.05)
            first = await self.until_answered("POST", path, body, key=sent.key, first_timeout=quick)
            answers = [first, await self.until_answered("POST", path, body, key=sent.key)]
        else:
            answers = [
                await self.until_answered("POST", path, body, key=sent.key),
                await self.until_answered("POST", path, body, key=sent.key),
            ]
        for _, payload in answers:
            sent.answers.append(str(payload["id"]))


@dataclass
class Workload:
    people: People
    sent: list[Sent] = field(default_factory=list)
    cancels_requested: int = 0
    cancels_too_late: int = 0

    @property
    def expected(self) -> int:
        return sum(s.expected for s in self.sent if s.cancelled_at is None)


async def set_up(client: Client, people: People, configs: dict[str, dict[str, Any]]) -> None:
    for channel, config in configs.items():
        await client.until_answered("PUT", f"/v1/channels/{channel}", config)
    rows = people.rows()
    for start in range(0, len(rows), 1000):
        chunk = rows[start : start + 1000]
        await client.until_answered(
            "POST", "/v1/recipients/batch", {"recipients": chunk}, key=f"people-{start}"
        )


async def run_load(
    client: Client,
    people: People,
    target: int,
    rng: random.Random,
    *,
    concurrency: int = 12,
    duration_hint: float = 60.0,
) -> Workload:
    """Create messages until ``target`` deliveries are expected; cancel some scheduled ones."""
    work = Workload(people)
    plan: list[tuple[str, dict[str, Any], Sent]] = []
    planned = 0
    group_names = list(people.groups)
    # Most deliveries come from announcements, the rest from notifications.
    while planned < target * 85 // 100:
        scheduled = rng.random() < 0.3
        if rng.random() < 0.15:
            audience_spec: dict[str, Any] = {"all": True}
            audience = frozenset(people.ids)
        else:
            chosen = rng.sample(group_names, rng.choice((1, 2)))
            audience_spec = {"groups": chosen}
            audience = frozenset().union(*(people.groups[g] for g in chosen))
        body: dict[str, Any] = {
            "title": "Site notice",
            "body": f"Notice {len(plan)}: the canteen opens at 7.",
            "audience": audience_spec,
            "channels": CHANNELS,
            "routing": "all",
        }
        if scheduled:
            at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=rng.uniform(3, duration_hint / 2))
            body["send_at"] = at.isoformat()
        sent = Sent(uuid.uuid4().hex, "announcement", audience, tuple(CHANNELS), "all", scheduled)
        plan.append(("/v1/announcements", body, sent))
        # Scheduled messages may be cancelled: they come on top of the target.
        planned += 0 if scheduled else sent.expected
    while planned < target:
        person = rng.choice(people.ids)
        first = rng.random() < 0.5
        channels = CHANNELS if first else ["whatsapp"]
        body = {
            "title": "Your shift",
            "body": f"Shift change {len(plan)} for {person}.",
            "recipient": person,
            "channels": channels,
            "routing": "first" if first else "all",
        }
        scheduled = rng.random() < 0.1
        if scheduled:
            at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=rng.uniform(3, duration_hint / 2))
            body["send_at"] = at.isoformat()
        sent = Sent(
            uuid.uuid4().hex,
            "notification",
            frozenset([person]),
            tuple(channels),
            body["routing"],
            scheduled,
        )
        plan.append(("/v1/notifications", body, sent))
        planned += 0 if scheduled else sent.expected
    rng.shuffle(plan)

    queue: asyncio.Queue[tuple[str, dict[str, Any], Sent]] = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)
    cancels: list[asyncio.Task[None]] = []

    async def cancel_later(sent: Sent, delay: float) -> None:
        await asyncio.sleep(delay)
        work.cancels_requested += 1
        path = f"/v1/{sent.kind}s/{sent.message_id}"
        status, payload = await client.until_answered("POST", f"{path}/cancel", accept=(409,))
        if status == 409 and "already cancelled" in str(payload):
            # An earlier try went through but its answer was lost (the API was killed): the
            # cancel returned before this answer, so checking claims from now on is sound.
            status = 200
        if status == 200:
            sent.cancelled_at = time.time()
        else:
            work.cancels_too_late += 1

    async def worker() -> None:
        while not queue.empty():
            path, body, sent = queue.get_nowait()
            await client.create_twice(path, body, sent)
            work.sent.append(sent)
            if sent.scheduled and rng.random() < 0.5:
                due_in = dt.datetime.fromisoformat(body["send_at"]).timestamp() - time.time()
                # Some cancels come well before the send time, some race with it.
                delay = rng.uniform(0, max(0.0, due_in) + 2)
                cancels.append(asyncio.create_task(cancel_later(sent, delay)))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await asyncio.gather(*cancels)
    return work
