"""Hold the provider's ledger against Bulletin's own records and against what the client was
promised: duplicates, losses, ``unknown`` deliveries and why, sends after a cancel."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from benchmarks.chaos.load import Workload

SENT_STATES = {"sent", "delivered", "read"}
FINAL_STATES = SENT_STATES | {"failed", "suppressed", "cancelled", "unknown"}


@dataclass
class Report:
    messages_accepted: int = 0
    messages_in_bulletin: int = 0
    deliveries_expected: int = 0
    deliveries_in_bulletin: int = 0
    provider_accepted: int = 0
    duplicates: int = 0
    lost: int = 0
    unknown: int = 0
    unknown_explained: int = 0
    settled_by_receipts: int = 0
    sends_after_cancel: int = 0
    by_state: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    unknown_reasons: dict[str, int] = field(default_factory=dict)

    def flag(self, kind: str, text: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(f"{kind}: {text}")


@dataclass
class Timeline:
    """What happened to the processes, for explaining ``unknown`` deliveries."""

    #: Process ids of the workers killed with SIGKILL.
    killed_workers: set[int]
    #: When PostgreSQL was crashed (``time.time()``).
    database_restarts: list[float]
    #: A send claimed at ``t`` can still be in flight at ``t + window``.
    window: float

    def explain(self, claimed_at: float, claimer: str | None) -> str | None:
        pid = claimer.rpartition(":")[2] if claimer else ""
        if pid.isdigit() and int(pid) in self.killed_workers:
            return "in flight when its worker was killed"
        if any(claimed_at - 1.0 <= t <= claimed_at + self.window for t in self.database_restarts):
            return "in flight when PostgreSQL crashed"
        return None


async def reconcile(
    database_url: str,
    work: Workload,
    ledger: dict[str, Any],
    timeline: Timeline,
) -> Report:
    report = Report()
    conn = await asyncpg.connect(database_url)
    try:
        messages = await conn.fetch("SELECT id, state, routing FROM messages")
        deliveries = await conn.fetch(
            "SELECT d.id, d.message_id, r.external_id, d.channel, d.state, d.reason "
            "FROM deliveries d JOIN recipients r ON r.id = d.recipient_id"
        )
        claims = await conn.fetch(
            "SELECT delivery_id, at, detail FROM delivery_events WHERE state = 'sending'"
        )
        unknown_events = await conn.fetch(
            "SELECT DISTINCT delivery_id FROM delivery_events WHERE state = 'unknown'"
        )
    finally:
        await conn.close()

    once_unknown = {row["delivery_id"] for row in unknown_events}

    # --- messages: every 2xx answer names one message, and nothing else was created --------
    report.messages_in_bulletin = len(messages)
    promised: dict[uuid.UUID, Any] = {}
    for sent in work.sent:
        ids = set(sent.answers)
        if len(ids) != 1:
            report.duplicates += len(ids) - 1
            report.flag("duplicate message", f"key {sent.key} answered with {sorted(ids)}")
        promised[uuid.UUID(sent.message_id)] = sent
    report.messages_accepted = len(promised)
    for row in messages:
        if row["id"] not in promised:
            report.duplicates += 1
            report.flag("message nobody was promised", str(row["id"]))

    # --- provider ledger, by delivery ------------------------------------------------------
    accepted_by_delivery: Counter[int] = Counter()
    for entry in ledger["whatsapp"]:
        if entry["delivery"] is not None:
            accepted_by_delivery[int(entry["delivery"])] += 1
    for entry in ledger["email"]:
        # "<bulletin.{message id}.{delivery id}@domain>"
        local = entry["message_id"].strip("<>").split("@")[0]
        accepted_by_delivery[int(local.rsplit(".", 1)[1])] += 1
    report.provider_accepted = sum(accepted_by_delivery.values())
    for delivery_id, times in accepted_by_delivery.items():
        if times > 1:
            report.duplicates += times - 1
            report.flag("delivery accepted twice", f"delivery {delivery_id} x{times}")

    last_claim: dict[int, tuple[float, str | None]] = {}
    for row in claims:
        at = row["at"].timestamp()
        if at > last_claim.get(row["delivery_id"], (0.0, None))[0]:
            last_claim[row["delivery_id"]] = (at, row["detail"])

    # --- deliveries against what was promised ---------------------------------------------
    report.deliveries_in_bulletin = len(deliveries)
    rows_by_message: dict[uuid.UUID, list[Any]] = {}
    for row in deliveries:
        rows_by_message.setdefault(row["message_id"], []).append(row)
        report.by_state[row["state"]] = report.by_state.get(row["state"], 0) + 1
    known_ids = {row["id"] for row in deliveries}
    for delivery_id in accepted_by_delivery:
        if delivery_id not in known_ids:
            report.flag("provider got a delivery Bulletin does not have", str(delivery_id))
            report.duplicates += 1

    for message_id, sent in promised.items():
        rows = rows_by_message.get(message_id, [])
        accepted_pairs: Counter[tuple[str, str]] = Counter()
        reached: dict[str, set[str]] = {}
        for row in rows:
            state, delivery_id = row["state"], row["id"]
            if state not in FINAL_STATES:
                report.lost += 1
                report.flag("not final", f"delivery {delivery_id} is {state}")
            elif state in SENT_STATES and accepted_by_delivery[delivery_id] == 0:
                report.lost += 1
                report.flag("sent with no provider record", f"delivery {delivery_id}")
            if accepted_by_delivery[delivery_id]:
                pair = (row["external_id"], row["channel"] if sent.routing == "all" else "*")
                accepted_pairs[pair] += 1
            reached.setdefault(row["external_id"], set()).add(row["channel"])
            if state == "unknown":
                report.unknown += 1
                why = _explain(row, accepted_by_delivery, last_claim, timeline)
                report.unknown_reasons[why] = report.unknown_reasons.get(why, 0) + 1
                if why != "unexplained":
                    report.unknown_explained += 1
                else:
                    report.flag("unexplained unknown", f"delivery {delivery_id}")
            if state != "unknown" and delivery_id in once_unknown:
                report.settled_by_receipts += 1
            if sent.cancelled_at is not None:
                claimed = last_claim.get(delivery_id)
                if claimed is not None and claimed[0] > sent.cancelled_at:
                    report.sends_after_cancel += 1
                    report.flag("claimed after cancel", f"delivery {delivery_id}")
        for pair, times in accepted_pairs.items():
            if times > 1:
                report.duplicates += times - 1
                report.flag("person reached twice", f"message {message_id} {pair} x{times}")
        if sent.cancelled_at is not None:
            continue
        report.deliveries_expected += sent.expected
        for person in sent.audience:
            channels = reached.get(person, set())
            if sent.routing == "all":
                missing = [c for c in sent.channels if c not in channels]
            else:
                missing = [] if channels else ["any"]
            for channel in missing:
                report.lost += 1
                report.flag("no delivery", f"message {message_id} {person} {channel}")
    return report


def _explain(
    row: Any,
    accepted: Counter[int],
    last_claim: dict[int, tuple[float, str | None]],
    timeline: Timeline,
) -> str:
    """Why a delivery is ``unknown``, or ``"unexplained"``."""
    delivery_id = row["id"]
    if accepted[delivery_id]:
        if row["channel"] == "email":
            return "the provider has it; SMTP sends no receipts"
        return "unexplained"  # a WhatsApp receipt should have settled it
    if "lease expired" not in (row["reason"] or ""):
        # The worker itself saw the answer go missing: a timeout or a cut connection.
        return "the provider's answer was lost"
    claimed = last_claim.get(delivery_id)
    if claimed is not None:
        return timeline.explain(*claimed) or "unexplained"
    return "unexplained"


# --- webhooks -------------------------------------------------------------------------------

#: Delivery states that are told to webhook endpoints (``bulletin.subscriptions.kinds``).
TOLD_STATES = ("sent", "delivered", "read", "failed", "suppressed", "unknown")


@dataclass
class WebhookReport:
    """Webhook events Bulletin owed the run's endpoint against what its receiver got.

    ``expected``: events of the organization that the endpoint (subscribed to every kind) must
    be told, by kind group: delivery events whose state has a kind, ``message.completed`` per
    completed message, ``message.cancelled`` per cancelled one. ``received``: unique
    ``webhook-id``s the receiver answered 200. ``missing``: expected events with no outbox row,
    plus outbox rows never received (must be 0); ``unexpected``: ids received that are no row
    of the outbox; ``duplicates``: ids received again (retries after a kill, harmless to a
    receiver that deduplicates); ``invalid``: requests that failed signature verification;
    ``faults``: valid requests the receiver answered 500 on purpose; ``failed``: outbox rows
    that used up their retries; ``pending``: rows still pending when the run ended.
    """

    expected: dict[str, int] = field(default_factory=dict)
    outbox: int = 0
    received: int = 0
    missing: int = 0
    unexpected: int = 0
    duplicates: int = 0
    invalid: int = 0
    faults: int = 0
    failed: int = 0
    pending: int = 0
    endpoint_state: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.missing == 0
            and self.unexpected == 0
            and self.invalid == 0
            and self.failed == 0
            and self.pending == 0
            and self.endpoint_state == "active"
        )

    def flag(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)


async def reconcile_webhooks(
    database_url: str, endpoint_id: str, received_ids: list[str], receiver: dict[str, Any]
) -> WebhookReport:
    """Hold the outbox and the deliveries' history against what the receiver got."""
    report = WebhookReport()
    endpoint = uuid.UUID(endpoint_id)
    conn = await asyncpg.connect(database_url)
    try:
        state = await conn.fetchval("SELECT state FROM webhook_endpoints WHERE id = $1", endpoint)
        org = await conn.fetchval("SELECT org_id FROM webhook_endpoints WHERE id = $1", endpoint)
        events = await conn.fetch(
            "SELECT ev.id FROM delivery_events ev JOIN deliveries d ON d.id = ev.delivery_id "
            "WHERE d.org_id = $1 AND ev.state = ANY($2::text[])",
            org,
            list(TOLD_STATES),
        )
        finished = await conn.fetch(
            "SELECT id, state FROM messages WHERE org_id = $1 AND state IN "
            "('completed', 'cancelled')",
            org,
        )
        rows = await conn.fetch(
            "SELECT id, kind, delivery_event_id, message_id, state FROM webhook_messages "
            "WHERE endpoint_id = $1",
            endpoint,
        )
    finally:
        await conn.close()
    report.endpoint_state = str(state)
    report.outbox = len(rows)
    report.received = len(received_ids)
    report.duplicates = int(receiver["duplicates"])
    report.invalid = int(receiver["invalid"])
    report.faults = int(receiver["faults"])
    report.failed = sum(1 for r in rows if r["state"] == "failed")
    report.pending = sum(1 for r in rows if r["state"] == "pending")
    report.expected = {
        "delivery.*": len(events),
        "message.completed": sum(1 for m in finished if m["state"] == "completed"),
        "message.cancelled": sum(1 for m in finished if m["state"] == "cancelled"),
    }

    told_events = {r["delivery_event_id"] for r in rows if r["delivery_event_id"] is not None}
    told_messages = {(r["message_id"], r["kind"]) for r in rows if r["kind"].startswith("message.")}
    for event in events:
        if event["id"] not in told_events:
            report.missing += 1
            report.flag(f"delivery event {event['id']} has no webhook")
    for message in finished:
        if (message["id"], f"message.{message['state']}") not in told_messages:
            report.missing += 1
            report.flag(f"message {message['id']} ({message['state']}) has no webhook")
    received = set(received_ids)
    outbox_ids = {f"msg_{r['id']}" for r in rows}
    for row in rows:
        if f"msg_{row['id']}" not in received:
            report.missing += 1
            report.flag(f"webhook msg_{row['id']} ({row['kind']}, {row['state']}) never received")
    report.unexpected = len(received - outbox_ids)
    for webhook_id in sorted(received - outbox_ids)[:5]:
        report.flag(f"received {webhook_id}, which is no row of the outbox")
    return report
