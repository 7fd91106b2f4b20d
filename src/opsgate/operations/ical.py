"""Read iCalendar (RFC 5545) data: event instances in a window, busy time, tasks' source.

Parsing uses ``icalendar``; ``X-WR-TIMEZONE`` exports are normalised with ``x-wr-timezone``;
RRULE/RDATE/EXDATE and RECURRENCE-ID overrides are expanded with ``recurring-ical-events``.
Times are returned as aware datetimes in the requester's zone ``tz``:

- a UTC or TZID time is converted to ``tz``; a floating time (no zone) is read in ``tz``;
- an all-day event (DATE values) runs from local midnight of DTSTART to local midnight of DTEND
  (exclusive; one day when DTEND is absent) in ``tz``;
- busy (RFC 5545 §3.8.2.7, §3.8.1.11): an event is busy unless STATUS is CANCELLED or TRANSP is
  TRANSPARENT; a VFREEBUSY FREEBUSY period is busy unless its FBTYPE is FREE (BUSY,
  BUSY-UNAVAILABLE and BUSY-TENTATIVE block time; no FBTYPE means BUSY).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from collections.abc import Iterable
from email.utils import parseaddr
from typing import Any

import icalendar
import recurring_ical_events
import x_wr_timezone

from opsgate.operations.common import invalid, name_addr

MAX_INSTANCES = 5_000
Interval = tuple[datetime, datetime]


@dataclass(frozen=True)
class EventInstance:
    """One occurrence of a VEVENT in ``tz``. ``busy`` follows the module's rules."""

    title: str
    start: datetime
    end: datetime
    all_day: bool
    status: str
    busy: bool
    location: str
    description: str
    organizer: str
    attendees: list[str]


def parse_calendar(text: str, field: str = "ics") -> icalendar.Calendar:
    """Parse iCalendar text into a VCALENDAR; raises InvalidInput (``loc`` = ``field``) if broken."""
    try:
        calendar = icalendar.Calendar.from_ical(text)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise invalid(
            f"the '{field}' field is not valid iCalendar data (RFC 5545): {type(exc).__name__} "
            "while reading its lines; expected BEGIN:VCALENDAR ... END:VCALENDAR",
            field,
        ) from None
    if not isinstance(calendar, icalendar.Calendar) or calendar.name != "VCALENDAR":
        raise invalid(f"the '{field}' field must hold one VCALENDAR object", field)
    try:
        return x_wr_timezone.to_standard(calendar)
    except (ValueError, KeyError, TypeError):
        return calendar


def event_instances(calendar: icalendar.Calendar, start: datetime, end: datetime, tz: tzinfo) -> list[EventInstance]:
    """Every VEVENT occurrence overlapping ``[start, end)``, sorted by start, in ``tz``.

    Raises InvalidInput when a date or rule cannot be expanded, or when the window holds more
    than :data:`MAX_INSTANCES` occurrences.
    """
    margin = timedelta(days=1)
    try:
        components = recurring_ical_events.of(calendar, components=["VEVENT"]).between(
            start - margin, end + margin
        )
        instances = [_instance(component, tz) for component in components[: MAX_INSTANCES * 2]]
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
        raise invalid(
            f"the calendar's events could not be expanded ({type(exc).__name__}): a date, time "
            "zone or recurrence rule is invalid",
            "ics",
        ) from None
    inside = [i for i in instances if _overlaps(i.start, i.end, start, end)]
    if len(inside) > MAX_INSTANCES:
        raise invalid(
            f"the calendar has more than {MAX_INSTANCES} event occurrences in the window; "
            "choose a shorter window",
            "ics",
        )
    return sorted(inside, key=lambda i: (i.start, i.end, i.title))


def freebusy_periods(calendar: icalendar.Calendar, start: datetime, end: datetime, tz: tzinfo) -> list[Interval]:
    """Busy VFREEBUSY periods overlapping ``[start, end)``, in ``tz``, sorted."""
    periods: list[Interval] = []
    for component in calendar.walk("VFREEBUSY"):
        values = component.get("FREEBUSY", [])
        for value in values if isinstance(values, list) else [values]:
            if str(value.params.get("FBTYPE", "BUSY")).upper() == "FREE":
                continue
            first, second = _period(value, "FREEBUSY")
            period_start = to_zone(first, tz)
            period_end = to_zone(first + second, tz) if isinstance(second, timedelta) else to_zone(second, tz)
            if _overlaps(period_start, period_end, start, end):
                periods.append((period_start, period_end))
    return sorted(periods)


def busy_intervals(instances: list[EventInstance], periods: list[Interval]) -> list[Interval]:
    """Busy instances' ``(start, end)`` plus free/busy periods, sorted (not merged)."""
    return sorted([(i.start, i.end) for i in instances if i.busy] + periods)


def earliest_start(calendar: icalendar.Calendar, tz: tzinfo) -> datetime | None:
    """The earliest DTSTART of any VEVENT or VFREEBUSY (or FREEBUSY period), in ``tz``."""
    starts: list[datetime] = []
    for component in calendar.walk():
        if component.name in ("VEVENT", "VFREEBUSY") and component.get("DTSTART") is not None:
            starts.append(_when(component.get("DTSTART").dt, tz))
        if component.name == "VFREEBUSY":
            values = component.get("FREEBUSY", [])
            starts += [to_zone(_period(v, "FREEBUSY")[0], tz) for v in (values if isinstance(values, list) else [values])]
    return min(starts) if starts else None


def to_zone(value: datetime, tz: tzinfo) -> datetime:
    """``value`` in ``tz``; a naive (floating) value is read as wall-clock time in ``tz``."""
    return value.replace(tzinfo=tz) if value.tzinfo is None else value.astimezone(tz)


def _when(value: date | datetime, tz: tzinfo) -> datetime:
    if isinstance(value, datetime):
        return to_zone(value, tz)
    return datetime.combine(value, time(0), tzinfo=tz)


def _dt(component: icalendar.Component, name: str) -> Any:
    """``component[name].dt``: the date, datetime or duration of a date-time property (``Any``:
    icalendar types a property as the union of every value class, most without ``dt``)."""
    return getattr(component[name], "dt")


def _period(value: Any, name: str) -> tuple[datetime, Any]:
    period = getattr(value, "dt", None)
    if not isinstance(period, tuple) or not isinstance(period[0], datetime):
        raise invalid(f"a {name} value in the calendar is not a PERIOD", "ics")
    return period


def _instance(component: icalendar.Event, tz: tzinfo) -> EventInstance:
    raw_start = _dt(component, "DTSTART")
    all_day = not isinstance(raw_start, datetime)
    start = _when(raw_start, tz)
    end_prop = component.get("DTEND")
    if end_prop is not None:
        end = _when(end_prop.dt, tz)
    elif component.get("DURATION") is not None:
        end = start + _dt(component, "DURATION")
    else:
        end = start + (timedelta(days=1) if all_day else timedelta(0))
    status = str(component.get("STATUS", "CONFIRMED")).upper()
    transparent = str(component.get("TRANSP", "OPAQUE")).upper() == "TRANSPARENT"
    attendees = component.get("ATTENDEE", [])
    attendees = attendees if isinstance(attendees, list) else [attendees]
    return EventInstance(
        title=str(component.get("SUMMARY", "")),
        start=start,
        end=max(end, start),
        all_day=all_day,
        status=status,
        busy=status != "CANCELLED" and not transparent,
        location=str(component.get("LOCATION", "")),
        description=str(component.get("DESCRIPTION", "")),
        organizer=_person(component.get("ORGANIZER")),
        attendees=[_person(a) for a in attendees],
    )


def people_of(events: Iterable[EventInstance]) -> list[tuple[str, str]]:
    """The ``(display name, address)`` of every named organizer and attendee of ``events`` (the
    ``CN`` parameter, RFC 5545 §3.2.2), each once, in order of first appearance."""
    found: dict[tuple[str, str], None] = {}
    for event in events:
        for person in (event.organizer, *event.attendees):
            name, address = parseaddr(person)  # as :func:`_person` wrote it: ``name_addr``
            if name.strip() and address:
                found[(name, address)] = None
    return list(found)


def _person(value: Any) -> str:
    if value is None:
        return ""
    name = getattr(value, "params", {}).get("CN")
    address = str(value)
    address = address[7:] if address.lower().startswith("mailto:") else address
    return name_addr(name, address)


def _overlaps(start: datetime, end: datetime, window_start: datetime, window_end: datetime) -> bool:
    if start == end:
        return window_start <= start < window_end
    return start < window_end and end > window_start
