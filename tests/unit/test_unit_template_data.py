"""Templates and ``data``, the data of the event a message came from: every text sees it, what
it lacks renders as empty text at any depth, nothing a template does changes it, and the
sandbox's budget bounds whatever a template does with it."""

from __future__ import annotations

import contextlib
import re
from typing import Any

import pytest

from bulletin import jsonvalue
from bulletin.errors import InvalidRequest
from bulletin.messages.templates import (
    PROBE,
    BudgetExceeded,
    MessageTemplates,
    MissingData,
    RecipientView,
    TemplateFailed,
    check,
)

ANN = RecipientView(external_id="ann", name="Ann", attributes={"site": "Durban"})
ORDER: dict[str, Any] = {
    "order": {"id": "A-17", "total": 12.5, "lines": [{"sku": "x1", "qty": 2}, {"sku": "y2"}]},
    "items": ["tea", "cake"],
    "note": None,
    "weird key": {"ü": 1},
}


def body(template: str, data: Any = ORDER, recipient: RecipientView = ANN) -> str:
    return MessageTemplates("t", template, None, data).render("email", recipient).body


def test_every_text_of_a_message_sees_the_data() -> None:
    overrides: dict[str, dict[str, Any]] = {
        "email": {"title": "E {{ data.order.id }}", "html": "<p>{{ data.items[0] }}</p>"},
        "sms": {"body": "S {{ data.order.total }}"},
        "whatsapp": {
            "template": {"name": "order", "parameters": ["{{ data.order.lines[1].sku }}"]}
        },
    }
    templates = check(
        "Order {{ data.order.id }}",
        "{{ title }} for {{ recipient.name }}: {{ data.items | join(', ') }}",
        overrides,
        [ANN],
        data=ORDER,
    )
    email = templates.render("email", ANN)
    assert (email.title, email.body, email.html) == (
        "E A-17",
        "E A-17 for Ann: tea, cake",
        "<p>tea</p>",
    )
    assert templates.render("sms", ANN).body == "S 12.5"
    assert templates.render("whatsapp", ANN).template_parameters == ("y2",)
    assert templates.render("push", ANN).title == "Order A-17"


def test_what_the_data_lacks_renders_as_empty_text_at_any_depth() -> None:
    assert body("[{{ data.nothing }}]") == "[]"
    assert body("[{{ data.nothing.deeper['and'].deeper[3] }}]") == "[]"
    assert body("[{{ data.order.lines[1].qty }}]") == "[]"
    assert body("[{{ data.order.lines[9].sku }}]") == "[]"
    assert body("[{{ data.note }}][{{ data.note.x }}]") == "[][]"
    assert body("[{% for x in data.nothing %}{{ x }}{% endfor %}]") == "[]"
    assert body("[{{ data.nothing | upper }}{{ data.nothing | length }}]") == "[0]"


def test_a_missing_value_works_with_default_and_is_defined() -> None:
    assert body("{{ data.nothing | default('none') }} {{ data.note | default('n/a') }}") == (
        "none n/a"
    )
    assert body("{{ data.order.id is defined }} {{ data.nothing.id is defined }}") == ("True False")
    assert body("{% if data.nothing %}yes{% else %}no{% endif %}") == "no"


def test_without_data_every_key_is_missing() -> None:
    assert MessageTemplates("t", "[{{ data.x.y }}]{{ data | length }}").render("sms", ANN).body
    assert body("[{{ data.x.y }}]{{ data | length }}", data=None) == "[]0"
    assert body("{{ data | tojson }}", data=None) == "{}"


def test_a_dotted_name_is_always_a_key_of_the_data() -> None:
    # "items", "keys", "get" are keys an event may well have; they are not mapping methods.
    data = {"items": [1, 2], "keys": "k", "get": "g"}
    assert body("{{ data.items | sum }} {{ data.keys }} {{ data.get }}", data) == "3 k g"
    assert body("{{ data['items'] | length }}", data) == "2"
    pairs = "{% for k, v in data | dictsort %}{{ k }}={{ v }};{% endfor %}"
    assert body(pairs, {"b": 2, "a": 1}) == "a=1;b=2;"
    assert body("{% for k, v in data | items %}{{ k }}={{ v }};{% endfor %}", {"a": 1}) == "a=1;"
    assert body('{{ data["weird key"]["ü"] }}') == "1"


def test_loops_and_filters_read_the_data() -> None:
    template = "{% for line in data.order.lines %}{{ line.sku }}x{{ line.qty or 1 }} {% endfor %}"
    assert body(template) == "x1x2 y2x1 "
    assert body("{{ data.order.lines | map(attribute='sku') | join('+') }}") == "x1+y2"
    assert body("{{ data.order.total * 2 }} {{ '%.2f' % data.order.total }}") == "25.0 12.50"


def test_data_as_json_is_the_data_with_nulls() -> None:
    assert body("{{ data.order.lines | tojson }}") == '[{"qty": 2, "sku": "x1"}, {"sku": "y2"}]'
    assert body("{{ data | tojson }}", {"a": None, "b": [None, 1]}) == '{"a": null, "b": [null, 1]}'


def test_a_large_number_reads_as_the_float_it_was_sent_as() -> None:
    # PostgreSQL's JSONB gives 1e300 back as a 301-digit integer.
    assert body("{{ data.big }}", {"big": int(1e300)}) == "1e+300"


def test_html_escapes_data() -> None:
    templates = MessageTemplates(
        "t", "b", {"email": {"html": "<p>{{ data.x }}</p>"}}, {"x": "<script>&"}
    )
    assert templates.render("email", ANN).html == "<p>&lt;script&gt;&amp;</p>"


@pytest.mark.parametrize(
    ("template", "place"),
    [
        ("{{ data.order.discount + 1 }}", "data.order.discount"),
        ("{{ data.order.lines[5].qty * 2 }}", "data.order.lines[5]"),
        ("{% if data.nothing.x > 3 %}{% endif %}", "data.nothing"),
        ("{{ data.note | round(2) }}", "data.note"),
        ("{{ data.missing | int }}", "data.missing"),
        ("{{ data.missing | float }}", "data.missing"),
        ("{{ data.missing | abs }}", "data.missing"),
        ("{{ data.missing() }}", "data.missing"),
        ("{{ '%d' % data.missing }}", "data.missing"),
        ('{{ data["weird key"].nope - 1 }}', 'data["weird key"].nope'),
    ],
)
def test_a_missing_value_used_as_a_value_fails_naming_its_place(template: str, place: str) -> None:
    with pytest.raises(MissingData, match="^" + re.escape(f"{place} is not in the data")):
        body(template)


def test_an_event_types_check_without_data_accepts_what_only_data_can_tell() -> None:
    templates = check(
        "Total {{ data.total + 1 }}",
        "{{ data.qty | int * 2 }} {{ data.amount | round(2) }} {% if data.n > 3 %}many{% endif %}",
        {"sms": {"body": "{{ '%05.1f' % data.price }}"}},
        [ANN],
    )
    # The same texts with real data render; with data lacking a value they fail.
    data = {"total": 1, "qty": "3", "amount": 2.345, "n": 4, "price": 2}
    assert check("{{ data.total + 1 }}", "b", {}, [], data=data).render("sms", ANN).title == "2"
    with pytest.raises(MissingData):
        templates.render("email", ANN)


def test_a_check_with_data_names_the_field_and_the_missing_value() -> None:
    with pytest.raises(InvalidRequest) as caught:
        check(
            "{{ data.total + 1 }}",
            "fine {{ data.total }}",
            {},
            [ANN],
            loc=("body", "events", 3),
            data={"total": None},
        )
    [error] = caught.value.errors
    assert error.loc == ("body", "events", 3, "title")
    assert error.type == "template_invalid"
    assert "data.total is not in the data" in error.message


def test_mistakes_unrelated_to_data_still_fail_a_check_without_data() -> None:
    for title in ("{{ data.x ", "{{ datum }}", "{{ recipient.nmae }}", "{{ data.x }}{{ 1 / 0 }}"):
        with pytest.raises(InvalidRequest):
            check(title, "b", {}, [])


def test_an_unknown_name_is_explained_with_data_among_the_names() -> None:
    with pytest.raises(InvalidRequest) as caught:
        check("{{ event }}", "b", {}, [])
    assert "recipient and data" in caught.value.errors[0].message


@pytest.mark.parametrize(
    "template",
    [
        "{{ data.update({'order': 1}) }}{{ data.order }}",
        "{{ data.items.append('pie') }}",
        "{% set _ = data.order.lines.pop() %}",
        "{% set data.order = 1 %}",
        "{{ data.setdefault('x', 1) }}",
    ],
)
def test_no_template_changes_the_data_another_render_sees(template: str) -> None:
    # One message: its SMS text tries to change the data its email text reads.
    templates = MessageTemplates(
        "t",
        "{{ data.order.id }} {{ data.items | join(',') }} {{ data.order.lines | length }}"
        " [{{ data.x }}]",
        {"sms": {"body": template}},
        ORDER,
    )
    for _ in range(3):
        with contextlib.suppress(TemplateFailed):
            templates.render("sms", ANN)
    assert templates.render("email", ANN).body == "A-17 tea,cake 2 []"
    assert ORDER["items"] == ["tea", "cake"]


def test_python_internals_of_the_data_are_out_of_reach() -> None:
    for name in ("_values", "_place", "__class__", "__init__", "keys", "values"):
        assert body(f"[{{{{ data.{name} }}}}]") == "[]"
    with pytest.raises(TemplateFailed):
        body("{{ data.order.lines.__class__.__mro__ }}")
    with pytest.raises(TemplateFailed):
        body("{{ data.nothing.__class__ }}")


# --- hostile data -----------------------------------------------------------------------------


def wide() -> dict[str, Any]:
    """Data at the limits: 1,000 items per array, nested, as large as an event may send."""
    data = {"rows": [[i] * 30 for i in range(1000)], "text": "x" * 10_000}
    assert len(jsonvalue.compact(data)) <= jsonvalue.MAX_FIELD_BYTES * 2
    return data


def deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": "bottom"}
    for _ in range(levels - 1):
        value = {"d": value}
    return value


def test_a_template_looping_over_the_data_is_bounded() -> None:
    for template in (
        "{% for r in data.rows %}{% for c in r %}{% for d in data.rows %}.{% endfor %}"
        "{% endfor %}{% endfor %}",
        "{% for r in data.rows %}{% for s in data.rows %}{{ r }}{% endfor %}{% endfor %}",
        "{% for r in data.rows %}{{ data.rows | tojson }}{% endfor %}",
        "{% for r in data.rows %}{% set x = data.text * 20 %}{% endfor %}",
    ):
        with pytest.raises(BudgetExceeded):
            body(template, wide())


def test_printing_large_data_is_refused_by_the_value_limit_not_built() -> None:
    with pytest.raises(BudgetExceeded, match="a value would be larger"):
        body("{{ data }}", {"rows": [["y" * 1000] * 30 for _ in range(10)]})
    # Indented JSON grows with its depth, far beyond the value it comes from: refused before
    # it is written, for the data and for attributes alike.
    numbers = {"n": [[0] * 10 for _ in range(100)]}
    for template, data, attributes in (
        ("{{ data | tojson(indent=300) }}", numbers, {}),
        ("{{ recipient.attributes | tojson(indent='" + " " * 300 + "') }}", None, numbers),
    ):
        with pytest.raises(BudgetExceeded, match="indented JSON would be larger"):
            body(template, data, RecipientView("p", attributes=attributes))
    assert body("{{ data.n[0] | tojson(indent=2) }}", numbers).count("\n") == 11


def test_data_as_deep_as_accepted_renders_and_deeper_is_refused() -> None:
    jsonvalue.check(deep(jsonvalue.MAX_DEPTH), "data")  # what an event may send
    path = "data" + ".d" * (jsonvalue.MAX_DEPTH - 1) + ".leaf"
    assert body("{{ " + path + " }}", deep(jsonvalue.MAX_DEPTH)) == "bottom"
    with pytest.raises(TemplateFailed, match="nested more than"):
        MessageTemplates("t", "b", None, deep(jsonvalue.MAX_DEPTH + 1))
    with pytest.raises(InvalidRequest) as caught:
        check("t", "b", {}, [], data=deep(5000))
    assert [e.loc for e in caught.value.errors] == [("body", "data")]


def test_the_probe_sees_the_data_too() -> None:
    assert MessageTemplates("{{ data.a }}", "b", None, {"a": "x"}).render("sms", PROBE).title == (
        "x"
    )
