"""The chaos harness: ``python -m benchmarks.chaos``.

On a private PostgreSQL server of its own, it runs several Bulletin API and worker processes,
a provider process (WhatsApp Cloud API and SMTP, with latency and faults, keeping a ledger of
what it accepted and sending status webhooks back), and a client that creates announcements and
notifications, every POST twice with the same ``Idempotency-Key``, and cancels some scheduled
ones. Meanwhile it SIGKILLs a random Bulletin process every few seconds (and starts it again)
and crashes PostgreSQL. When the load is done it waits for every delivery to settle, then
reconciles the provider's ledger with Bulletin's records and the client's answers:
duplicates, losses, ``unknown`` deliveries and why, and sends started after a cancel returned.

A webhook endpoint subscribed to every kind points at a receiver process
(``benchmarks.chaos.receiver``) that verifies each request's signature, answers a few with 500
on purpose, and deduplicates by ``webhook-id``. Once the outbox has drained, every webhook event
Bulletin owed (delivery events whose state has a kind, completed and cancelled messages) is
held against the outbox and against what the receiver got: none may be missing.
"""
