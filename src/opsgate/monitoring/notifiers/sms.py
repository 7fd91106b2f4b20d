"""Twilio Programmable Messaging notifier (``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``,
Twilio "Message resource" docs): HTTP Basic auth (Account SID, auth token), form fields ``To``
(E.164), ``From``, ``Body``. A body over 1,600 characters fails with error 21617, so bodies are
cut to 1,600 with a truncation marker. 201 is success.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from opsgate.monitoring.notifiers import Notification, check_http, clip

BODY_LIMIT = 1600


class TwilioSmsNotifier:
    """Sends SMS from ``from_number`` through ``base_url`` (default ``https://api.twilio.com``)."""

    channel = "sms"

    def __init__(self, session: aiohttp.ClientSession, base_url: str, account_sid: str,
                 auth_token: str, from_number: str) -> None:
        self.session = session
        self.url = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
        self.headers = {"Authorization": aiohttp.encode_basic_auth(account_sid, auth_token)}
        self.from_number = from_number

    def render(self, note: Notification, recipient: str) -> list[dict[str, Any]]:
        """``{"To", "Body"}`` for ``recipient`` (E.164)."""
        return [{"To": recipient, "Body": clip(note.text(), BODY_LIMIT)}]

    async def send(self, payload: dict[str, Any]) -> None:
        """POST the form; :class:`DeliveryError` unless 201/200."""
        form = {"To": payload["To"], "From": self.from_number, "Body": payload["Body"]}
        async with self.session.post(self.url, data=form, headers=self.headers) as resp:
            await check_http(resp, ok=(200, 201))
