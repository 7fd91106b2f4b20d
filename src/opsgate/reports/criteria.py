"""The seed's success-criteria table for a deployment (:func:`deployment_rows`): the rows of
:mod:`opsgate.monitoring.criteria` with today's security report for Security Issues."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine

from opsgate.config import Settings
from opsgate.monitoring.criteria import (
    Row,
    call_rows,
    file_source,
    reconciliation_row,
    rehearsal_calls,
    security_row,
    table,
    test_rows,
    window_calls,
)
from opsgate.reports.security import build_security_report


def deployment_rows(
    engine: Engine,
    settings: Settings,
    now: datetime,
    artifacts: Path,
    chain: Row,
    rehearsal: Path | None = None,
) -> list[dict[str, str]]:
    """The table for a deployment: the last test run in ``artifacts``; the calls of the
    ``rehearsal`` report when given (a deployment without traffic yet), else of the latest health
    window; the latest reconciliation; today's security report; ``chain`` as verified by the caller."""
    if rehearsal is not None:
        report = json.loads(rehearsal.read_text(encoding="utf-8"))
        calls = rehearsal_calls(report, file_source(rehearsal))
    else:
        calls = window_calls(engine, now, settings.health_window_s)
    security = build_security_report(engine, settings, now.date(), now)
    return table([
        *test_rows(artifacts), *call_rows(calls), reconciliation_row(engine), security_row(security), chain,
    ])
