"""The work of expanding a calendar is bounded by the calendar's rules, not by what they would
make (tester A's F1: a 200-byte FREQ=SECONDLY event built 605,000 occurrences before the cap).
The bounds are shown by counting the occurrences the library builds, never by timing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import icalendar
import pytest
from recurring_ical_events.occurrence import Occurrence

from opsgate.errors import InvalidInput
from opsgate.operations import OPERATIONS
from opsgate.operations.base import prepare_input
from opsgate.operations.ical import MAX_EXPANDED, MAX_INSTANCES, MAX_RULE_STEPS, event_instances, rule_steps

SECONDLY = "\r\n".join([  # tester A's body, 200 bytes of iCalendar
    "BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:x", "BEGIN:VEVENT", "UID:1", "DTSTART:20240101T100000Z",
    "DTEND:20240101T100001Z", "RRULE:FREQ=SECONDLY", "SUMMARY:s", "END:VEVENT", "END:VCALENDAR"])
GUARD = MAX_EXPANDED + 100
"""Where the counter stops a run that does not stop itself (the old code), so it fails at once."""


def event(rule: str, start: str = "20240101T100000Z", extra: str = "") -> str:
    return SECONDLY.replace("RRULE:FREQ=SECONDLY", f"RRULE:{rule}{extra}").replace(
        "DTSTART:20240101T100000Z\r\nDTEND:20240101T100001Z", f"DTSTART:{start}\r\nDURATION:PT1S")


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many occurrences the library has built; past :data:`GUARD` the next one raises."""
    count = [0]
    real = Occurrence.__init__

    def counted(self: Occurrence, *args: object, **kwargs: object) -> None:
        count[0] += 1
        if count[0] > GUARD:
            raise AssertionError(f"more than {GUARD} occurrences built")
        real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Occurrence, "__init__", counted)
    yield count


@pytest.mark.parametrize("op_id", ["calendar-prep", "calendar-time"])
def test_the_testers_secondly_event_is_refused_before_one_occurrence_is_built(op_id: str, built: list[int]) -> None:
    assert len(SECONDLY.encode()) < 210
    op = OPERATIONS[op_id]
    with pytest.raises(InvalidInput) as refused:
        prepare_input(op, op.Input.model_validate({"ics": SECONDLY}))
    assert f"make more than {MAX_RULE_STEPS} dates" in refused.value.detail
    assert refused.value.errors[0]["loc"] == "ics"
    assert built[0] == 0


@pytest.mark.parametrize("rule, start", [
    ("FREQ=SECONDLY", "20231201T000000Z"),  # dense, and begun a month before the window
    ("FREQ=MINUTELY", "20200101T000000Z"),  # the window is 4 years after DTSTART
    ("FREQ=DAILY;BYHOUR=0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23;"
     "BYMINUTE=0,10,20,30,40,50", "20190101T000000Z"),  # 144 a day through BYxxx lists
    ("FREQ=SECONDLY;COUNT=100000000", "20240101T000000Z"),  # a COUNT far past the window
    ("FREQ=HOURLY;UNTIL=22000101T000000Z", "19000101T000000Z"),  # an UNTIL far past the window
])
def test_a_rule_too_dense_up_to_the_windows_end_is_refused_unexpanded(rule: str, start: str, built: list[int]) -> None:
    calendar = icalendar.Calendar.from_ical(event(rule, start))
    window = datetime(2024, 1, 1, tzinfo=UTC)
    assert rule_steps(calendar, window + timedelta(days=8), UTC) > MAX_RULE_STEPS
    with pytest.raises(InvalidInput, match="they are not expanded"):
        event_instances(calendar, window, window + timedelta(days=7), UTC)
    assert built[0] == 0


def test_expansion_stops_one_past_the_cap(built: list[int]) -> None:
    """A minutely event under the step bound makes 11,520 occurrences in a 7-day window and its
    margins: the old code built them all (and kept the first 10,000 of an unordered list)."""
    calendar = icalendar.Calendar.from_ical(event("FREQ=MINUTELY", "20240101T000000Z"))
    window = datetime(2024, 1, 1, tzinfo=UTC)
    assert rule_steps(calendar, window + timedelta(days=8), UTC) <= MAX_RULE_STEPS
    with pytest.raises(InvalidInput, match=f"more than {MAX_INSTANCES} event occurrences in the window"):
        event_instances(calendar, window, window + timedelta(days=7), UTC)
    assert built[0] == MAX_EXPANDED + 1


def test_many_occurrences_near_but_outside_the_window_are_refused_too(built: list[int]) -> None:
    """10,800 occurrences in the day before the window, none inside: the old code cut the list
    at 10,000 and answered with nothing, whatever the cut-off part held."""
    calendar = icalendar.Calendar.from_ical(event("FREQ=SECONDLY;INTERVAL=8", "20231231T000000Z"))
    window = datetime(2024, 1, 1, tzinfo=UTC)
    with pytest.raises(InvalidInput, match=f"more than {MAX_EXPANDED} within a day of it"):
        event_instances(calendar, window + timedelta(hours=1), window + timedelta(days=1), UTC)
    assert built[0] == MAX_EXPANDED + 1


def test_long_running_rules_under_the_bound_still_expand(built: list[int]) -> None:
    """A daily event since 1900 and a yearly one with BYxxx parts: about 45,000 steps each."""
    text = event("FREQ=DAILY", "19000101T090000Z").replace(
        "END:VCALENDAR", "BEGIN:VEVENT\r\nUID:2\r\nDTSTART:19001122T120000Z\r\nDURATION:PT1H\r\n"
        "RRULE:FREQ=YEARLY;BYMONTH=11;BYDAY=4TH\r\nSUMMARY:t\r\nEND:VEVENT\r\nEND:VCALENDAR")
    calendar = icalendar.Calendar.from_ical(text)
    start = datetime(2024, 11, 25, tzinfo=UTC)
    assert rule_steps(calendar, start + timedelta(days=8), UTC) <= MAX_RULE_STEPS
    found = event_instances(calendar, start, start + timedelta(days=7), UTC)
    assert [(i.title, i.start.day) for i in found if i.title == "t"] == [("t", 28)]
    assert [i.start.day for i in found if i.title == "s"] == [25, 26, 27, 28, 29, 30, 1]
    assert built[0] < 20
