"""Message text as Jinja2 templates, rendered per recipient in a sandbox.

A title, a body, a per-channel override or a WhatsApp template parameter may use Jinja2 with
the recipient's fields and attributes: ``Hello {{ recipient.name }}``,
``{{ recipient.attributes.site }}``, and with ``data``, the data of the event a message came
from: ``Order {{ data.order.id }} has shipped``. Text without template syntax is used as it is.

``data`` is read-only and lenient: a key it lacks renders as empty text, at any depth (see
:mod:`bulletin.messages.template_data`); using one where a value is needed (a calculation, a
comparison, a call) is :class:`MissingData`. The check at creation without data (an event
type's) accepts such uses, since only an event's data can tell; an event's own check, with
its data, does not.

Mistakes are caught when the message is created, not at send time: :func:`check` compiles
every template and renders it for a probe recipient (and for named recipients), so a syntax
error, an unknown variable or a misspelt recipient field is a 422. A missing *attribute*
renders as empty text, because attributes legitimately differ from person to person.

Every render runs in :mod:`bulletin.messages.sandbox`, which refuses access to Python internals
and gives each render a fixed budget (loop iterations, value sizes, text written, time). The
check at creation cannot see every branch a real person's data takes, so the budget is what
holds at send time: a template that exceeds it for one person fails that person's delivery
("the template exceeded its rendering budget: ..."), quickly, and nothing else.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jinja2

from bulletin.errors import FieldError, InvalidRequest
from bulletin.messages.sandbox import BoundedEnvironment, budget
from bulletin.messages.sandbox import BudgetExceeded as BudgetExceeded
from bulletin.messages.sandbox import TemplateFailed as TemplateFailed
from bulletin.messages.template_data import DataEnvironment, MissingDataError, template_data
from bulletin.messages.template_data import MissingData as MissingData

#: Longest text any one template may render to.
MAX_RENDERED = 64_000
#: Seconds :func:`check` spends rendering for named recipients before it stops sampling them
#: (each render has its own budget as well; what is not sampled is bounded at send time).
CHECK_SECONDS = 0.5
_MARKERS = ("{{", "{%", "{#")


class _Attributes(dict[str, Any]):
    """A recipient's attributes: a missing one renders as empty text rather than failing."""

    def __missing__(self, key: str) -> str:
        return ""


@functools.cache
def _environment(html: bool) -> BoundedEnvironment:
    return DataEnvironment(html=html)


@dataclass(frozen=True, slots=True)
class RecipientView:
    """What a template sees of a recipient."""

    external_id: str
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    whatsapp: str | None = None
    locale: str | None = None
    timezone: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)

    def context(self) -> dict[str, Any]:
        return {
            "external_id": self.external_id,
            "name": self.name or "",
            "email": self.email or "",
            "phone": self.phone or "",
            "whatsapp": self.whatsapp or "",
            "locale": self.locale or "",
            "timezone": self.timezone or "",
            "attributes": _Attributes(self.attributes),
        }


#: The recipient :func:`check` renders every template for.
PROBE = RecipientView(
    external_id="probe",
    name="Probe Person",
    email="probe@example.org",
    phone="+10000000000",
    whatsapp="+10000000000",
    locale="en",
    timezone="UTC",
)


class _Namespace(dict[str, Any]):
    """``recipient.x`` on a dict: an unknown field is an error, so typos are caught."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


Renderer = Callable[[Mapping[str, Any]], str]


@functools.lru_cache(maxsize=1024)
def compile_text(source: str, *, html: bool = False) -> Renderer:
    """A function that renders ``source`` with a context; raises :class:`TemplateFailed`.

    Compiled templates are kept (they are immutable and safe to share): compiling costs far
    more than rendering, and the same texts are rendered for every person of a message.
    """
    if not any(marker in source for marker in _MARKERS):
        return lambda _context: source
    try:
        template = _environment(html).compile_bounded(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateFailed(f"template syntax error on line {exc.lineno}: {exc.message}") from exc
    except (RecursionError, MemoryError, SyntaxError) as exc:
        raise TemplateFailed("the template is nested too deeply") from exc

    def render(context: Mapping[str, Any]) -> str:
        try:
            with budget():
                text = template.render(context)
        except TemplateFailed:
            raise
        except (RecursionError, MemoryError) as exc:
            raise BudgetExceeded("it nests too deeply") from exc
        except MissingDataError as exc:
            raise MissingData(str(exc)) from exc
        except jinja2.UndefinedError as exc:
            raise TemplateFailed(_explain_undefined(str(exc))) from exc
        except jinja2.TemplateError as exc:
            raise TemplateFailed(f"template error: {exc}") from exc
        except (ArithmeticError, LookupError, TypeError, ValueError, AttributeError) as exc:
            raise TemplateFailed(f"template error: {type(exc).__name__}: {exc}") from exc
        if len(text) > MAX_RENDERED:
            raise TemplateFailed(f"the text renders longer than {MAX_RENDERED} characters")
        return text

    return render


_FIELDS = ", ".join(sorted(PROBE.context()))


def _explain_undefined(error: str) -> str:
    missing = re.search(r"has no attribute '([^']*)'", error)
    if missing and "_Namespace" in error:
        return (
            f"recipient has no field {missing.group(1)!r}; the fields are {_FIELDS}, "
            "and attributes.<name> for the recipient's own attributes"
        )
    name = re.search(r"'([^']*)' is undefined", error)
    if name:
        return (
            f"{name.group(1)!r} is not defined here; a title can use recipient and data, a "
            "body also title, an HTML part or a template parameter also body"
        )
    return f"template uses something that does not exist: {error}"


def context_for(
    recipient: RecipientView, data: Mapping[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """What a template sees: the recipient, ``data`` (as :func:`template_data` makes it; ``None``:
    empty) and ``extra``."""
    return {
        "recipient": _Namespace(recipient.context()),
        "data": template_data(None) if data is None else data,
        **extra,
    }


@dataclass(frozen=True, slots=True)
class Content:
    """What one recipient is sent on one channel."""

    title: str
    body: str
    html: str | None = None
    template_parameters: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class TemplateChoice:
    """A WhatsApp template to send, with the Jinja2 sources of its body parameters."""

    name: str
    language: str
    parameters: tuple[str, ...] = ()


class MessageTemplates:
    """Every template of one message, compiled once and rendered per recipient and channel.

    ``data`` is the data of the event the message came from, which every text sees as
    ``data``; raises :class:`TemplateFailed` for a template that does not compile, or data
    nested deeper than anything accepted.
    """

    def __init__(
        self,
        title: str,
        body: str,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        self._data = template_data(data)
        self._title = compile_text(title)
        self._body = compile_text(body)
        self._channel: dict[str, dict[str, Renderer]] = {}
        self._params: dict[str, list[Renderer]] = {}
        #: The WhatsApp template the message itself names, if any.
        self.whatsapp_template: TemplateChoice | None = None
        for channel, content in (overrides or {}).items():
            compiled: dict[str, Renderer] = {}
            for part in ("title", "body"):
                if content.get(part) is not None:
                    compiled[part] = compile_text(content[part])
            if content.get("html") is not None:
                compiled["html"] = compile_text(content["html"], html=True)
            self._channel[channel] = compiled
            template = content.get("template")
            if template is not None:
                sources = tuple(template.get("parameters", []))
                self._params[channel] = [compile_text(p) for p in sources]
                if channel == "whatsapp":
                    self.whatsapp_template = TemplateChoice(
                        template["name"], template.get("language", "en"), sources
                    )

    def render(
        self,
        channel: str,
        recipient: RecipientView,
        *,
        template_parameters: list[str] | None = None,
    ) -> Content:
        """The content for ``recipient`` on ``channel``; raises :class:`TemplateFailed`.

        ``template_parameters`` are the parameters of a WhatsApp template that does not come
        from the message itself (the provider's default template). All texts of one person's
        content share one rendering budget.
        """
        with budget():
            return self._render(channel, recipient, template_parameters)

    def _render(
        self, channel: str, recipient: RecipientView, template_parameters: list[str] | None
    ) -> Content:
        context = context_for(recipient, self._data)
        own = self._channel.get(channel, {})
        title = (own.get("title") or self._title)(context)
        body = (own.get("body") or self._body)(context | {"title": title})
        if channel == "sms" and "body" in own:
            title = ""  # an SMS override is the whole text
        html = own["html"](context | {"title": title, "body": body}) if "html" in own else None
        filled = context | {"title": title, "body": body}
        parameters: tuple[str, ...] | None = None
        if channel in self._params:
            parameters = tuple(p(filled) for p in self._params[channel])
        elif template_parameters is not None:
            parameters = tuple(compile_text(p)(filled) for p in template_parameters)
        return Content(title, body, html, parameters)


def uses_templates(title: str, body: str, overrides: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether any text of a message is a template; if none is, it reads the same for everyone
    and :func:`check` needs no recipients."""
    texts = [title, body]
    for content in overrides.values():
        texts += [content[part] for part in ("title", "body", "html") if content.get(part)]
        texts += (content.get("template") or {}).get("parameters", [])
    return any(marker in text for text in texts for marker in _MARKERS)


def check(
    title: str,
    body: str,
    overrides: Mapping[str, Mapping[str, Any]],
    recipients: list[RecipientView],
    loc: tuple[str | int, ...] = ("body",),
    data: Mapping[str, Any] | None = None,
    *,
    probe: bool = True,
) -> MessageTemplates:
    """Compile and try every template of a message; a problem is a 422 naming the field.

    Each is rendered for :data:`PROBE` and for ``recipients``; ``probe=False`` leaves the probe
    out when there are recipients (an event's templates, already tried for the probe when
    their event type was saved, are rendered for the event's real people).

    Every template is rendered with ``data``. Without data (``None``, as for an event type,
    whose events bring it) ``data`` is empty, and a use of it that only a value could satisfy
    (``{{ data.total + 1 }}``) is accepted; with data, nothing missing is excused. Data nested
    too deeply is a 422 at ``(*loc, "data")``.
    """
    try:
        seen = template_data(data)
    except TemplateFailed as exc:
        raise InvalidRequest(
            "The data cannot be given to templates.",
            [FieldError((*loc, "data"), str(exc), "data_invalid")],
        ) from exc
    # What each kind of text may refer to: a title only the recipient (and the data), a body
    # also the title, an HTML part or a template parameter also the body.
    sees = {"title": {}, "body": {"title": ""}, "html": {"title": "", "body": ""}}
    sources: list[tuple[tuple[str | int, ...], str, str]] = [
        ((*loc, "title"), title, "title"),
        ((*loc, "body"), body, "body"),
    ]
    for channel, content in overrides.items():
        for part in ("title", "body", "html"):
            if content.get(part) is not None:
                sources.append(((*loc, "overrides", channel, part), content[part], part))
        template = content.get("template") or {}
        for i, parameter in enumerate(template.get("parameters", [])):
            where: tuple[str | int, ...] = (*loc, "overrides", channel, "template", "parameters", i)
            sources.append((where, parameter, "html"))
    errors: list[FieldError] = []
    # The first person is always tried; the rest only while there is time, since every
    # render is bounded by its budget at send time anyway.
    sampling_ends = time.monotonic() + CHECK_SECONDS
    people = [PROBE, *recipients] if probe or not recipients else recipients
    for where, source, kind in sources:
        try:
            renderer = compile_text(source, html=kind == "html" and where[-1] == "html")
            for i, recipient in enumerate(people):
                if i and time.monotonic() > sampling_ends:
                    break
                try:
                    renderer(context_for(recipient, seen, **sees[kind]))
                except MissingData:
                    if data is not None:
                        raise
        except TemplateFailed as exc:
            errors.append(FieldError(where, str(exc), "template_invalid"))
    if errors:
        raise InvalidRequest("A template in the message cannot be rendered.", errors)
    return MessageTemplates(title, body, overrides, seen)
