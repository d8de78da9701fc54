"""Every ORM table, imported in one place so that the metadata is complete (Alembic, tests)."""

from bulletin.db import Base
from bulletin.deliveries.models import Delivery, DeliveryEvent, Suppression
from bulletin.events.models import Event, EventType
from bulletin.idempotency.models import IdempotencyRecord
from bulletin.messages.models import Message, MessageRecipient
from bulletin.orgs.models import ApiKey, InstanceSecret, Organization
from bulletin.providers.models import ChannelConfig
from bulletin.ratelimits.models import RateLimitWindow, SignInThrottle, UsedSignInNonce
from bulletin.recipients.models import Recipient, RecipientGroup
from bulletin.sandbox.models import SandboxMessage
from bulletin.subscriptions.models import (
    WebhookAttempt,
    WebhookEndpoint,
    WebhookMessage,
    WebhookSubscription,
)
from bulletin.web.portal.models import PortalSession, PortalUser
from bulletin.webhooks.models import InboundSeen
from bulletin.worker.models import PacingSlot, PairSlot

__all__ = [
    "ApiKey",
    "Base",
    "ChannelConfig",
    "Delivery",
    "DeliveryEvent",
    "Event",
    "EventType",
    "IdempotencyRecord",
    "InboundSeen",
    "InstanceSecret",
    "Message",
    "MessageRecipient",
    "Organization",
    "PacingSlot",
    "PairSlot",
    "PortalSession",
    "PortalUser",
    "RateLimitWindow",
    "Recipient",
    "RecipientGroup",
    "SandboxMessage",
    "SignInThrottle",
    "Suppression",
    "UsedSignInNonce",
    "WebhookAttempt",
    "WebhookEndpoint",
    "WebhookMessage",
    "WebhookSubscription",
]
