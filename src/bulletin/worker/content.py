"""What a person is sent on a channel, and whether a WhatsApp message may go as a template.

Decisions only: the dispatcher passes the channel's configuration for the organization, as
its registry holds it, and the time. Outside WhatsApp's 24-hour customer-service window only
an approved template may be sent: the one the message names, or else the one of the
organization's WhatsApp configuration.
"""

from __future__ import annotations

import datetime as dt

from bulletin.channels.base import WhatsAppTemplate
from bulletin.channels.configs import AnyProviderConfig, WhatsAppCloudConfig
from bulletin.deliveries.receipts import window_open
from bulletin.messages.service import view_of
from bulletin.messages.templates import Content, TemplateChoice, TemplateFailed
from bulletin.recipients.models import Recipient
from bulletin.worker.policy import MessageFacts


def content_for(
    message: MessageFacts,
    recipient: Recipient,
    channel: str,
    config: AnyProviderConfig | None,
    now: dt.datetime,
) -> tuple[Content, WhatsAppTemplate | None]:
    """What ``recipient`` is sent on ``channel``, configured by ``config``, and the WhatsApp
    template it goes as, if any; raises TemplateFailed when it cannot be sent."""
    if message.templates is None:
        raise TemplateFailed("the message's templates are not valid")
    if not isinstance(config, WhatsAppCloudConfig):
        return message.templates.render(channel, view_of(recipient)), None
    chosen = message.templates.whatsapp_template
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
        return message.templates.render(channel, view_of(recipient)), None
    content = message.templates.render(
        channel, view_of(recipient), template_parameters=list(chosen.parameters)
    )
    parameters = content.template_parameters or ()
    return content, WhatsAppTemplate(chosen.name, chosen.language, parameters)


def has_template(message: MessageFacts, config: AnyProviderConfig | None) -> bool:
    """Whether a WhatsApp message of ``message`` can go as an approved template."""
    if not isinstance(config, WhatsAppCloudConfig):
        return False
    named = message.templates is not None and message.templates.whatsapp_template is not None
    return named or config.template is not None
