"""The daily security report over a real migrated SQLite database and ledger."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import insert

from opsgate.clock import ManualClock
from opsgate.config import Settings
from opsgate.ledger.writer import Ledger
from opsgate.monitoring.models import incidents
from opsgate.reports.ledger_window import entries_between
from opsgate.reports.render import render
from opsgate.reports.security import build_security_report
from opsgate.security.counts import add_counts
from opsgate.store.db import make_engine, upgrade

DAY = date(2026, 11, 29)


@pytest.fixture
def engine(tmp_path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def _append(engine, clock, entries) -> None:  # type: ignore[no-untyped-def]
    ledger = Ledger(engine, clock)
    ledger.start()
    try:
        for hours, kind, payload in entries:
            clock.advance(hours * 3600)
            ledger.append_sync(kind, payload)
    finally:
        ledger.close()


def _incident(i: str, severity: str, opened: datetime, resolved: datetime | None) -> dict:  # type: ignore[type-arg]
    return {
        "id": i,
        "dedup_key": f"k{i}",
        "episode": 1,
        "rule": "error_rate",
        "severity": severity,
        "title": "t",
        "summary": "s",
        "labels": "{}",
        "pages": False,
        "state": "resolved" if resolved else "open",
        "opened_at": opened,
        "resolved_at": resolved,
        "escalation_level": 0,
        "last_notified_at": opened,
        "repeats": 0,
        "version": 1,
    }


def test_counts_come_from_the_ledger_and_tables(engine) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock(datetime(2026, 11, 28, 20, tzinfo=UTC))
    access = {"secret": "ANTHROPIC_API_KEY", "actor": "gateway", "purpose": "provider call"}
    _append(
        engine,
        clock,
        [
            (1, "secret_access", access),  # 28th 21:00: the day before
            (4, "secret_access", access),  # 29th 01:00
            (1, "secret_access", {**access, "actor": "cli"}),  # 29th 02:00
            (1, "secret_access", access),  # 29th 03:00
            (23, "secret_access", access),  # 30th 02:00: the day after
        ],
    )
    with engine.begin() as conn:
        conn.execute(
            insert(incidents),
            [
                _incident(
                    "a",
                    "P1",
                    datetime(2026, 11, 29, 5, tzinfo=UTC),
                    datetime(2026, 11, 29, 6, tzinfo=UTC),
                ),
                _incident("b", "P2", datetime(2026, 11, 29, 7, tzinfo=UTC), None),
                _incident(
                    "c",
                    "P2",
                    datetime(2026, 11, 28, 7, tzinfo=UTC),
                    datetime(2026, 11, 29, 1, tzinfo=UTC),
                ),
            ],
        )
    settings = Settings(cors_origins=["*"], session_cookie_secure=False, _env_file=None)
    report = build_security_report(engine, settings, DAY, datetime(2026, 11, 30, 3, tzinfo=UTC))
    s = report["sections"]
    assert s["secret_accesses"]["total"] == 3
    assert s["secret_accesses"]["by_secret_actor"] == [
        {"secret": "ANTHROPIC_API_KEY", "actor": "gateway", "count": 2},
        {"secret": "ANTHROPIC_API_KEY", "actor": "cli", "count": 1},
    ]
    assert s["ledger"]["entries"] == 5 and s["ledger"]["entries_in_window"] == 3
    assert s["ledger"]["verification"]["ok"] is True
    assert s["incidents"]["opened"] == {"P1": 1, "P2": 1}
    assert s["incidents"]["closed"] == {"P1": 1, "P2": 1}
    assert s["incidents"]["open_now"] == {"P2": 1}
    assert [f["setting"] for f in s["weak_config"]["findings"]] == [
        "cors_origins",
        "session_cookie_secure",
    ]
    assert report["not_available"] == []
    assert s["auth_failures"] == {"available": True, "total": 0, "rows": []}


def test_window_search_matches_a_full_scan(engine) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock(datetime(2026, 11, 28, 22, tzinfo=UTC))
    _append(engine, clock, [(0.5, "note", {"n": n}) for n in range(12)])
    start = datetime(2026, 11, 29, 0, 30, tzinfo=UTC)
    got = [e["n"] for e in entries_between(engine, start, start + timedelta(hours=2))]
    assert got == [4, 5, 6, 7]


def test_formats_show_the_same_numbers_and_escape(engine) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(cors_origins=["http://evil.example/<script>"], _env_file=None)
    add_counts(engine, DAY, {("token_rejection", "expired"): 3})
    report = build_security_report(engine, settings, DAY, datetime(2026, 11, 30, tzinfo=UTC))
    md, html, doc = render(report, "md"), render(report, "html"), json.loads(render(report, "json"))
    assert "# opsgate security report 2026-11-29" in md
    assert "| cors_origins | http://evil.example/<script> |" in md
    assert "&lt;script&gt;" in html and "<script>" not in html
    assert doc["sections"]["weak_config"]["findings"][0]["value"] == "http://evil.example/<script>"
    assert "not available:" not in md and "not available:" not in html
    assert "## Failed sign-ins and token rejections: 3 in total" in md
    assert "| token_rejection | expired | 3 |" in md
    assert "<td>token_rejection</td><td>expired</td><td>3</td>" in html
    with pytest.raises(ValueError):
        render(report, "pdf")
