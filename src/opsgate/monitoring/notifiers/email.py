"""Email notifier over SMTP (aiosmtplib; RFC 5321 submission, STARTTLS per RFC 3207 when
``starttls``). A 4xx SMTP reply or a connection failure is retried; a 5xx reply is permanent."""

from __future__ import annotations

from email.message import EmailMessage
from typing import Any

import aiosmtplib

from opsgate.monitoring.notifiers import DeliveryError, Notification


class EmailNotifier:
    """Sends plain-text mail from ``sender`` through ``host:port``."""

    channel = "email"

    def __init__(self, host: str, port: int, sender: str, *, username: str | None = None,
                 password: str | None = None, starttls: bool = True, timeout_s: float = 30.0) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.username, self.password = username, password
        self.starttls = starttls
        self.timeout_s = timeout_s

    def render(self, note: Notification, recipient: str) -> list[dict[str, Any]]:
        """``{"to", "subject", "body"}``."""
        subject = f"[opsgate {note.severity}] {note.event}: {note.title}"[:200]
        return [{"to": recipient, "subject": subject, "body": note.text()}]

    async def send(self, payload: dict[str, Any]) -> None:
        """Deliver one message; :class:`DeliveryError` when the server refuses it."""
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = self.sender, payload["to"], payload["subject"]
        message.set_content(payload["body"])
        try:
            await aiosmtplib.send(
                message, hostname=self.host, port=self.port, username=self.username,
                password=self.password, start_tls=self.starttls, timeout=self.timeout_s,
            )
        except aiosmtplib.SMTPResponseException as exc:
            raise DeliveryError(f"SMTP {exc.code}: {exc.message}"[:300], status=exc.code,
                                permanent=exc.code >= 500) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"SMTP failure: {type(exc).__name__}") from None
