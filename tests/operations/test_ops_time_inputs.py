"""Regressions found by the API fuzz run (tests/security/test_api_fuzz.py): calendar-time working
hours with a UTC offset (naive/aware comparison, was a 500), calendar windows near the ends of the
``datetime`` range (overflow, was a 500) and task ``due`` values that broke TaskOut's own schema
(a date parsed as a naive midnight, naive datetimes serialised without an offset)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import jsonschema_rs
import pytest
from pydantic import ValidationError

from opsgate.errors import InvalidInput
from opsgate.operations import OPERATIONS
from opsgate.operations.ical import parse_calendar
from opsgate.operations.tasks import PrioritizeAnswer, TaskItem, TaskOut, task_out

TIME = OPERATIONS["calendar-time"]
PRIORITIZE = OPERATIONS["task-prioritize"]
ICS_9999 = (
    "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//t//EN\r\nBEGIN:VEVENT\r\nUID:1\r\n"
    "DTSTAMP:20250101T000000Z\r\nDTSTART:99991231T000000Z\r\nDTEND:99991231T010000Z\r\n"
    "END:VEVENT\r\nEND:VCALENDAR\r\n"
)


@pytest.mark.parametrize("field", ["day_start", "day_end"])
@pytest.mark.parametrize("value", ["09:00+01:00", "09:00Z", "17:30:00-07:51"])
def test_working_hours_with_an_offset_are_refused(field: str, value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TIME.Input.model_validate({"ics": "x", field: value})
    assert caught.value.errors()[0]["loc"] == (field,)
    assert "without a UTC offset" in caught.value.errors()[0]["msg"]


def test_wall_clock_working_hours_are_kept() -> None:
    data = TIME.Input.model_validate({"ics": "x", "day_start": "08:15", "day_end": "00:00"})
    assert (data.day_start.isoformat(), data.day_end.isoformat()) == ("08:15:00", "00:00:00")


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+23:00", "9999-12-31T00:00:00Z", "1899-12-31T23:59:59"])
def test_window_times_outside_the_supported_years_are_refused(moment: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TIME.Input.model_validate({"ics": "x", "window_start": moment})
    assert "years 1900 to 2200" in caught.value.errors()[0]["msg"]


def test_a_calendar_starting_in_year_9999_needs_a_window() -> None:
    data = TIME.Input.model_validate({"ics": ICS_9999})
    with pytest.raises(InvalidInput) as caught:
        data.window(parse_calendar(ICS_9999))
    assert caught.value.errors == [{"loc": "window_start", "msg": caught.value.detail}]
    start, end = TIME.Input.model_validate({"ics": ICS_9999, "window_start": "2200-12-30T00:00:00Z"}).window(None)
    assert end - start == timedelta(days=7) and end.year == 2201


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("0156-12-01", date(156, 12, 1)),
        ("2026-03-01T10:00:00", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("1438-08-22T14:20:53+07:51", datetime(1438, 8, 22, 14, 20, 53, tzinfo=timezone(timedelta(hours=7, minutes=51)))),
        ("0040-07-06T06:01:26-19:51", datetime(40, 7, 6, 6, 1, 26, tzinfo=timezone(-timedelta(hours=19, minutes=51)))),
    ],
)
def test_due_is_a_date_or_an_aware_datetime(given: str, kept: date) -> None:
    due = TaskItem.model_validate({"title": "t", "due": given}).due
    assert due == kept and type(due) is type(kept)
    if isinstance(due, datetime):
        assert due.utcoffset() == kept.utcoffset()  # type: ignore[union-attr]


def test_task_out_conforms_to_its_own_schema_with_formats() -> None:
    validator = jsonschema_rs.validator_for(TaskOut.model_json_schema(), validate_formats=True)
    dues = ["0156-12-01", "2026-03-01T10:00:00", "1438-08-22T14:20:53+07:51", "0001-01-01T00:00:00+23:59", None]
    for i, due in enumerate(dues):
        out = task_out(i, TaskItem.model_validate({"title": "t", "due": due}), date(2500, 8, 19))
        body = out.model_dump(mode="json")
        assert validator.is_valid(body), body
        assert out.overdue is (True if due is not None else None)


def test_prioritize_output_keeps_every_due_in_rfc3339() -> None:
    body = {"tasks": [{"title": "a", "due": "0156-12-01"}, {"title": "b", "due": "2026-01-02T03:04:05"},
                      {"title": "c", "due": "0040-07-06T06:01:26+19:51"}], "today": "2500-08-19"}
    prepared = PRIORITIZE.prepare(PRIORITIZE.Input.model_validate(body))
    output = PRIORITIZE.finish(prepared, PrioritizeAnswer(order=[], summary="s"))
    validator = jsonschema_rs.validator_for(PRIORITIZE.Output.model_json_schema(), validate_formats=True)
    dumped = output.model_dump(mode="json")
    assert validator.is_valid(dumped)
    assert [r["task"]["due"] for r in dumped["ranked"]] == [
        "0040-07-06T06:01:26+19:51", "0156-12-01", "2026-01-02T03:04:05Z"]
