"""Notification channels. Each notifier turns a :class:`Notification` into one or more wire
payloads (:meth:`Notifier.render`, run when the notification is stored in the outbox, so a split
message is several outbox rows, each delivered exactly once) and sends one payload
(:meth:`Notifier.send`), raising :class:`DeliveryError` when it was not accepted.

Credentials are added at send time and never stored: a rendered payload holds no secret.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import aiohttp


@dataclass(frozen=True, slots=True)
class Notification:
    """What happened to an incident: ``event`` is ``trigger``, ``escalate``, ``repeat``,
    ``acknowledge``, ``resolve`` or ``delivery_failure``; ``at`` ISO 8601 UTC; ``dedup_key`` the
    alert group's key (≤ 255 characters)."""

    event: str
    incident_id: str
    dedup_key: str
    severity: str
    title: str
    summary: str
    at: str
    details: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (inverse of ``Notification(**d)``)."""
        return asdict(self)

    def text(self) -> str:
        """The plain-text form used by chat, SMS and email bodies."""
        head = f"[{self.severity}] {self.event.upper()}: {self.title}"
        lines = [head, self.summary, f"incident {self.incident_id} · {self.dedup_key} · {self.at}"]
        lines += [f"{k}: {v}" for k, v in sorted(self.details.items())]
        return "\n".join(lines)


class DeliveryError(Exception):
    """A payload was not accepted. ``permanent``: retrying cannot help (a 4xx other than 429);
    ``retry_after``: seconds the receiver asked us to wait; ``status``: the HTTP/SMTP code."""

    def __init__(self, detail: str, *, status: int | None = None,
                 retry_after: float | None = None, permanent: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.retry_after = retry_after
        self.permanent = permanent


class Notifier(Protocol):
    """One channel: ``channel`` is ``discord``, ``email``, ``sms`` or ``pagerduty``."""

    channel: str

    def render(self, note: Notification, recipient: str) -> list[dict[str, Any]]: ...

    async def send(self, payload: dict[str, Any]) -> None: ...


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP-date (RFC 9110 §10.2.3);
    None when absent or unreadable (including ``inf``/``nan``: the value is the receiver's, so it is
    untrusted input; the caller caps how long it honours it)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


async def check_http(response: aiohttp.ClientResponse, ok: tuple[int, ...] = (200, 201, 202, 204)) -> None:
    """Raise :class:`DeliveryError` unless ``response.status`` is in ``ok``: 429 and 5xx are
    retryable (429 carries Retry-After), any other status is permanent. The body (first 300
    characters) goes into the detail; it never holds our credentials."""
    if response.status in ok:
        return
    body = (await response.text())[:300]
    status = response.status
    retryable = status == 429 or status >= 500
    raise DeliveryError(
        f"HTTP {status}: {body}", status=status, permanent=not retryable,
        retry_after=retry_after_s(response.headers.get("Retry-After")) if status == 429 else None,
    )


def clip(text: str, limit: int, marker: str = " …[truncated]") -> str:
    """``text`` cut to ``limit`` characters, ending with ``marker`` when it was cut."""
    return text if len(text) <= limit else text[: limit - len(marker)] + marker
