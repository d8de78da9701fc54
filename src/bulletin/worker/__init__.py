"""The delivery engine: the scheduler resolves due messages, the dispatcher sends deliveries."""
