"""The endpoints that need no key: liveness, readiness and the API's own documentation."""

from __future__ import annotations

from conftest import Api
from support.http import body_of


async def test_health_and_ready_need_no_key(api: Api) -> None:
    assert "Authorization" not in api.client.headers
    assert body_of(await api.client.get("/health"), 200) == {"status": "ok"}
    assert body_of(await api.client.get("/ready"), 200) == {"status": "ready", "database": "ok"}


async def test_docs_and_openapi_are_served(api: Api) -> None:
    docs = await api.client.get("/docs")
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in docs.text

    spec = body_of(await api.client.get("/openapi.json"), 200)
    assert spec["info"]["title"] == "Bulletin"
    paths = spec["paths"]
    for path, method in [
        ("/v1/recipients/{external_id}", "put"),
        ("/v1/recipients/{external_id}", "delete"),
        ("/v1/recipients", "get"),
        ("/v1/recipients/batch", "post"),
        ("/v1/recipients/{external_id}/preferences", "put"),
        ("/v1/announcements", "post"),
        ("/v1/announcements", "get"),
        ("/v1/announcements/{message_id}", "get"),
        ("/v1/announcements/{message_id}/deliveries", "get"),
        ("/v1/announcements/{message_id}/cancel", "post"),
        ("/v1/notifications", "post"),
        ("/v1/notifications/{message_id}", "get"),
        ("/v1/notifications/{message_id}/cancel", "post"),
        ("/v1/deliveries/{delivery_id}", "get"),
        ("/v1/sandbox/messages", "get"),
        ("/health", "get"),
        ("/ready", "get"),
    ]:
        assert method in paths.get(path, {}), f"{method.upper()} {path} is not documented"
    for path in ("/v1/announcements", "/v1/notifications", "/v1/recipients/batch"):
        headers = [p["name"] for p in paths[path]["post"]["parameters"] if p["in"] == "header"]
        assert "Idempotency-Key" in headers, path
    problem_media = paths["/v1/announcements"]["post"]["responses"]["422"]["content"]
    assert "application/problem+json" in problem_media
