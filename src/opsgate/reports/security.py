"""The daily security report: what happened to the gateway's security in one UTC day.

:func:`build_security_report` reads only stored facts — the ledger (secret accesses, a fresh
verification), the tables of the security, ledger and monitoring domains — and the running
settings. A number whose source does not exist yet is reported as not available, with the reason,
never estimated. JSON shape (``format = "opsgate.security-report.v1"``)::

    {"format", "date": "YYYY-MM-DD", "window": {"start", "end"}, "generated_at",
     "sections": {
        "auth_failures" | "refresh_reuse" | "rejections" | "redactions":
            {"available": true, "total": int, "rows": [{"kind", "reason", "count"}]},
        "secret_accesses": {"available": true, "total": int,
                            "by_secret_actor": [{"secret", "actor", "count"}]},
        "keys": {"available": true, "policy_days": int, "current_key_id": int | null,
                 "rotation_due": bool, "keys": [{"key_id", "purpose", "created_at", "age_days",
                 "state"}]},
        "ledger": {"available": true, "entries": int, "entries_in_window": int,
                   "verification": {"ok", "summary"}, "recorded_verifications": {"ok", "failed",
                   "latest"}, "latest_checkpoint": {"size", "created_at"} | null,
                   "checkpoints_in_window": int, "anchors": [{"anchor", "anchored_size",
                   "anchored_in_window"}], "unanchored": int},
        "incidents": {"available": true, "opened": {sev: n}, "closed": {sev: n},
                      "open_now": {sev: n}},
        "weak_config": {"available": true, "findings": [{"setting", "value", "why"}]}},
     "not_available": [section names]}  (empty since every section has a stored source)

The four count sections read ``security_event_counts`` (:mod:`opsgate.security.counts`,
flushed by each serving process every minute): ``auth_failures`` holds the kinds
``sign_in_failure`` and ``token_rejection`` (access tokens on operation calls, refresh tokens),
``refresh_reuse``, ``rejections`` (``rate_limited``, ``budget_exceeded``) and ``redactions`` one
kind each; a section with no events has ``total`` 0 and no rows.

Times are ISO 8601 UTC; ages in days (one decimal, Decimal-rounded text is avoided: floats here
are durations, not money).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from opsgate.config import Settings
from opsgate.ledger.errors import LedgerError
from opsgate.ledger.models import ledger_anchor_records, ledger_anchor_state, ledger_checkpoints
from opsgate.ledger.service import log_size
from opsgate.ledger.verify import format_summary, verify
from opsgate.monitoring.health import LEDGER_VERIFY
from opsgate.monitoring.models import incidents, signals
from opsgate.reports.ledger_window import entries_between
from opsgate.reports.weak_config import weak_settings
from opsgate.security.counts import (
    REDACTION,
    REFRESH_REUSE,
    REJECTION,
    SIGN_IN_FAILURE,
    TOKEN_REJECTION,
    counts_for,
)
from opsgate.security.models import encryption_keys

FORMAT = "opsgate.security-report.v1"

COUNTED = {
    "auth_failures": (SIGN_IN_FAILURE, TOKEN_REJECTION),
    "refresh_reuse": (REFRESH_REUSE,),
    "rejections": (REJECTION,),
    "redactions": (REDACTION,),
}
"""Sections read from ``security_event_counts``, and the kinds each one sums."""


def day_window(day: date) -> tuple[datetime, datetime]:
    """``[day 00:00, next day 00:00)`` in UTC."""
    start = datetime.combine(day, time(0), tzinfo=UTC)
    return start, start + timedelta(days=1)


def build_security_report(
    engine: Engine, settings: Settings, day: date, now: datetime
) -> dict[str, Any]:
    """The report document for UTC ``day`` (see the module docstring); ``now`` (aware) stamps
    it and dates key ages. Raises :class:`~opsgate.ledger.errors.LedgerIOError` when the ledger
    cannot be read."""
    start, end = day_window(day)
    sections: dict[str, Any] = event_counts(engine, day)
    entries = list(entries_between(engine, start, end))
    sections["secret_accesses"] = secret_accesses(entries)
    sections["keys"] = key_status(engine, settings, now)
    sections["ledger"] = ledger_status(engine, start, end, len(entries))
    sections["incidents"] = incident_counts(engine, start, end)
    sections["weak_config"] = {"available": True, "findings": weak_settings(settings)}
    order = [
        "auth_failures",
        "refresh_reuse",
        "rejections",
        "secret_accesses",
        "keys",
        "ledger",
        "incidents",
        "redactions",
        "weak_config",
    ]
    return {
        "format": FORMAT,
        "date": day.isoformat(),
        "window": {"start": start.isoformat(), "end": end.isoformat()},
        "generated_at": now.isoformat(),
        "sections": {name: sections[name] for name in order},
        "not_available": [name for name in order if not sections[name]["available"]],
    }


def event_counts(engine: Engine, day: date) -> dict[str, dict[str, Any]]:
    """The :data:`COUNTED` sections of UTC ``day``: ``{"available": True, "total", "rows":
    [{"kind", "reason", "count"}]}``, rows by kind then most frequent reason first."""
    stored = counts_for(engine, day)
    sections = {}
    for name, kinds in COUNTED.items():
        rows: list[dict[str, Any]] = [
            {"kind": kind, "reason": reason, "count": n}
            for kind in kinds
            for reason, n in sorted(stored.get(kind, {}).items(), key=lambda i: (-i[1], i[0]))
        ]
        sections[name] = {"available": True, "total": sum(r["count"] for r in rows), "rows": rows}
    return sections


def secret_accesses(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts of ``secret_access`` ledger entries by (secret, actor), most frequent first."""
    counts = Counter((e["secret"], e["actor"]) for e in entries if e["kind"] == "secret_access")
    rows = [
        {"secret": s, "actor": a, "count": n}
        for (s, a), n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    ]
    return {"available": True, "total": sum(counts.values()), "by_secret_actor": rows}


def key_status(engine: Engine, settings: Settings, now: datetime) -> dict[str, Any]:
    """Every key of the field-encryption ring (``encryption_keys``) with its age and state
    (``current``, ``active``, ``retired``, ``index``); ``rotation_due`` when the current data key
    is older than ``key_rotation_days``."""
    k = encryption_keys.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(k.key_id, k.purpose, k.created_at, k.retired_at).order_by(k.key_id)
        ).all()
    live = [r.key_id for r in rows if r.purpose == "data" and r.retired_at is None]
    current = max(live, default=None)
    keys = []
    for r in rows:
        state = (
            "retired"
            if r.retired_at
            else "index"
            if r.purpose == "index"
            else "current"
            if r.key_id == current
            else "active"
        )
        age = (now - r.created_at).total_seconds() / 86400
        keys.append(
            {
                "key_id": r.key_id,
                "purpose": r.purpose,
                "created_at": r.created_at.isoformat(),
                "age_days": round(age, 1),
                "state": state,
            }
        )
    current_age = next((key["age_days"] for key in keys if key["state"] == "current"), None)
    return {
        "available": True,
        "policy_days": settings.key_rotation_days,
        "current_key_id": current,
        "rotation_due": current_age is not None and current_age > settings.key_rotation_days,
        "keys": keys,
    }


def ledger_status(engine: Engine, start: datetime, end: datetime, in_window: int) -> dict[str, Any]:
    """A fresh verification of the whole ledger, the verifications the worker recorded in the
    window, the checkpoints signed and the anchoring done in it."""
    try:
        report = verify(engine)
        verification = {"ok": report.ok, "summary": format_summary(report)}
    except (LedgerError, OSError) as exc:
        verification = {"ok": False, "summary": f"cannot verify: {type(exc).__name__}: {exc}"}
    s, cp, ar = signals.c, ledger_checkpoints.c, ledger_anchor_records.c
    with engine.connect() as conn:
        recorded = conn.execute(
            select(s.ok, s.detail, s.at)
            .where(s.kind == LEDGER_VERIFY, s.at >= start, s.at < end)
            .order_by(s.id)
        ).all()
        checkpoints = conn.execute(
            select(func.count()).where(cp.created_at >= start, cp.created_at < end)
        ).scalar()
        anchored_today: dict[str, int] = dict(
            conn.execute(
                select(ar.anchor, func.count())
                .where(ar.created_at >= start, ar.created_at < end)
                .group_by(ar.anchor)
            ).all()
        )
        anchors = conn.execute(
            select(ledger_anchor_state).order_by(ledger_anchor_state.c.anchor)
        ).all()
        latest = conn.execute(
            select(cp.size, cp.created_at).order_by(cp.size.desc()).limit(1)
        ).first()
    size = log_size(engine)
    return {
        "available": True,
        "entries": size,
        "entries_in_window": in_window,
        "verification": verification,
        "recorded_verifications": {
            "ok": sum(1 for r in recorded if r.ok),
            "failed": sum(1 for r in recorded if not r.ok),
            "latest": recorded[-1].detail if recorded else None,
        },
        "latest_checkpoint": {
            "size": latest.size,
            "created_at": latest.created_at.isoformat(),
        }
        if latest
        else None,
        "checkpoints_in_window": checkpoints,
        "anchors": [
            {
                "anchor": a.anchor,
                "anchored_size": a.anchored_size,
                "anchored_in_window": anchored_today.get(a.anchor, 0),
            }
            for a in anchors
        ],
        "unanchored": size - max((a.anchored_size for a in anchors), default=0),
    }


def incident_counts(engine: Engine, start: datetime, end: datetime) -> dict[str, Any]:
    """Incidents opened and resolved in the window, and those not resolved now, by severity."""
    i = incidents.c
    with engine.connect() as conn:

        def by_severity(*where: Any) -> dict[str, int]:
            rows = conn.execute(
                select(i.severity, func.count()).where(*where).group_by(i.severity)
            ).all()
            return dict(sorted((sev, n) for sev, n in rows))

        return {
            "available": True,
            "opened": by_severity(i.opened_at >= start, i.opened_at < end),
            "closed": by_severity(i.resolved_at >= start, i.resolved_at < end),
            "open_now": by_severity(i.state != "resolved"),
        }
