"""Who is told at each escalation level.

Level 0 (on opening) by severity: **P1** Discord, team email, PagerDuty, on-call SMS; **P2**
Discord and team email, plus PagerDuty when the rule pages; **P3** Discord. Level 1 (the
severity's response time passed without acknowledgement): every on-call channel (Discord, team
email, PagerDuty, SMS). Level 2 (another response time later): also the admin contact list (email
and SMS). Acknowledging stops escalation. Channels that are not configured are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from opsgate.config import Settings

MAX_LEVEL = 2
Target = tuple[str, str]
"""(channel, recipient); the recipient is ``""`` for webhook channels (Discord, PagerDuty)."""


@dataclass(frozen=True, slots=True)
class Contacts:
    """Recipients: team and on-call (level 0/1), admins (level 2). Numbers are E.164."""

    email_to: tuple[str, ...] = ()
    sms_to: tuple[str, ...] = ()
    admin_email_to: tuple[str, ...] = ()
    admin_sms_to: tuple[str, ...] = ()
    configured: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_settings(cls, s: Settings, configured: frozenset[str]) -> Contacts:
        """Contacts from ``email_to``, ``sms_to``, ``admin_email_to``, ``admin_sms_to``."""
        return cls(tuple(s.email_to), tuple(s.sms_to), tuple(s.admin_email_to),
                   tuple(s.admin_sms_to), configured)

    def recipients(self, channel: str) -> list[str]:
        """Team/on-call recipients of ``channel`` (``[""]`` for webhooks)."""
        return {"email": list(self.email_to), "sms": list(self.sms_to)}.get(channel, [""])


def _channels(severity: str, level: int, pages: bool) -> list[str]:
    if level >= 1 or severity == "P1":
        return ["discord", "email", "pagerduty", "sms"]
    if severity == "P2":
        return ["discord", "email", "pagerduty"] if pages else ["discord", "email"]
    return ["discord"]


def targets(severity: str, level: int, pages: bool, contacts: Contacts) -> list[Target]:
    """Every (channel, recipient) to notify at ``level`` (cumulative over lower levels)."""
    found = [(c, r) for c in _channels(severity, level, pages) for r in contacts.recipients(c)]
    if level >= MAX_LEVEL:
        found += [("email", r) for r in contacts.admin_email_to]
        found += [("sms", r) for r in contacts.admin_sms_to]
    unique = list(dict.fromkeys(found))
    return [(c, r) for c, r in unique if c in contacts.configured and (r or c in ("discord", "pagerduty"))]


def new_targets(severity: str, level: int, pages: bool, contacts: Contacts) -> list[Target]:
    """Targets reached first at ``level`` (those of level − 1 were already notified)."""
    before = set(targets(severity, level - 1, pages, contacts)) if level > 0 else set()
    return [t for t in targets(severity, level, pages, contacts) if t not in before]
