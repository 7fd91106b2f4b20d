"""Every real input in ../shared/data through its operations, over HTTP, against the sandboxes.

Zero 5xx; every 200 is schema-valid; every calendar-time slot is free of conflicts with the busy
instances expanded independently of the product's code (tests/operations/test_ops_calendar.py).
The only refusals allowed are 422 ``invalid_input`` for files the operation documents it cannot
take (the task-only .ics files for the calendar operations are not sent there at all).
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from tests.operations.calendar_checks import assert_no_conflict, independent_busy
from tests.shared_data import SHARED_DATA

from opsgate.operations import OPERATIONS
from opsgate.operations.calendar import TimeOutput
from opsgate.operations.io import input_from_file

DATA = SHARED_DATA
PLAN = {
    "emails/*.eml": ["email-classify", "email-respond", "email-compose"],
    "calendars/*.ics": ["calendar-prep", "calendar-time"],
    "tasks/*.ics": ["task-prioritize", "task-breakdown"],
    "series/*.csv": ["analytics-summary", "analytics-anomaly"],
}
CASES = [(op, path) for pattern, ops in PLAN.items() for path in sorted(DATA.glob(pattern)) for op in ops]


def test_the_shared_data_is_all_there():
    assert Counter(p.parent.name for _, p in CASES) == {
        "emails": 24 * 3, "calendars": 20 * 2, "tasks": 5 * 2, "series": 3 * 2}


@pytest.mark.parametrize("op_id", sorted(OPERATIONS))
def test_every_shared_file_runs_through_its_operations_over_http(gateway, op_id):
    statuses, slots = Counter(), 0
    for _, path in [c for c in CASES if c[0] == op_id]:
        resp = gateway.post(op_id, input_from_file(op_id, path))
        statuses[resp.status_code] += 1
        assert resp.status_code < 500, f"{path.name}: {resp.text}"
        if resp.status_code != 200:
            assert (resp.status_code, resp.json()["code"]) == (422, "invalid_input"), path.name
            continue
        output = OPERATIONS[op_id].Output.model_validate(resp.json()["output"])
        if op_id == "calendar-time":
            _assert_slots_free(path, output)
            slots += len(output.slots)
    assert statuses[200] >= sum(statuses.values()) * 0.9, statuses  # refusals are the exception
    assert op_id != "calendar-time" or slots >= 40  # the conflict check had real slots to check


def _assert_slots_free(path: Path, output: TimeOutput) -> None:
    busy = independent_busy(
        path.read_text(encoding="utf-8", errors="replace"),
        output.window_start,
        output.window_end + timedelta(days=1),
        output.window_start.tzinfo,
    )
    assert_no_conflict(output, busy)
