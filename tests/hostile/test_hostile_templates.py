"""Issue 12, finding 4: templates that would stall a process.

An organization admin writes the message templates, and the recipients' attributes decide
which branches run. On SQLite and PostgreSQL through the real migrations:

* a template that is heavy for the probe recipient is refused at creation with a 422 naming
  the field and the budget, instead of stalling the API;
* a template that is heavy only for some real people (a branch the probe does not take) is
  accepted, and at send time fails exactly those people's deliveries with the budget as the
  reason, while everyone else of the same announcement is sent.
"""

from __future__ import annotations

import pytest

from conftest import Api
from support.http import body_of, get_deliveries, problem, sandbox_of
from support.http_factories import person_json, post_announcement, post_people
from support.settling import wait_for_state

BUDGET = "the template exceeded its rendering budget"

NESTED_LOOPS = "{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}"
DOUBLING = (
    "{% set ns = namespace(s='x') %}"
    "{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}"
)
RECURSION = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"


@pytest.mark.parametrize(
    "body",
    [
        NESTED_LOOPS,
        DOUBLING,
        RECURSION,
        "{{ 'x'|center(1000000000) }}",
        "{{ ([1] * 1000000000)|length }}",
        "{% for i in range(100000000) %}{% endfor %}",
    ],
)
async def test_a_template_heavy_for_the_probe_is_a_422_at_creation(api: Api, body: str) -> None:
    response = await api.post(
        "/v1/announcements", {"title": "t", "body": body, "audience": {"all": True}}
    )
    refused = problem(response, 422)
    (error,) = refused["errors"]
    assert error["loc"][-1] == "body"
    assert error["message"].startswith(BUDGET)
    listed = body_of(await api.get("/v1/announcements"), 200)
    assert listed["items"] == []


async def test_a_template_heavy_only_for_one_person_fails_only_that_delivery(
    live_api: Api,
) -> None:
    api = live_api
    await post_people(api, person_json(1), person_json(2, attributes={"team": "night"}))
    # The probe, and p1, never take the branch; p2's attributes do.
    body = (
        '{% if recipient.external_id != "probe" and recipient.attributes.team == "night" %}'
        f"{NESTED_LOOPS}{{% endif %}}Shift plan for {{{{ recipient.name }}}}"
    )
    message_id = await post_announcement(api, title="Rota", body=body)

    await wait_for_state(api, f"/v1/announcements/{message_id}", "completed")
    sent = await get_deliveries(api, message_id, state="sent")
    failed = await get_deliveries(api, message_id, state="failed")
    assert [d["recipient"] for d in sent] == ["p1"]
    assert [d["recipient"] for d in failed] == ["p2"]
    assert failed[0]["reason"].startswith(BUDGET)
    recorded = await sandbox_of(api, message_id)
    assert [(r["recipient"], r["body"]) for r in recorded] == [("p1", "Shift plan for Person 1")]
