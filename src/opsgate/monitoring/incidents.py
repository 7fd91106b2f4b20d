"""Alert groups, their episodes and incidents: open, escalate, repeat, acknowledge, resolve.

:meth:`IncidentService.observe` takes a rule's :class:`~opsgate.monitoring.rules.Finding`:
a group that starts firing begins a new episode and opens one incident (unique per dedup key and
episode, so two workers cannot open two); a group that clears resolves its incident. Signals
(budget enforcement failures, rollout alerts) open incidents through :meth:`IncidentService.signal`.

Every state change (``incident.opened``, ``.severity``, ``.escalated``, ``.notified``,
``.acknowledged``, ``.resolved``, ``.signal``) is a ledger entry appended together with its
timeline row and the outbox rows of the notifications it causes, in one transaction. Changes to
an existing incident are claimed first with a conditional UPDATE on ``version``, so concurrent
workers or operators cannot apply one change twice.
"""

from __future__ import annotations

import builtins
import json
import secrets
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, RowMapping, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from opsgate.clock import Clock
from opsgate.errors import NotFound
from opsgate.ledger.errors import LedgerUnavailable
from opsgate.ledger.writer import InTransaction, Ledger
from opsgate.monitoring.errors import IncidentConflict
from opsgate.monitoring.escalation import MAX_LEVEL, Contacts, new_targets, targets
from opsgate.monitoring.health import LEDGER_VERIFY
from opsgate.monitoring.hooks import record_signal
from opsgate.monitoring.models import alerts, incident_events, incidents, outbox
from opsgate.monitoring.notifiers import Notification, Notifier
from opsgate.monitoring.outbox import outbox_rows
from opsgate.monitoring.rules import RESPONSE_TIME_S, Finding, Severity, ledger_failure
from opsgate.rollout.service import Rollout
from opsgate.store.db import begin_write

OPEN, ACKNOWLEDGED, RESOLVED = "open", "acknowledged", "resolved"
MONITOR = "monitoring"


class IncidentService:
    """Incidents of one database. ``notifiers`` by channel (configured ones only); ``contacts``
    says who hears at each level; ``repeat_interval_s`` re-sends an unacknowledged incident."""

    def __init__(self, engine: Engine, ledger: Ledger, clock: Clock, notifiers: Mapping[str, Notifier],
                 contacts: Contacts, *, repeat_interval_s: float = 4 * 3600) -> None:
        self.engine = engine
        self.ledger = ledger
        self.clock = clock
        self.notifiers = dict(notifiers)
        self.contacts = contacts
        self.repeat_interval_s = repeat_interval_s

    # alert groups ---------------------------------------------------------------------------
    def observe(self, finding: Finding) -> str | None:
        """Apply one finding to its group; returns the id of an incident opened or resolved."""
        if finding.firing is None:
            return None
        now, key = self.clock.now(), finding.dedup_key
        with self.engine.connect() as conn:
            state = conn.execute(select(alerts).where(alerts.c.dedup_key == key)).mappings().first()
        if finding.firing:
            if state is None or not state["firing"]:
                episode = (state["episode"] if state else 0) + 1
                if not self._flip(key, finding, state, True, episode, now):
                    return None
                return self.open(finding, episode)
            return self._maybe_raise(key, state["episode"], finding)
        if state is not None and state["firing"] and self._flip(key, finding, state, False, state["episode"], now):
            current = self._by_key(key, state["episode"])
            if current is not None and current["state"] != RESOLVED:
                self.resolve(current["id"], MONITOR, f"condition cleared ({finding.value})")
                return current["id"]
        return None

    def _flip(self, key: str, f: Finding, state: RowMapping | None, firing: bool,
              episode: int, now: datetime) -> bool:
        values = {"rule": f.rule, "labels": json.dumps(f.labels, sort_keys=True), "firing": firing,
                  "severity": f.severity, "episode": episode, "since": now, "value": f.value[:64],
                  "updated_at": now}
        with begin_write(self.engine) as conn:
            if state is None:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(alerts).values(dedup_key=key, **values))
                    return True
                except IntegrityError:
                    return False
            done = conn.execute(update(alerts).where(
                alerts.c.dedup_key == key, alerts.c.firing == state["firing"],
                alerts.c.episode == state["episode"]).values(values))
            return done.rowcount == 1

    # incidents ------------------------------------------------------------------------------
    def open(self, f: Finding, episode: int) -> str | None:
        """Open the incident of (``f.dedup_key``, ``episode``) and notify level 0 (or, for an
        ``immediate`` finding, the top level at once). None if another worker opened it."""
        now = self.clock.now()
        severity = f.severity or Severity.P2
        level = MAX_LEVEL if f.immediate else 0
        row: dict[str, Any] = {
            "id": "inc-" + secrets.token_hex(6), "dedup_key": f.dedup_key, "episode": episode,
            "rule": f.rule, "severity": severity, "title": f.title[:255], "summary": f.summary,
            "labels": json.dumps(f.labels, sort_keys=True), "pages": f.pages, "state": OPEN,
            "opened_at": now, "escalation_level": level,
            "next_escalation_at": None if level >= MAX_LEVEL else now + timedelta(seconds=RESPONSE_TIME_S[severity]),
            "last_notified_at": now, "repeats": 0, "version": 0,
        }
        note = _note(row, "trigger", now, {**f.labels, **f.details})
        reach = targets(severity, level, f.pages, self.contacts)
        try:
            self._append("opened", row, MONITOR, f.summary, note, reach, f"{row['id']}:trigger",
                         first=[(incidents, row)])
        except LedgerUnavailable:
            if self._by_key(f.dedup_key, episode) is not None:
                return None  # a concurrent worker opened it (unique key + episode)
            raise
        return row["id"]

    def acknowledge(self, incident_id: str, actor: str) -> dict[str, Any]:
        """Acknowledge an open incident: escalation and repeats stop; PagerDuty and Discord hear
        of it. :class:`NotFound` (404), :class:`IncidentConflict` (409) unless open."""
        now = self.clock.now()
        row, claim = self._claim(incident_id, {OPEN}, {"state": ACKNOWLEDGED, "acknowledged_at": now,
                                                       "acknowledged_by": actor[:128], "next_escalation_at": None})
        reach = [t for t in self._reached(row) if t[0] in ("pagerduty", "discord")]
        self._append("acknowledged", row, actor, f"acknowledged by {actor}", _note(row, "acknowledge", now),
                     reach, f"{incident_id}:acknowledge", work=claim)
        return self.show(incident_id)

    def resolve(self, incident_id: str, actor: str, note: str) -> dict[str, Any]:
        """Resolve with ``note``; everyone notified so far hears of it (PagerDuty ``resolve``).
        :class:`NotFound` (404), :class:`IncidentConflict` (409) when already resolved."""
        now = self.clock.now()
        row, claim = self._claim(incident_id, {OPEN, ACKNOWLEDGED}, {
            "state": RESOLVED, "resolved_at": now, "resolved_by": actor[:128],
            "resolution_note": note, "next_escalation_at": None})
        self._append("resolved", row, actor, note, _note(row, "resolve", now, {"note": note[:500]}),
                     self._reached(row), f"{incident_id}:resolve", work=claim)
        return self.show(incident_id)

    def escalate_due(self) -> list[str]:
        """Raise every open incident whose response time passed by one level; returns their ids."""
        now = self.clock.now()
        due = self._select((incidents.c.state == OPEN) & (incidents.c.next_escalation_at <= now))
        done = []
        for row in due:
            level = row["escalation_level"] + 1
            nxt = None if level >= MAX_LEVEL else now + timedelta(seconds=RESPONSE_TIME_S[Severity(row["severity"])])
            try:
                row, claim = self._claim(row["id"], {OPEN}, {"escalation_level": level, "next_escalation_at": nxt,
                                                             "last_notified_at": now}, version=row["version"])
                reach = new_targets(row["severity"], level, row["pages"], self.contacts)
                self._append("escalated", row, MONITOR, f"not acknowledged: escalated to level {level}",
                             _note(row, "escalate", now, {"level": str(level)}), reach,
                             f"{row['id']}:escalate:{level}", work=claim)
            except IncidentConflict:
                continue
            done.append(row["id"])
        return done

    def repeat_due(self) -> list[str]:
        """Re-send every unacknowledged incident last notified ``repeat_interval_s`` ago."""
        now = self.clock.now()
        due = self._select((incidents.c.state == OPEN) &
                           (incidents.c.last_notified_at <= now - timedelta(seconds=self.repeat_interval_s)))
        done = []
        for row in due:
            try:
                row, claim = self._claim(row["id"], {OPEN}, {"repeats": row["repeats"] + 1, "last_notified_at": now},
                                         version=row["version"])
                self._append("notified", row, MONITOR, f"repeat {row['repeats']}", _note(row, "repeat", now),
                             self._reached(row), f"{row['id']}:repeat:{row['repeats']}", work=claim)
            except IncidentConflict:
                continue
            done.append(row["id"])
        return done

    def signal(self, f: Finding, detail: str) -> str | None:
        """A one-off event (no clearing condition): open an incident for ``f``'s group, or add
        ``detail`` to the timeline of the group's unresolved incident. Returns the incident id."""
        with self.engine.connect() as conn:
            current = conn.execute(select(incidents).where(
                incidents.c.dedup_key == f.dedup_key, incidents.c.state != RESOLVED)).mappings().first()
            last = conn.execute(select(func.max(incidents.c.episode)).where(
                incidents.c.dedup_key == f.dedup_key)).scalar() or 0
        if current is None:
            return self.open(f, last + 1)
        self._append("signal", dict(current), MONITOR, detail, None, [], "")
        return current["id"]

    def ledger_failed(self, detail: str) -> str | None:
        """A ledger verification failure found outside the worker's periodic check (``opsgate
        backup restore`` finding the restored ledger behind its anchor): record the failed
        verification, so the ``ledger_integrity`` rule keeps its group firing until a later
        verification passes, and raise the rule's P1 incident now (top escalation level, the
        notifications queued in the outbox). Returns the incident id; None when the group was
        already firing (its incident is open)."""
        record_signal(self.engine, self.clock, LEDGER_VERIFY, "ledger", ok=False, detail=detail)
        return self.observe(ledger_failure(detail))

    # reading --------------------------------------------------------------------------------
    def list(self, state: str | None = None, limit: int = 100) -> builtins.list[dict[str, Any]]:
        """Incidents, newest first, optionally in one ``state``."""
        where = incidents.c.state == state if state else incidents.c.id.is_not(None)
        with self.engine.connect() as conn:
            rows = conn.execute(select(incidents).where(where)
                                .order_by(incidents.c.opened_at.desc()).limit(limit)).mappings()
            return [incident_json(r) for r in rows]

    def show(self, incident_id: str) -> dict[str, Any]:
        """One incident with its timeline and notifications; :class:`NotFound` (404)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(incidents).where(incidents.c.id == incident_id)).mappings().first()
            if row is None:
                raise NotFound("no such incident")
            events = conn.execute(select(incident_events).where(incident_events.c.incident_id == incident_id)
                                  .order_by(incident_events.c.id)).mappings().all()
            notes = conn.execute(select(outbox).where(outbox.c.incident_id == incident_id)
                                 .order_by(outbox.c.id)).mappings().all()
        body = incident_json(row)
        body["timeline"] = [{"at": _iso(e["at"]), "kind": e["kind"], "actor": e["actor"], "detail": e["detail"]}
                            for e in events]
        body["notifications"] = [{"channel": n["channel"], "recipient": n["recipient"], "key": n["notify_key"],
                                  "state": n["state"], "attempts": n["attempts"], "last_status": n["last_status"]}
                                 for n in notes]
        return body

    def open_p1(self, rollout: Rollout) -> int:
        """The canary controller's ``open_p1`` for ``rollout``: unresolved (open or acknowledged)
        P1 incidents that :func:`concerns` it. A P1 about another operation does not roll it back."""
        with self.engine.connect() as conn:
            labels = conn.execute(select(incidents.c.labels).where(
                incidents.c.severity == Severity.P1.value, incidents.c.state != RESOLVED)).scalars().all()
        return sum(concerns(json.loads(found), rollout.operations, rollout.id) for found in labels)

    # internals ------------------------------------------------------------------------------
    def _maybe_raise(self, key: str, episode: int, f: Finding) -> str | None:
        row = self._by_key(key, episode)
        if row is None or row["state"] == RESOLVED:
            return None
        if f.severity is None or f.severity >= row["severity"]:  # StrEnum order: lower is more urgent
            self._refresh(row["id"], f)
            return None
        now = self.clock.now()
        try:
            row, claim = self._claim(row["id"], {OPEN, ACKNOWLEDGED}, {"severity": f.severity, "title": f.title[:255],
                                                                       "summary": f.summary}, version=row["version"])
            self._append("severity", row, MONITOR, f"severity raised to {f.severity}", _note(row, "escalate", now),
                         targets(f.severity, row["escalation_level"], row["pages"], self.contacts),
                         f"{row['id']}:severity:{f.severity}", work=claim)
        except IncidentConflict:
            return None
        return row["id"]

    def _refresh(self, incident_id: str, f: Finding) -> None:
        """Keep an unresolved incident's title and summary at the latest figures, so escalations
        and repeats say what is true now, not what was true when it opened (no notification)."""
        with begin_write(self.engine) as conn:
            conn.execute(update(incidents).where(incidents.c.id == incident_id, incidents.c.state != RESOLVED)
                         .values(title=f.title[:255], summary=f.summary))

    def _reached(self, row: Mapping[str, Any]) -> builtins.list[tuple[str, str]]:
        return targets(row["severity"], row["escalation_level"], row["pages"], self.contacts)

    def _claim(self, incident_id: str, allowed: set[str], values: dict[str, Any],
               version: int | None = None) -> tuple[dict[str, Any], InTransaction[None]]:
        """The incident as ``values`` will leave it, and the work that changes it in the
        transaction of the ledger entry recording the change (:meth:`_append`): a compare-and-set
        on the version read here, so the change takes effect with its entry or not at all.
        :class:`NotFound`; :class:`IncidentConflict` when the state is not ``allowed``, the
        version is not ``version``, or (raised by the work, refusing the append) the incident
        changed meanwhile."""
        with self.engine.connect() as conn:
            row = conn.execute(select(incidents).where(incidents.c.id == incident_id)).mappings().first()
        if row is None:
            raise NotFound("no such incident")
        if row["state"] not in allowed or (version is not None and row["version"] != version):
            raise IncidentConflict(f"incident {incident_id} is {row['state']}")
        seen = row["version"]

        def claim(conn: Connection) -> None:
            done = conn.execute(update(incidents).where(incidents.c.id == incident_id, incidents.c.version == seen)
                                .values({**values, "version": seen + 1}))
            if done.rowcount != 1:
                raise IncidentConflict(f"incident {incident_id} changed meanwhile")

        return {**row, **values, "version": seen + 1}, claim

    def _append(self, kind: str, row: Mapping[str, Any], actor: str, detail: str, note: Notification | None,
                reach: builtins.list[tuple[str, str]], notify_key: str, first: builtins.list[tuple[Any, Any]] | None = None,
                work: InTransaction[None] | None = None) -> None:
        now = self.clock.now()
        event = {"incident_id": row["id"], "at": now, "kind": kind, "actor": actor[:128], "detail": detail[:2000]}
        rows = list(first or []) + [(incident_events, event)]
        if note is not None and reach:
            rows += [(outbox, r) for r in outbox_rows(self.notifiers, note, reach, notify_key, now)]
        self.ledger.append_sync(f"incident.{kind}", {
            "incident_id": row["id"], "dedup_key": row["dedup_key"], "episode": row["episode"],
            "severity": row["severity"], "state": row["state"], "actor": actor[:128],
            "level": row["escalation_level"], "detail": detail[:500],
            "notify": [f"{c}:{r}" for c, r in reach] if note is not None else [],
        }, rows=rows, work=work)

    def _by_key(self, key: str, episode: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(incidents).where(
                incidents.c.dedup_key == key, incidents.c.episode == episode)).mappings().first()
        return dict(row) if row else None

    def _select(self, where: Any) -> builtins.list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(incidents).where(where).order_by(incidents.c.opened_at))
                    .mappings()]


def concerns(labels: Mapping[str, str], operations: Collection[str], rollout_id: int) -> bool:
    """Whether an incident with ``labels`` concerns the rollout ``rollout_id`` of ``operations``:
    it names one of them (``operation``; a model event's ``target``, ``"<operation>
    <provider>/<model>"``), every operation (``operation="*"``: a budget enforcement failure not
    tied to one) or the rollout itself (``rollout``). An incident about a provider (outage, cost
    discrepancy) or the ledger concerns no rollout: an outage hits canary and control alike, which
    the controller's pause rule handles."""
    operation = labels.get("operation")
    if operation == "*" or operation in operations:
        return True
    target = labels.get("target")
    if target is not None and target.split(" ", 1)[0] in operations:
        return True
    return labels.get("rollout") == str(rollout_id)


def _note(row: Mapping[str, Any], event: str, now: datetime, details: Mapping[str, str] | None = None) -> Notification:
    labels = json.loads(row["labels"]) if isinstance(row["labels"], str) else row["labels"]
    return Notification(event, row["id"], row["dedup_key"], str(row["severity"]), row["title"], row["summary"],
                        now.isoformat(), {**labels, **(details or {})})


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def incident_json(r: Mapping[str, Any] | RowMapping) -> dict[str, Any]:
    """API shape of an incident row (times ISO 8601 UTC)."""
    return {
        "id": r["id"], "dedup_key": r["dedup_key"], "episode": r["episode"], "rule": r["rule"],
        "severity": r["severity"], "title": r["title"], "summary": r["summary"],
        "labels": json.loads(r["labels"]), "state": r["state"], "opened_at": _iso(r["opened_at"]),
        "acknowledged_at": _iso(r["acknowledged_at"]), "acknowledged_by": r["acknowledged_by"],
        "resolved_at": _iso(r["resolved_at"]), "resolved_by": r["resolved_by"],
        "resolution_note": r["resolution_note"], "escalation_level": r["escalation_level"],
        "next_escalation_at": _iso(r["next_escalation_at"]),
    }
