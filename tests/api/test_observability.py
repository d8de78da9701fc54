"""What an operator watches: /metrics, request ids, and the ids on every log line."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update
from sqlalchemy.engine import make_url
from structlog.testing import capture_logs

from bulletin.app import create_app
from bulletin.channels.fake import RecordingProvider
from bulletin.channels.registry import ChannelRegistry
from bulletin.config import Settings
from bulletin.db import utcnow
from bulletin.deliveries import queue
from bulletin.deliveries.models import Delivery
from bulletin.errors import TransientSendError
from bulletin.worker.scheduler import Scheduler
from conftest import Api
from support.http import problem
from support.http_factories import in_future, notify, person_json, post_announcement, post_people
from support.settling import wait_for_state

Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]

SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


async def scrape(client: httpx.AsyncClient) -> Scrape:
    """Every sample ``GET /metrics`` shows, by name and labels."""
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(found: Scrape, name: str, **labels: str) -> float:
    """The sample of this name and labels; a sample that is not shown fails the test."""
    key = (name, frozenset(labels.items()))
    assert key in found, f"/metrics shows no {name}{labels}"
    return found[key]


def grew(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    """How much a counter of this process grew between two scrapes. The later scrape must show
    it; the earlier one may not yet (a labelled series appears when first counted)."""
    return value(after, name, **labels) - before.get((name, frozenset(labels.items())), 0.0)


def scheduler_of(api: Api) -> Scheduler:
    """A scheduler on the app's database, driven step by step by the test."""
    svc = api.services
    return Scheduler(svc.db, svc.registry, svc.settings, svc.hub.subscribe(), svc.notifier)


@contextlib.asynccontextmanager
async def serving(
    settings: Settings,
    *,
    registry: ChannelRegistry | None = None,
    run_worker: bool = False,
    extra_routes: dict[str, Any] | None = None,
) -> AsyncIterator[Api]:
    """An app made for one test (own providers, own routes), with a client and an org."""
    app: FastAPI = create_app(settings, run_worker=run_worker, registry=registry)
    for path, endpoint in (extra_routes or {}).items():
        app.add_api_route(path, endpoint)
    async with app.router.lifespan_context(app):
        await app.state.services.startup.wait()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://bulletin.test") as c:
            api = Api(c, app.state.services)
            await api.new_org()
            yield api


# --- /metrics -------------------------------------------------------------------------------


async def test_metrics_after_a_notification_is_sent(live_api: Api) -> None:
    before = await scrape(live_api.client)
    await post_people(live_api, person_json(1))
    message_id = await notify(live_api, "p1", channels=["email"])
    await wait_for_state(live_api, f"/v1/notifications/{message_id}", "completed")
    raw = await live_api.client.get("/metrics")
    after = await scrape(live_api.client)

    # From the database: every delivery by channel and state, and an empty queue.
    deliveries = {labels: n for (name, labels), n in after.items() if name == "bulletin_deliveries"}
    assert deliveries == {frozenset({("channel", "email"), ("state", "sent")}): 1.0}
    assert value(after, "bulletin_queue_depth") == 0
    assert value(after, "bulletin_queue_oldest_due_seconds") == 0
    assert value(after, "bulletin_database_up") == 1
    # This process's engine: one provider call, timed, and its outcome written.
    sent = {"channel": "email", "outcome": "sent"}
    assert grew(before, after, "bulletin_send_seconds_count", **sent) == 1
    assert grew(before, after, "bulletin_send_seconds_sum", **sent) > 0
    assert grew(before, after, "bulletin_deliveries_completed_total", outcome="sent") == 1
    # No retry: the counter is declared, and its email series is not shown or did not grow.
    assert "bulletin_retries" in {f.name for f in text_string_to_metric_families(raw.text)}
    retries = ("bulletin_retries_total", frozenset({("channel", "email")}))
    assert after.get(retries) == before.get(retries)
    # Requests by route template, never by raw path.
    posted = {"route": "/v1/notifications", "method": "POST", "status": "202"}
    assert grew(before, after, "bulletin_http_requests_total", **posted) == 1
    polled = {"route": "/v1/notifications/{message_id}", "method": "GET", "status": "200"}
    assert grew(before, after, "bulletin_http_requests_total", **polled) >= 1
    timed = {"route": "/v1/notifications", "method": "POST"}
    assert grew(before, after, "bulletin_http_request_duration_seconds_count", **timed) == 1
    assert message_id not in raw.text


async def test_queue_gauges_count_due_pending_deliveries(api: Api) -> None:
    await post_people(api, person_json(1), person_json(2), person_json(3))
    await post_announcement(api)
    await post_announcement(api, send_at=in_future(3600))  # not due: no deliveries yet
    await scheduler_of(api).resolve_due()
    async with api.services.db.transaction() as session:
        ids = list((await session.execute(select(Delivery.id).order_by(Delivery.id))).scalars())
        assert len(ids) == 3
        # One has waited two minutes; one is deferred to later (quiet hours), so not due.
        await session.execute(
            update(Delivery)
            .where(Delivery.id == ids[0])
            .values(next_attempt_at=utcnow() - dt.timedelta(seconds=120))
        )
        await session.execute(
            update(Delivery)
            .where(Delivery.id == ids[1])
            .values(next_attempt_at=utcnow() + dt.timedelta(hours=1))
        )

    found = await scrape(api.client)
    assert value(found, "bulletin_deliveries", channel="email", state="pending") == 3
    assert value(found, "bulletin_queue_depth") == 2
    assert 120 <= value(found, "bulletin_queue_oldest_due_seconds") < 180


async def test_expired_leases_are_counted_by_where_they_went(settings: Settings) -> None:
    """A worker died mid-send: the deduplicating provider's delivery is retried, the other's
    becomes unknown, and both are counted."""
    registry = ChannelRegistry(
        RecordingProvider(name="mail"), {"sms": RecordingProvider(name="sms", deduplicates=True)}
    )
    async with serving(settings, registry=registry) as api:
        await post_people(api, person_json(1), {"external_id": "t1", "phone": "+27 82 123 4567"})
        await post_announcement(api, channels=["email", "sms"])
        scheduler = scheduler_of(api)
        await scheduler.resolve_due()
        async with api.services.db.transaction() as session:
            claimed = await queue.claim(session, utcnow(), utcnow() - dt.timedelta(seconds=1), 10)
        assert {row.channel for row in claimed} == {"email", "sms"}
        before = await scrape(api.client)
        assert await scheduler.reap_expired() == 2
        after = await scrape(api.client)

    assert grew(before, after, "bulletin_leases_expired_total", outcome="pending") == 1
    assert grew(before, after, "bulletin_leases_expired_total", outcome="unknown") == 1
    assert grew(before, after, "bulletin_unknown_total") == 1
    assert value(after, "bulletin_deliveries", channel="email", state="unknown") == 1
    assert value(after, "bulletin_deliveries", channel="sms", state="pending") == 1


async def test_a_retried_send_is_timed_counted_and_logged_with_its_ids(settings: Settings) -> None:
    failed_once: set[int] = set()

    def busy_once(message: Any) -> None:
        if message.delivery_id not in failed_once:
            failed_once.add(message.delivery_id)
            raise TransientSendError("busy")

    registry = ChannelRegistry(RecordingProvider(name="mail", behaviour=busy_once))
    async with serving(settings, registry=registry, run_worker=True) as api:
        before = await scrape(api.client)
        await post_people(api, person_json(1))
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            message_id = await notify(api, "p1", channels=["email"])
            await wait_for_state(api, f"/v1/notifications/{message_id}", "completed")
        after = await scrape(api.client)

    email = {"channel": "email"}
    assert grew(before, after, "bulletin_send_seconds_count", **email, outcome="transient") == 1
    assert grew(before, after, "bulletin_send_seconds_count", **email, outcome="sent") == 1
    assert grew(before, after, "bulletin_retries_total", **email) == 1
    assert grew(before, after, "bulletin_deliveries_completed_total", outcome="pending") == 1
    assert grew(before, after, "bulletin_deliveries_completed_total", outcome="sent") == 1
    [retry] = [e for e in logs if e["event"] == "worker.send_transient"]
    assert retry["message_id"] == message_id
    assert retry["delivery_id"] in failed_once
    assert retry["channel"] == "email"
    assert "request_id" not in retry  # the worker's lines are not any request's


@SQLITE_ONLY
async def test_metrics_need_no_key_are_not_in_the_schema_and_survive_the_database(
    api: Api, settings: Settings
) -> None:
    schema = (await api.client.get("/openapi.json")).json()
    assert "/metrics" not in schema["paths"]
    assert value(await scrape(api.client), "bulletin_database_up") == 1

    # The database file disappears: the scrape still shows this process's figures.
    await api.services.db.engine.dispose()
    path = Path(str(make_url(settings.database_url).database))
    await asyncio.to_thread(path.rename, path.with_suffix(".gone"))
    found = await scrape(api.client)
    assert value(found, "bulletin_database_up") == 0
    assert not any(name == "bulletin_queue_depth" for name, _ in found)
    assert any(name == "bulletin_http_requests_total" for name, _ in found)


# --- Request ids and logs -------------------------------------------------------------------


@SQLITE_ONLY
async def test_request_id_is_made_echoed_or_replaced(api: Api) -> None:
    first = (await api.client.get("/health")).headers["X-Request-ID"]
    second = (await api.client.get("/health")).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != second

    given = "edge-7F3a.b_9"
    echoed = await api.client.get("/health", headers={"X-Request-ID": given})
    assert echoed.headers["X-Request-ID"] == given

    for bad in ["two words", "x" * 65, "a;b", "../etc", "", "<script>"]:
        answer = await api.client.get("/health", headers={"X-Request-ID": bad})
        made = answer.headers["X-Request-ID"]
        assert made != bad
        assert re.fullmatch(r"[0-9a-f]{32}", made), (bad, made)
    latin = await api.client.get("/health", headers={b"X-Request-ID": "caf\xe9".encode("latin-1")})
    assert re.fullmatch(r"[0-9a-f]{32}", latin.headers["X-Request-ID"])


@SQLITE_ONLY
async def test_problem_answers_carry_the_request_id_too(api: Api) -> None:
    mine = {"X-Request-ID": "problem-1"}
    unauthenticated = await api.client.get("/v1/recipients", headers=mine)
    problem(unauthenticated, 401)
    unknown_path = await api.client.get("/v1/nothing-here/42", headers=mine)
    problem(unknown_path, 404)
    invalid = await api.client.put(
        "/v1/recipients/p1", json={"email": 7}, headers={**api.headers(), **mine}
    )
    problem(invalid, 422)
    for answer in (unauthenticated, unknown_path, invalid):
        assert answer.headers["X-Request-ID"] == "problem-1"

    found = await scrape(api.client)
    unmatched = {"route": "<unmatched>", "method": "GET", "status": "404"}
    assert value(found, "bulletin_http_requests_total", **unmatched) >= 1
    assert "nothing-here" not in (await api.client.get("/metrics")).text


@SQLITE_ONLY
async def test_every_line_logged_during_a_request_carries_its_id(api: Api) -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        hook = await api.client.post(
            "/v1/webhooks/whatsapp", content=b"{}", headers={"X-Request-ID": "hook-1"}
        )
        read = await api.client.get("/v1/recipients/nobody", headers=api.headers())
    problem(hook, 401)
    problem(read, 404)
    assert hook.headers["X-Request-ID"] == "hook-1"

    assert logs, "nothing was logged"
    assert all("request_id" in line for line in logs), logs
    by_request: dict[str, list[str]] = {}
    for line in logs:
        by_request.setdefault(line["request_id"], []).append(line["event"])
    assert by_request == {
        "hook-1": ["webhooks.whatsapp_bad_signature", "http.request"],
        read.headers["X-Request-ID"]: ["http.request"],
    }
    [access] = [e for e in logs if e["request_id"] == "hook-1" and e["event"] == "http.request"]
    assert access["method"] == "POST"
    assert access["route"] == "/v1/webhooks/whatsapp"
    assert access["status"] == 401
    assert access["duration_ms"] >= 0
    assert "path" not in access  # raw paths hold ids and unsubscribe tokens


@SQLITE_ONLY
async def test_an_unexpected_error_is_a_500_with_the_request_id(settings: Settings) -> None:
    async def broken() -> None:
        raise RuntimeError("a defect")

    async with serving(settings, extra_routes={"/broken": broken}) as api:
        before = await scrape(api.client)
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            answer = await api.client.get("/broken", headers={"X-Request-ID": "boom-1"})
        after = await scrape(api.client)

    problem(answer, 500)
    assert answer.headers["X-Request-ID"] == "boom-1"
    assert "a defect" not in answer.text
    events = [(line["event"], line.get("request_id")) for line in logs]
    assert ("api.unhandled_error", "boom-1") in events
    assert ("http.request", "boom-1") in events
    labels = {"route": "/broken", "method": "GET", "status": "500"}
    assert grew(before, after, "bulletin_http_requests_total", **labels) == 1
