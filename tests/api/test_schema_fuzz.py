"""Schemathesis against Bulletin's own OpenAPI document: generated input for every operation.

Each operation is called with generated input (valid and invalid) four ways: with an admin
key, with a key whose scope is too small (``read``), with no key, and with keys that do not
exist. Every answer must be something the document declares: never a 5xx, a documented status
code, a documented content type, and a body that validates against the declared schema.

The app runs with its lifespan on a real SQLite database built by the migrations, seeded with
a few people, messages and deliveries of two organizations; generated ids are often swapped
for those, so that calls reach real rows and not only 404s and 422s.

Runs are deterministic (``derandomize``) and short. For a longer local run, set
``BULLETIN_FUZZ_EXAMPLES`` (examples per operation with the admin key, e.g. 500).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis_jsonschema._from_schema
import pytest
import requests
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.internal.conjecture import utils as conjecture
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from sqlalchemy import select
from urllib3.util.retry import Retry

from bulletin.crypto import generate_key
from bulletin.db import Database
from bulletin.deliveries.audience import resolve_chunk
from bulletin.deliveries.models import Delivery
from bulletin.messages import schemas as message_schemas
from bulletin.messages import service as messages
from bulletin.orgs import service as orgs
from bulletin.orgs.keys import Scope
from support.db_factories import insert_announcement, insert_people, person_row
from support.processes import Process, environment, free_port, wait_ready

with warnings.catch_warnings():
    # schemathesis 3.39 reads jsonschema.RefResolver and jsonschema.exceptions.RefResolutionError
    # when its modules are imported; both are deprecated since jsonschema 4.18. Only these two.
    for deprecated in ("jsonschema.RefResolver", "jsonschema.exceptions.RefResolutionError"):
        warnings.filterwarnings(
            "ignore", message=f"{deprecated} is deprecated", category=DeprecationWarning
        )
    import schemathesis
    from schemathesis import Case, DataGenerationMethod
    from schemathesis.checks import not_a_server_error
    from schemathesis.hooks import HookContext
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )
    from schemathesis.specs.openapi.formats import (
        register_string_format,
        unregister_string_format,
    )
    from schemathesis.specs.openapi.schemas import BaseOpenAPISchema

EXAMPLES = int(os.environ.get("BULLETIN_FUZZ_EXAMPLES", "20"))
CHECKS = (
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
)
AUTH_HEADERS = {"authorization", "x-api-key"}
FUZZ_SETTINGS: dict[str, Any] = {
    "derandomize": True,
    "database": None,
    "deadline": None,
    # No shrinking: a failure is reported with the case that found it, at once.
    "phases": [Phase.explicit, Phase.generate],
    # How long generating a large request body takes depends on the machine's load, not on
    # the test: on a busy 2-core machine it crosses Hypothesis' limit now and then.
    "suppress_health_check": [HealthCheck.too_slow],
}


@dataclass
class Rows:
    """Ids of one organization's rows."""

    message_ids: list[str]
    delivery_ids: list[int]
    external_ids: list[str]


@dataclass
class Seeded:
    """The keys of the fuzzed organization, its rows, and another organization's rows."""

    admin: str
    read: str
    mine: Rows
    theirs: Rows


async def _rows(db: Database, org_id: uuid.UUID, first: int) -> Rows:
    """People, a sent and a scheduled announcement, and a notification, of one organization."""
    people = [person_row(first + n, phone=f"+2782123450{n}", groups=["staff"]) for n in range(3)]
    await insert_people(db, org_id, people)
    now = await insert_announcement(db, org_id, channels=["whatsapp", "sms"])
    later = await insert_announcement(db, org_id, send_at="2999-01-01T09:00:00+02:00")
    note = message_schemas.NotificationIn.model_validate(
        {"title": "Hi", "body": "B", "recipient": f"p{first}", "category": "news"}
    )
    async with db.transaction() as session:
        notification = await messages.create_notification(session, org_id, note)
        for message in (now, notification):
            await resolve_chunk(session, await session.merge(message), 100)
    async with db.read() as session:
        rows = await session.execute(select(Delivery.id).where(Delivery.org_id == org_id))
        delivery_ids = list(rows.scalars())
    assert delivery_ids
    return Rows(
        message_ids=[str(now.id), str(later.id), str(notification.id)],
        delivery_ids=delivery_ids,
        external_ids=[p["external_id"] for p in people],
    )


async def _seed(url: str) -> Seeded:
    db = Database(url)
    try:
        async with db.transaction() as session:
            org, admin = await orgs.create_organization(session, "Fuzzed")
            read = await orgs.create_key(session, org.id, Scope.READ)
            other, _ = await orgs.create_organization(session, "Other")
        mine = await _rows(db, org.id, 1)
        theirs = await _rows(db, other.id, 10)
    finally:
        await db.dispose()
    return Seeded(admin=admin.secret, read=read.secret, mine=mine, theirs=theirs)


class _LegacyMany(conjecture.many):
    """``many`` with the ``more()`` loop that hypothesis-jsonschema 0.23 still calls.

    Hypothesis replaced ``while elements.more():`` with ``for _ in elements:`` inside a
    ``with`` block; hypothesis-jsonschema, the newest release schemathesis 3.39 accepts, was
    not updated, and fails on every object schema with an ``AttributeError``.
    """

    _steps: Iterator[None]

    def more(self) -> bool:
        if self._depth is None:
            self.__enter__()
            self._steps = iter(self)
        if next(self._steps, False) is False:
            self.__exit__(None)
            return False
        return True


class _ConjectureUtils:
    """The conjecture utilities, with :class:`_LegacyMany` in place of ``many``."""

    many = _LegacyMany

    def __getattr__(self, name: str) -> Any:
        return getattr(conjecture, name)


@dataclass
class Served:
    base_url: str
    session: requests.Session
    seeded: Seeded


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Served]:
    """``bulletin serve`` in a process of its own, on a seeded copy of the migrated database.

    The app runs as it runs in production, with its delivery engine, rather than in a thread
    of the test process: there, the test thread's garbage collector collected objects of the
    server thread (event-loop objects, then SQLAlchemy's greenlet frames held by a traceback)
    and crashed the interpreter now and then, which no deployment does.
    """
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "bulletin.db"
    shutil.copy(sqlite_template, path)
    seeded = asyncio.run(_seed(f"sqlite+aiosqlite:///{path}"))
    port = free_port()
    env = environment(
        f"sqlite:///{path}",
        # A secret key, so that channel configurations with secrets can be stored.
        BULLETIN_SECRET_KEY=generate_key(),
    )
    server = Process(["serve", "--host", "127.0.0.1", "--port", str(port)], env, folder)
    base_url = f"http://127.0.0.1:{port}"
    try:
        with pytest.MonkeyPatch.context() as patch, requests.Session() as session:
            # A request the app answers before reading its body (a POST without a key) may
            # have its connection reset by the server's side as it closes with the body
            # unread, and an idle connection may be closed by the server just as the next
            # request is written on it; the answer is then not seen at all. Such a call is
            # sent again on a fresh connection: a real failure of the app (a 5xx, a wrong
            # answer) is not retried, and an answer with Retry-After (a 503 while the app
            # starts) is returned as it is.
            retry = Retry(
                total=3,
                connect=3,
                read=3,
                other=3,
                status=0,
                allowed_methods=None,
                respect_retry_after_header=False,
            )
            session.mount("http://", HTTPAdapter(max_retries=retry))
            patch.setattr(hypothesis_jsonschema._from_schema, "cu", _ConjectureUtils())
            # FastAPI writes OpenAPI 3.1, whose response validation is still experimental.
            schemathesis.experimental.OPEN_API_3_1.enable()
            # Random UUIDs, so that ids reach the lookup instead of failing validation.
            register_string_format("uuid", st.uuids().map(str))
            try:
                wait_ready(base_url, server, timeout=30)
                yield Served(base_url, session, seeded)
            finally:
                unregister_string_format("uuid")
                schemathesis.experimental.OPEN_API_3_1.disable()
    finally:
        # It must stop cleanly, and have logged no traceback: an exception that escaped the
        # app (Starlette answers 500 and hands it on to the server, which logs it) fails the
        # module even where no check saw its answer.
        server.terminate()


@pytest.fixture(scope="module")
def api_schema(served: Served) -> BaseOpenAPISchema:
    # Served over HTTP rather than through schemathesis' ASGI transport, which starts a new
    # test client, and the app's lifespan with it, for every call.
    loaded = schemathesis.from_uri(f"{served.base_url}/openapi.json", base_url=served.base_url)
    assert isinstance(loaded, BaseOpenAPISchema)
    mine, theirs = served.seeded.mine, served.seeded.theirs
    known: dict[str, st.SearchStrategy[Any]] = {
        name: st.sampled_from(getattr(mine, f"{name}s"))
        | st.sampled_from(getattr(theirs, f"{name}s"))
        for name in ("message_id", "delivery_id", "external_id")
    }

    def with_known_ids(params: dict[str, Any] | None) -> st.SearchStrategy[Any]:
        if not params:
            return st.just(params)
        return st.fixed_dictionaries(
            {name: known.get(name, st.just(value)) for name, value in params.items()}
        )

    @loaded.hook
    def before_generate_path_parameters(
        context: HookContext, strategy: st.SearchStrategy[Any]
    ) -> st.SearchStrategy[Any]:
        # Half the time the generated ids, half the time ids of rows that exist (of this
        # organization and of the other one).
        return st.one_of(strategy, strategy.flatmap(with_known_ids))

    return loaded


with warnings.catch_warnings():
    # from_pytest_fixture warns that its filtering arguments are deprecated even when none is
    # given (schemathesis 3.39 compares their NOT_SET defaults with None). None is given here.
    warnings.filterwarnings(
        "ignore",
        message=r"Argument `(method|endpoint|tag|operation_id)` is deprecated",
        category=DeprecationWarning,
    )
    schema = schemathesis.from_pytest_fixture(
        "api_schema",
        data_generation_methods=[DataGenerationMethod.positive, DataGenerationMethod.negative],
    )


#: RFC 9110 field names and values. Generated headers outside these (a vertical tab in a value)
#: are refused by the HTTP server before the app sees them, so they are not sent.
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(r"([\x21-\x7e\x80-\xff]([\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?")


def call_and_check(case: Case, served: Served, credentials: dict[str, str]) -> None:
    """Call the app with ``credentials`` in place of any generated ones; check the answer."""
    headers = {
        name: value
        for name, value in (case.headers or {}).items()
        if name.lower() not in AUTH_HEADERS
        and _FIELD_NAME.fullmatch(name)
        and _FIELD_VALUE.fullmatch(value)
    }
    case.headers = CaseInsensitiveDict({**headers, **credentials})
    response = case.call(session=served.session, timeout=30)
    if response.encoding is None and "json" in response.headers.get("content-type", ""):
        # JSON is UTF-8 (RFC 8259). requests knows that of application/json only; for
        # application/problem+json it guesses, and a guess of Shift-JIS turns a problem that
        # quotes non-ASCII input into text that is not JSON.
        response.encoding = "utf-8"
    case.validate_response(response, checks=CHECKS)


@schema.parametrize()
@settings(max_examples=EXAMPLES, **FUZZ_SETTINGS)
def test_with_an_admin_key(case: Case, served: Served) -> None:
    call_and_check(case, served, {"Authorization": f"Bearer {served.seeded.admin}"})


@schema.parametrize()
@settings(max_examples=max(EXAMPLES // 4, 3), **FUZZ_SETTINGS)
def test_with_a_read_key(case: Case, served: Served) -> None:
    call_and_check(case, served, {"X-API-Key": served.seeded.read})


@schema.parametrize()
@settings(max_examples=max(EXAMPLES // 10, 2), **FUZZ_SETTINGS)
def test_without_a_key(case: Case, served: Served) -> None:
    call_and_check(case, served, {})


@schema.parametrize()
@settings(max_examples=max(EXAMPLES // 10, 2), **FUZZ_SETTINGS)
def test_with_a_key_that_does_not_exist(case: Case, served: Served) -> None:
    call_and_check(case, served, {"Authorization": f"Bearer bk_{uuid.UUID(int=0).hex}"})
