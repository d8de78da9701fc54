"""Message templates: rendered per person in a sandbox, and every mistake caught at creation."""

from __future__ import annotations

import contextvars

import pytest

from bulletin.errors import InvalidRequest
from bulletin.messages import sandbox
from bulletin.messages.templates import (
    MAX_RENDERED,
    PROBE,
    BudgetExceeded,
    MessageTemplates,
    RecipientView,
    TemplateFailed,
    check,
    compile_text,
    context_for,
)

ANN = RecipientView(
    external_id="e-1",
    name="Ann <Admin>",
    email="ann@example.org",
    attributes={"site": "Durban", "shift": 2},
)


def test_plain_text_is_used_as_it_is() -> None:
    text = "No templates here: 100% {plain} text"
    assert compile_text(text)(context_for(ANN)) == text


def test_recipient_fields_and_attributes_are_available() -> None:
    templates = check(
        "Hello {{ recipient.name }}", "Your site: {{ recipient.attributes.site }}", {}, [ANN]
    )
    content = templates.render("email", ANN)
    assert content.title == "Hello Ann <Admin>"
    assert content.body == "Your site: Durban"
    assert content.html is None


def test_a_missing_attribute_renders_empty_and_can_have_a_default() -> None:
    templates = check(
        "t", "[{{ recipient.attributes.team }}] {{ recipient.attributes.team or 'all' }}", {}, []
    )
    assert templates.render("sms", ANN).body == "[] all"


def test_the_body_may_use_the_rendered_title() -> None:
    templates = check("Hi {{ recipient.name }}", "{{ title }}!", {}, [ANN])
    assert templates.render("email", ANN).body == "Hi Ann <Admin>!"


def test_channel_overrides_replace_parts_and_html_is_escaped() -> None:
    overrides = {
        "sms": {"body": "Short: {{ recipient.attributes.site }}"},
        "email": {"html": "<p>{{ body }}</p><p>{{ recipient.name }}</p>"},
    }
    templates = check("Title", "Long body for {{ recipient.name }}", overrides, [ANN])
    sms = templates.render("sms", ANN)
    assert (sms.title, sms.body) == ("", "Short: Durban")
    email = templates.render("email", ANN)
    assert email.body == "Long body for Ann <Admin>"
    assert email.html == "<p>Long body for Ann &lt;Admin&gt;</p><p>Ann &lt;Admin&gt;</p>"
    whatsapp = templates.render("whatsapp", ANN)
    assert (whatsapp.title, whatsapp.body) == ("Title", "Long body for Ann <Admin>")


def test_whatsapp_template_parameters_are_rendered() -> None:
    overrides = {
        "whatsapp": {
            "template": {
                "name": "shift_change",
                "language": "en_US",
                "parameters": ["{{ recipient.name }}", "{{ recipient.attributes.shift }}"],
            }
        }
    }
    templates = check("t", "b", overrides, [ANN])
    assert templates.whatsapp_template is not None
    assert templates.whatsapp_template.name == "shift_change"
    assert templates.render("whatsapp", ANN).template_parameters == ("Ann <Admin>", "2")


def test_provider_template_parameters_see_title_and_body() -> None:
    templates = MessageTemplates("T {{ recipient.external_id }}", "B", {})
    content = templates.render("whatsapp", ANN, template_parameters=["{{ title }}", "{{ body }}"])
    assert content.template_parameters == ("T e-1", "B")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("{{ recipient.nmae }}", "recipient has no field 'nmae'"),
        ("{{ nobody }}", "'nobody' is not defined"),
        ("{% if %}", "syntax error on line 1"),
        ("{{ body }}", "'body' is not defined"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{{ recipient.__class__ }}", "unsafe"),
        ("{{ ''.__class__.__mro__ }}", "unsafe"),
        ("{{ 'x' * 1000000000 }}", "rendering budget: a repeated value"),
        ("{{ 10 ** 100000 }}", "rendering budget: an exponent"),
        ("{% for i in range(100000) %}xxxxxxxxxx{% endfor %}", "rendering budget: a range"),
        ("{% for i in range(9000) %}xxxxxxxxxx{% endfor %}", "longer than 64000"),
    ],
)
def test_mistakes_and_abuse_are_a_422_naming_the_field(body: str, says: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check("fine", body, {}, [])
    (error,) = caught.value.errors
    assert error.loc == ("body", "body")
    assert says in error.message


def test_an_override_error_names_its_own_field() -> None:
    overrides = {"email": {"html": "{{ recipient.bad }}"}, "sms": {"body": "{% endif %}"}}
    with pytest.raises(InvalidRequest) as caught:
        check("t", "b", overrides, [])
    locs = {e.loc for e in caught.value.errors}
    assert locs == {("body", "overrides", "email", "html"), ("body", "overrides", "sms", "body")}


def test_a_named_recipient_whose_data_breaks_the_template_is_caught() -> None:
    broken = RecipientView(external_id="e-2", attributes={"shift": "night"})
    with pytest.raises(InvalidRequest):
        check("t", "{{ recipient.attributes.shift + 1 }}", {}, [broken])


def test_render_failure_at_send_time_raises_template_failed() -> None:
    templates = MessageTemplates("t", "{{ recipient.attributes.shift + 1 }}", {})
    assert templates.render("sms", ANN).body == "3"
    with pytest.raises(TemplateFailed):
        templates.render("sms", RecipientView(external_id="x", attributes={"shift": "night"}))


def test_the_probe_has_every_field() -> None:
    assert all(value != "" for key, value in PROBE.context().items() if key != "attributes")
    assert MAX_RENDERED >= 20_000


# --- the rendering budget ---------------------------------------------------------------------

BUDGET = "the template exceeded its rendering budget"
NESTED = "{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}"
#: Each builds (or would build) far more than any budget allows, in a way the plain sandbox
#: does not intercept.
HEAVY = {
    "nested loops": NESTED,
    "nested loops writing": NESTED.replace("{% endfor %}{% endfor %}", "x{% endfor %}{% endfor %}"),
    "doubling with ~ and set": (
        "{% set ns = namespace(s='x') %}"
        "{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}"
    ),
    "doubling with +": (
        "{% set ns = namespace(s='x') %}"
        "{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}"
    ),
    "doubling at the top level": "{% set s = 'xxxxxxxx' %}"
    + "{% set s = s ~ s %}" * 30
    + "{{ s|length }}",
    "replace filter": "{{ ('x' * 200000)|replace('x', 'yyyyyyyyyy')|length }}",
    "replace method": "{{ ('x' * 200000).replace('x', 'yyyyyyyyyy')|length }}",
    "center filter": "{{ 'x'|center(1000000000)|length }}",
    "center method": "{{ 'x'.center(1000000000)|length }}",
    "ljust": "{{ 'x'.ljust(1000000000)|length }}",
    "zfill": "{{ '1'.zfill(1000000000)|length }}",
    "expandtabs": "{{ ('\t' * 1000).expandtabs(1000000)|length }}",
    "join filter": "{% set s = 'x' * 200000 %}{{ [s, s, s, s, s]|join|length }}",
    "join method": "{% set s = 'x' * 200000 %}{{ ''.join([s, s, s, s, s])|length }}",
    "join of a generator": "{{ range(10000)|map('center', 100000)|join|length }}",
    "list multiplication": "{{ ([1] * 1000000000)|length }}",
    "list of one long text, printed": "{% set s = 'x' * 200000 %}{{ [s, s, s, s, s] }}",
    "recursion via macros": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "exponential macros": (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(30) }}"
    ),
    "recursive loop": "{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}",
    "huge range": "{% for i in range(100000000) %}{% endfor %}",
    "format filter width": "{{ '%999999999s'|format('x')|length }}",
    "percent width": "{{ ('%999999999s' % 'x')|length }}",
    "format method width": "{{ '{:999999999}'.format('x')|length }}",
    "squaring numbers": (
        "{% set ns = namespace(x=3) %}"
        "{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}{{ ns.x > 0 }}"
    ),
    "power of a power": "{{ ((9 ** 100) ** 100) ** 100 }}",
    "set block": (
        "{% set x %}{% for i in range(10000) %}" + "x" * 100 + "{% endfor %}{% endset %}"
        "{{ x|length }}"
    ),
    "batch padding": "{{ [1]|batch(1000000000, 0)|list|length }}",
    "slices": "{{ [1]|slice(1000000000)|list|length }}",
    "a long value handled in every iteration": (
        "{% set s = 'a' * 200000 %}"
        "{% for i in range(10000) %}{{ s|replace('a', 'b')|length }}{% endfor %}"
    ),
}


@pytest.mark.parametrize("body", HEAVY.values(), ids=HEAVY.keys())
def test_heavy_templates_are_refused_at_creation(body: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check("t", body, {}, [])
    (error,) = caught.value.errors
    assert error.loc == ("body", "body")
    assert error.message.startswith(BUDGET), error.message


@pytest.mark.parametrize("body", HEAVY.values(), ids=HEAVY.keys())
def test_heavy_only_for_real_people_passes_the_check_and_fails_at_send_time(body: str) -> None:
    branch = f'{{% if recipient.external_id != "probe" %}}{body}{{% endif %}}ok'
    templates = check("t", branch, {}, [])
    assert templates.render("sms", PROBE).body == "ok"
    with pytest.raises(BudgetExceeded) as caught:
        templates.render("sms", ANN)
    assert str(caught.value).startswith(BUDGET)


def test_a_named_recipient_who_takes_the_heavy_branch_is_caught_at_creation() -> None:
    heavy = RecipientView(external_id="e-9", attributes={"team": "night"})
    body = f'{{% if recipient.attributes.team == "night" %}}{NESTED}{{% endif %}}ok'
    with pytest.raises(InvalidRequest) as caught:
        check("t", body, {}, [ANN, heavy])
    assert caught.value.errors[0].message.startswith(BUDGET)


def test_deeply_nested_source_is_a_422_not_a_crash() -> None:
    with pytest.raises(InvalidRequest) as caught:
        check("t", "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", {}, [])
    assert "nested too deeply" in caught.value.errors[0].message


def test_every_render_has_its_own_budget() -> None:
    """A render that used most of the loop budget leaves nothing owed by the next one, and
    renders in separate contexts (concurrent tasks) never share a budget."""
    almost = compile_text("{% for i in range(9000) %}{% endfor %}{{ recipient.name }}")
    for _ in range(3):
        assert almost(context_for(ANN)) == "Ann <Admin>"
    assert contextvars.copy_context().run(almost, context_for(ANN)) == "Ann <Admin>"
    assert sandbox._current.get() is None


def test_all_texts_of_one_person_share_one_budget() -> None:
    loop = "{% for i in range(6000) %}{% endfor %}"
    assert compile_text(loop + "t")(context_for(ANN)) == "t"
    templates = MessageTemplates(loop + "t", loop + "b", {})
    with pytest.raises(BudgetExceeded):
        templates.render("email", ANN)


def test_ordinary_templates_render_as_before() -> None:
    body = (
        "{% for shift in recipient.attributes.shifts %}{{ loop.index }}. {{ shift|upper }}"
        "{{ ', ' if not loop.last }}{% endfor %} | {{ '%s-%02d'|format('x', 3) }}"
        " | {{ '{} {}'.format('a', 'b') }} | {{ ['a', 'b']|join('/') }} | {{ 'ab' ~ 'cd' }}"
        " | {{ 'a,b'.split(',')|length }} | {{ 2 ** 10 }} | {{ 'ab' * 2 }} | {{ [1] + [2] }}"
        "{% macro m(x) %}<{{ x }}>{% endmacro %} | {{ m(recipient.name) }}"
    )
    person = RecipientView(external_id="e-3", name="Bo", attributes={"shifts": ["am", "pm"]})
    text = check("t", body, {}, [person]).render("sms", person).body
    assert text == "1. AM, 2. PM | x-03 | a b | a/b | abcd | 2 | 1024 | abab | [1, 2] | <Bo>"


def test_html_concatenation_still_escapes() -> None:
    templates = check("t", "b", {"email": {"html": "<b>{{ recipient.name ~ '!' }}</b>"}}, [ANN])
    assert templates.render("email", ANN).html == "<b>Ann &lt;Admin&gt;!</b>"


def test_compiled_templates_are_still_cached() -> None:
    source = "Cached {{ recipient.name }} {% for i in range(3) %}{{ i }}{% endfor %}"
    assert compile_text(source) is compile_text(source)
