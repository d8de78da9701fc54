"""Bulletin: announcements and notifications over WhatsApp, SMS and email, delivered once."""

__version__ = "0.1.0"
