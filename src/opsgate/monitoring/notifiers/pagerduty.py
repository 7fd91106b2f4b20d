"""PagerDuty Events API v2 notifier (``POST /v2/enqueue``, PagerDuty "Events API v2" docs).

``trigger``/``escalate``/``repeat`` send ``event_action: trigger`` with the alert group's stable
``dedup_key`` (≤ 255 characters), so PagerDuty keeps one incident per group; ``acknowledge`` and
``resolve`` send those actions with the same key. ``payload.summary`` ≤ 1,024 characters;
``payload.severity``: P1 ``critical``, P2 ``error``, P3 ``warning``. 202 is success; 400 is
permanent; 429 and 5xx are retried. The routing key is added at send time.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from opsgate.monitoring.notifiers import Notification, check_http, clip

SUMMARY_LIMIT = 1024
DEDUP_LIMIT = 255
PD_SEVERITY = {"P1": "critical", "P2": "error", "P3": "warning"}
ACTIONS = {"acknowledge": "acknowledge", "resolve": "resolve"}


class PagerDutyNotifier:
    """Sends to ``url`` (default ``https://events.pagerduty.com/v2/enqueue``) with ``routing_key``."""

    channel = "pagerduty"

    def __init__(self, session: aiohttp.ClientSession, url: str, routing_key: str) -> None:
        self.session = session
        self.url = url
        self.routing_key = routing_key

    def render(self, note: Notification, recipient: str) -> list[dict[str, Any]]:
        """One Events v2 body without ``routing_key``."""
        action = ACTIONS.get(note.event, "trigger")
        body: dict[str, Any] = {"event_action": action, "dedup_key": note.dedup_key[:DEDUP_LIMIT]}
        if action == "trigger":
            body["payload"] = {
                "summary": clip(f"[{note.severity}] {note.title}: {note.summary}", SUMMARY_LIMIT),
                "source": "opsgate",
                "severity": PD_SEVERITY.get(note.severity, "error"),
                "timestamp": note.at,
                "component": note.details.get("operation") or note.details.get("provider") or "gateway",
                "class": note.dedup_key.split(":", 1)[0],
                "custom_details": {"incident_id": note.incident_id, **note.details},
            }
        return [body]

    async def send(self, payload: dict[str, Any]) -> None:
        """POST one event; :class:`DeliveryError` unless 202."""
        async with self.session.post(self.url, json={"routing_key": self.routing_key, **payload}) as resp:
            await check_http(resp, ok=(202,))
