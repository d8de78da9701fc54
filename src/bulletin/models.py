"""Every ORM table, imported in one place so that the metadata is complete (Alembic, tests)."""

from bulletin.db import Base
from bulletin.deliveries.models import Delivery, DeliveryEvent, Suppression
from bulletin.idempotency.models import IdempotencyRecord
from bulletin.messages.models import Message, MessageRecipient
from bulletin.orgs.models import ApiKey, Organization
from bulletin.recipients.models import Recipient, RecipientGroup
from bulletin.sandbox.models import SandboxMessage

__all__ = [
    "ApiKey",
    "Base",
    "Delivery",
    "DeliveryEvent",
    "IdempotencyRecord",
    "Message",
    "MessageRecipient",
    "Organization",
    "Recipient",
    "RecipientGroup",
    "SandboxMessage",
    "Suppression",
]
