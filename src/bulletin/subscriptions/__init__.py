"""Status out: webhook endpoints, the outbox of what to tell them, and the signed sends."""
