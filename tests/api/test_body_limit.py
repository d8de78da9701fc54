"""Request bodies longer than ``max_body_bytes`` are refused with 413, declared or streamed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bulletin.config import Settings
from conftest import Api, make_settings
from e2e.stack import serve
from support.http import body_of, json_headers, problem
from support.http_factories import person_json
from support.processes import free_port

LIMIT = 4096


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url, max_body_bytes=LIMIT)


def batch_of_size(size: int) -> bytes:
    """A valid batch import of one person, padded with whitespace to exactly ``size`` bytes."""
    body = json.dumps({"recipients": [person_json(1)]}).encode()
    assert len(body) <= size
    return body + b" " * (size - len(body))


async def chunks(body: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def people(api: Api) -> list[Any]:
    items: list[Any] = body_of(await api.get("/v1/recipients"), 200)["items"]
    return items


async def test_a_body_at_the_limit_is_read(api: Api) -> None:
    response = await api.client.post(
        "/v1/recipients/batch", content=batch_of_size(LIMIT), headers=json_headers(api)
    )
    assert body_of(response, 200)["created"] == 1


async def test_a_content_length_over_the_limit_is_413_and_nothing_is_made(api: Api) -> None:
    response = await api.client.post(
        "/v1/recipients/batch", content=batch_of_size(LIMIT + 1), headers=json_headers(api)
    )
    assert response.request.headers["content-length"] == str(LIMIT + 1)
    body = problem(response, 413)
    assert body["type"] == "urn:bulletin:problem:payload-too-large"
    assert str(LIMIT) in body["detail"]
    assert await people(api) == []


async def test_a_streamed_body_is_cut_off_when_it_grows_past_the_limit(api: Api) -> None:
    for size in (LIMIT + 1, 50 * LIMIT):
        response = await api.client.post(
            "/v1/recipients/batch", content=chunks(batch_of_size(size)), headers=json_headers(api)
        )
        assert "content-length" not in response.request.headers
        assert response.request.headers["transfer-encoding"] == "chunked"
        problem(response, 413)
    assert await people(api) == []
    # A streamed body within the limit is read as usual.
    response = await api.client.post(
        "/v1/recipients/batch", content=chunks(batch_of_size(LIMIT)), headers=json_headers(api)
    )
    assert body_of(response, 200)["created"] == 1


async def test_an_oversized_body_is_413_even_without_a_key(api: Api) -> None:
    # The body is refused before anything else, so a client cannot make the server read
    # megabytes merely by calling.
    response = await api.client.post(
        "/v1/announcements",
        content=b"{" + b" " * LIMIT + b"}",
        headers={"Content-Type": "application/json"},
    )
    problem(response, 413)


async def test_a_chunked_body_over_real_http_is_413(settings: Settings) -> None:
    port = free_port()
    async for api, _server in serve(settings, port):
        url = f"http://127.0.0.1:{port}/v1/recipients/batch"
        async with aiohttp.ClientSession() as http:
            async with http.post(
                url, data=chunks(batch_of_size(20 * LIMIT)), headers=json_headers(api)
            ) as response:
                assert response.status == 413
                assert response.content_type == "application/problem+json"
                body = await response.json(content_type=None)
            assert body["status"] == 413
            assert response.request_info.headers.get("Transfer-Encoding") == "chunked"
            # The server is still there for the next request.
            async with http.get(f"http://127.0.0.1:{port}/health") as health:
                assert health.status == 200
        assert await people(api) == []


def test_the_default_limit_admits_the_largest_batch_import() -> None:
    # 10,000 people (the most one batch takes), each with the fields people really send.
    rows = [
        {
            "external_id": f"emp-{i:06d}",
            "name": "Thandiwe Nkosi-Mahlangu",
            "email": f"thandiwe.nkosi.{i}@example-employer.co.za",
            "phone": "+27 82 123 4567",
            "timezone": "Africa/Johannesburg",
            "locale": "en-ZA",
            "groups": ["operations", "johannesburg", "night-shift"],
            "attributes": {"site": "Durban North", "manager": "Pieter van der Merwe"},
        }
        for i in range(10_000)
    ]
    size = len(json.dumps({"recipients": rows}).encode())
    default = Settings(_env_file=None).max_body_bytes
    assert size * 2 < default


def test_the_limit_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULLETIN_MAX_BODY_BYTES", "2097152")
    assert Settings(_env_file=None).max_body_bytes == 2 * 1024 * 1024
