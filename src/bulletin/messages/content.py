"""What a person is sent on a channel: the one place where sends and previews are rendered.

The worker renders each send here (:func:`content_for`), and the portal's compose page shows
its previews from here (:func:`previews`), through the same templates and the same channel
renderers, so that what the page shows is what people get.

Decisions only: the caller passes the channel's configuration for the organization, as its
registry holds it, and the time. Outside WhatsApp's 24-hour customer-service window only an
approved template may be sent: the one the message names, or else the one of the
organization's WhatsApp configuration.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bulletin.channels.base import OutboundMessage, WhatsAppTemplate
from bulletin.channels.configs import AnyProviderConfig, WhatsAppCloudConfig
from bulletin.channels.sms import SmsLength, measure, sms_text
from bulletin.channels.smtp import html_from_text
from bulletin.channels.whatsapp import text_body
from bulletin.messages.service import view_of
from bulletin.messages.templates import (
    PROBE,
    Content,
    MessageTemplates,
    TemplateChoice,
    TemplateFailed,
)
from bulletin.recipients.models import Recipient


def window_open(inbound_at: dt.datetime | None, now: dt.datetime) -> bool:
    """Whether WhatsApp's 24-hour customer-service window is open for free-form messages."""
    # A minute's margin: the send must reach Meta while the window is still open.
    return inbound_at is not None and now - inbound_at < dt.timedelta(hours=24, minutes=-1)


def content_for(
    templates: MessageTemplates | None,
    recipient: Recipient,
    channel: str,
    config: AnyProviderConfig | None,
    now: dt.datetime,
) -> tuple[Content, WhatsAppTemplate | None]:
    """What ``recipient`` is sent on ``channel`` from a message's compiled ``templates``
    (``None``: they are not valid), configured by ``config``, and the WhatsApp template it goes
    as, if any; raises TemplateFailed when it cannot be sent."""
    if templates is None:
        raise TemplateFailed("the message's templates are not valid")
    if not isinstance(config, WhatsAppCloudConfig):
        return templates.render(channel, view_of(recipient)), None
    chosen = templates.whatsapp_template
    if chosen is None and not window_open(recipient.whatsapp_inbound_at, now):
        if config.template is None:
            raise TemplateFailed(
                "the person has not written on WhatsApp in the last 24 hours, so only an "
                "approved template may be sent, and neither the message nor the WhatsApp "
                "configuration names one"
            )
        chosen = TemplateChoice(
            config.template.name, config.template.language, tuple(config.template.parameters)
        )
    if chosen is None:
        return templates.render(channel, view_of(recipient)), None
    content = templates.render(
        channel, view_of(recipient), template_parameters=list(chosen.parameters)
    )
    parameters = content.template_parameters or ()
    return content, WhatsAppTemplate(chosen.name, chosen.language, parameters)


def has_template(templates: MessageTemplates | None, config: AnyProviderConfig | None) -> bool:
    """Whether a WhatsApp message with these ``templates`` can go as an approved template."""
    if not isinstance(config, WhatsAppCloudConfig):
        return False
    named = templates is not None and templates.whatsapp_template is not None
    return named or config.template is not None


@dataclass(frozen=True, slots=True)
class Previews:
    """A message as each channel sends it to a sample person (:data:`PROBE`)."""

    #: The SMS text and its length in characters and segments.
    sms: str
    sms_length: SmsLength
    #: The free-form WhatsApp text.
    whatsapp: str
    #: The email's HTML part.
    email_html: str


def previews(
    title: str, body: str, overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> Previews:
    """Each channel's text for a sample person, rendered as sends are; raises TemplateFailed."""
    compiled = MessageTemplates(title, body, overrides)
    whatsapp, email, sms = (compiled.render(c, PROBE) for c in ("whatsapp", "email", "sms"))
    text = sms_text(sms.title, sms.body)
    if email.html is not None:
        email_html = email.html
    else:
        email_html = html_from_text(
            OutboundMessage(
                delivery_id=0,
                attempt=1,
                org_id=uuid.UUID(int=0),
                message_id=uuid.UUID(int=0),
                channel="email",
                address="probe@example.org",
                recipient_external_id="probe",
                recipient_name="Probe Person",
                locale="en",
                title=email.title,
                body=email.body,
                category=None,
            )
        )
    return Previews(
        sms=text,
        sms_length=measure(text),
        whatsapp=text_body(whatsapp.title, whatsapp.body),
        email_html=email_html,
    )
