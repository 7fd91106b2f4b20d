"""calendar-prep / calendar-time on the real calendars, with an independent busy-time check."""

from __future__ import annotations

from datetime import UTC, date, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from tests.operations.calendar_checks import assert_no_conflict, independent_busy
from tests.shared_data import SHARED_DATA

from opsgate.errors import InvalidInput
from opsgate.operations import OPERATIONS
from opsgate.operations.calendar import TimeAnswer, TimeOutput
from opsgate.operations.io import input_from_file

REPO = Path(__file__).resolve().parents[2]
DATA = SHARED_DATA
CALENDARS = sorted((DATA / "calendars").glob("*.ics"))
TIME = OPERATIONS["calendar-time"]
PREP = OPERATIONS["calendar-prep"]


def run_time(body: dict) -> TimeOutput:
    prepared = TIME.prepare(TIME.Input.model_validate(body))
    answer = TimeAnswer(ranked=[{"slot": 0, "reason": "earliest"}, {"slot": 999, "reason": "invented"}], summary="ok")
    return TIME.finish(prepared, answer)


@pytest.mark.parametrize("path", CALENDARS, ids=lambda p: p.name)
@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_real_calendar_slots_never_overlap_busy_time(path: Path, zone: str) -> None:
    text = path.read_text(encoding="utf-8")
    body = {"ics": text, "timezone": zone, "day_start": "00:00", "day_end": "00:00",
            "weekdays": list(range(7)), "max_slots": 50, "duration_minutes": 30}
    output = run_time(body)
    busy = independent_busy(text, output.window_start, output.window_end, ZoneInfo(zone))
    assert_no_conflict(output, busy)
    assert output.dropped_references == 1
    assert all(r.index < len(output.slots) for r in output.recommended)


@pytest.mark.parametrize("path", CALENDARS, ids=lambda p: p.name)
def test_real_calendar_prep_prepares(path: Path) -> None:
    prepared = PREP.prepare(PREP.Input.model_validate({"ics": path.read_text(encoding="utf-8")}))
    assert '<data name="events">' in prepared.request.user
    assert prepared.context["window_end"] - prepared.context["window_start"] == timedelta(days=7)


def test_freebusy_periods_block_time_except_free() -> None:
    text = (DATA / "calendars" / "ccs-put-015.ics").read_text(encoding="utf-8")
    output = run_time({"ics": text, "duration_minutes": 30, "day_start": "00:00", "day_end": "00:00",
                       "weekdays": list(range(7)), "max_slots": 50,
                       "window_start": "2027-01-08T12:00:00Z", "window_end": "2027-01-08T22:00:00Z"})
    starts = {s.start.astimezone(UTC).strftime("%H:%M") for s in output.slots}
    assert {"13:00", "14:30", "16:30", "17:30", "19:00", "21:00"}.isdisjoint(starts)
    assert {"12:00", "12:30", "15:00", "18:00", "19:30", "21:30"} <= starts
    assert output.busy_count == 4


def test_cancelled_transparent_and_all_day_rules_on_the_example() -> None:
    body = input_from_file("calendar-time", REPO / "examples" / "calendar-time.json")
    body.update(max_slots=50, duration_minutes=15, granularity_minutes=15)
    output = run_time(body)
    local = {(s.start.strftime("%Y-%m-%d %H:%M")) for s in output.slots}
    assert "2026-03-10 12:00" in local  # cancelled lunch is free
    assert "2026-03-13 13:00" in local  # transparent focus time is free
    assert not any(s.start.date() == date(2026, 3, 12) for s in output.slots)  # all-day offsite blocks
    assert "2026-03-09 09:30" not in local  # stand-up
    assert "2026-03-11 10:00" not in local and "2026-03-11 09:30" in local  # moved instance (RECURRENCE-ID)
    assert "2026-03-13 09:30" not in local  # EXDATE frees 09:30 but free/busy blocks 09:00-11:00 Berlin


def test_dst_change_keeps_local_working_hours() -> None:
    ics = "BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:-//t//t//EN\nEND:VCALENDAR\n"
    output = run_time({"ics": ics, "timezone": "Europe/Berlin", "duration_minutes": 60, "max_slots": 50,
                       "window_start": "2026-03-27T00:00:00", "window_end": "2026-03-31T00:00:00",
                       "weekdays": list(range(7)), "day_start": "09:00", "day_end": "11:00"})
    assert [s.start.strftime("%m-%d %H:%M %z") for s in output.slots] == [
        "03-27 09:00 +0100", "03-27 10:00 +0100", "03-28 09:00 +0100", "03-28 10:00 +0100",
        "03-29 09:00 +0200", "03-29 10:00 +0200", "03-30 09:00 +0200", "03-30 10:00 +0200",
    ]


def test_conflicts_are_computed_for_prep() -> None:
    body = input_from_file("calendar-prep", REPO / "examples" / "calendar-prep.ics", {"timezone": "Europe/Berlin"})
    prepared = PREP.prepare(PREP.Input.model_validate(body))
    events = prepared.context["events"]
    titles = {(events[i].title, events[j].title) for i, j in prepared.context["conflicts"]}
    assert ("Team offsite (all day)", "Team stand-up") in titles
    assert any(e.title == "Lunch with Sam" and not e.busy and e.status == "CANCELLED" for e in events)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"ics": "BEGIN:VCALENDAR\nBEGIN:VEVENT\nDTSTART:nonsense\nEND:VCALENDAR"}, "iCalendar"),
        ({"ics": "hello sk-ant-api03-SECRETSECRET"}, "iCalendar"),
        ({"ics": "BEGIN:VCALENDAR\nVERSION:2.0\nEND:VCALENDAR\n"}, "window_start is required"),
        ({"ics": "BEGIN:VCALENDAR\nVERSION:2.0\nEND:VCALENDAR\n", "window_start": "2026-01-01T00:00:00Z",
          "window_end": "2026-06-01T00:00:00Z"}, "at most 62 days"),
    ],
)
def test_bad_calendars_are_rejected_precisely(body: dict, fragment: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        TIME.prepare(TIME.Input.model_validate(body))
    assert fragment in caught.value.detail
    assert "SECRET" not in caught.value.detail and caught.value.errors[0]["loc"] in ("ics", "window_start", "window_end")


def test_unknown_time_zone_is_a_validation_error() -> None:
    with pytest.raises(ValueError, match="unknown IANA time zone"):
        TIME.Input.model_validate({"ics": "x", "timezone": "Mars/Olympus"})
