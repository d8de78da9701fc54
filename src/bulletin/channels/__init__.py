"""Channels: the port every provider implements, the registry, and the providers themselves."""
