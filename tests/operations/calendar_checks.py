"""Independent checks of calendar-time answers: busy time read straight from an iCalendar file
without the product's code (:func:`independent_busy`), and :func:`assert_no_conflict`, which holds
an answer's slots against it."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import icalendar
import recurring_ical_events

from opsgate.operations.calendar import TimeOutput


def independent_busy(text: str, start: datetime, end: datetime, tz: ZoneInfo) -> list[tuple[datetime, datetime]]:
    """Busy time read straight from the file, without the product's code: opaque, not cancelled
    VEVENT instances (all-day = whole local days) and non-FREE VFREEBUSY periods."""
    calendar = icalendar.Calendar.from_ical(text)
    busy = []
    for event in recurring_ical_events.of(calendar).between(start - timedelta(days=2), end + timedelta(days=2)):
        if str(event.get("STATUS", "")).upper() == "CANCELLED" or str(event.get("TRANSP", "")).upper() == "TRANSPARENT":
            continue
        first = event["DTSTART"].dt
        last = event["DTEND"].dt if event.get("DTEND") else None
        if not isinstance(first, datetime):
            first = datetime(first.year, first.month, first.day, tzinfo=tz)
            last = datetime(last.year, last.month, last.day, tzinfo=tz) if isinstance(last, date) else first + timedelta(days=1)
        else:
            first = first if first.tzinfo else first.replace(tzinfo=tz)
            if last is None:
                last = first + (event["DURATION"].dt if event.get("DURATION") else timedelta(0))
            last = last if last.tzinfo else last.replace(tzinfo=tz)
        busy.append((first, last))
    for freebusy in calendar.walk("VFREEBUSY"):
        values = freebusy.get("FREEBUSY", [])
        for value in values if isinstance(values, list) else [values]:
            if value.params.get("FBTYPE", "BUSY").upper() != "FREE":
                begin, other = value.dt
                busy.append((begin, begin + other if isinstance(other, timedelta) else other))
    return busy


def assert_no_conflict(output: TimeOutput, busy: list[tuple[datetime, datetime]]) -> None:
    """Compared in UTC: Python compares and subtracts same-zone datetimes by wall clock."""
    utc = [(b.astimezone(UTC), e.astimezone(UTC)) for b, e in busy]
    window = (output.window_start.astimezone(UTC), output.window_end.astimezone(UTC))
    slots = sorted((s.start.astimezone(UTC), s.end.astimezone(UTC)) for s in output.slots)
    for (start, end), following in zip(slots, [*slots[1:], None], strict=True):
        assert end - start == timedelta(minutes=output.duration_minutes)
        assert window[0] <= start and end <= window[1]
        assert following is None or end <= following[0]
        for busy_start, busy_end in utc:
            point_inside = busy_start == busy_end and start < busy_start < end
            assert not point_inside and not (busy_start < end and busy_end > start), (start, busy_start, busy_end)
