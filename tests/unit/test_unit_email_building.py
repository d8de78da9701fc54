"""The email built for a delivery, without a server (the adapter against the local SMTP server
is tested in ``integration/test_channel_smtp.py``).
"""

from __future__ import annotations

from bulletin.channels.configs import SmtpConfig
from bulletin.channels.smtp import build_email
from support.outbound import outbound_message

SENDER = "notices@water.example.org"


def test_build_email_puts_a_line_broken_title_on_one_line() -> None:
    config = SmtpConfig(host="smtp.example.org", from_address=SENDER)

    email = build_email(
        outbound_message("email", title="Line one\r\nBcc: evil@example.org"), config
    )

    assert email["Subject"] == "Line one Bcc: evil@example.org"
    assert "Bcc" not in email
