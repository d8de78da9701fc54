"""Message templates: rendered per person in a sandbox, and every mistake caught at creation."""

from __future__ import annotations

import pytest

from bulletin.errors import InvalidRequest
from bulletin.messages.templates import (
    MAX_RENDERED,
    PROBE,
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
        ("{{ 'x' * 1000000000 }}", "too long"),
        ("{{ 10 ** 100000 }}", "exponent too large"),
        ("{% for i in range(100000) %}xxxxxxxxxx{% endfor %}", "longer than"),
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
