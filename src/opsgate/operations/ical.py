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

Expansion work is bounded, whatever the text (tester A's F1: a 200-byte ``RRULE:FREQ=SECONDLY``
event built 605,000 occurrences, 1.3 GB and 40 s, before the occurrence cap was checked):

- before anything is expanded, :func:`rule_steps` bounds the dates the calendar's rules and
  RDATEs make from each DTSTART to the end of the window: dateutil steps through every one of
  them, those before the window included. Past :data:`MAX_RULE_STEPS` the calendar is refused;
- occurrences are then built lazily, series by series, and expansion stops at the first one past
  :data:`MAX_EXPANDED` (within a day of the window) — the calendar is refused, as it is past
  :data:`MAX_INSTANCES` occurrences inside the window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from collections.abc import Iterable
from email.utils import parseaddr
from itertools import islice
from collections.abc import Iterator
from typing import Any

import icalendar
import recurring_ical_events
import x_wr_timezone

from opsgate.operations.common import invalid, name_addr

MAX_INSTANCES = 5_000
"""The most occurrences a window may hold."""
MAX_EXPANDED = 2 * MAX_INSTANCES
"""The most occurrences built for a window and the day either side of it (time zones, all-day events)."""
MAX_RULE_STEPS = 250_000
"""The most dates the recurrence rules and RDATEs of one calendar may make up to the window's end
(:func:`rule_steps`): an hourly event begun in 1995 makes 249,721 for a window in 2024, expanded
in 1.2 s on this project's machine (2026-12-05); a daily event begun in 1900 makes about 45,000."""
_FREQS = ("SECONDLY", "MINUTELY", "HOURLY", "DAILY", "WEEKLY", "MONTHLY", "YEARLY")
_FREQ_SECONDS = (1, 60, 3_600, 86_400, 7 * 86_400, 28 * 86_400, 365 * 86_400)
"""The shortest length of each FREQ's period (a month of 28 days, a year of 365)."""
_PERIOD_DAYS = {"WEEKLY": 7, "MONTHLY": 31, "YEARLY": 366}
_DAY_PARTS = ("BYMONTH", "BYWEEKNO", "BYYEARDAY", "BYMONTHDAY", "BYDAY")
_TIME_PARTS = {"BYSECOND": 0, "BYMINUTE": 1, "BYHOUR": 2}
"""Each time part and the index in :data:`_FREQS` of the finest FREQ it does not expand."""
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

    Raises InvalidInput when a date or rule cannot be expanded, when its rules make more than
    :data:`MAX_RULE_STEPS` dates up to the window's end, or when the window holds more than
    :data:`MAX_INSTANCES` occurrences (more than :data:`MAX_EXPANDED` within a day of it).
    """
    margin = timedelta(days=1)
    try:
        steps = rule_steps(calendar, end + margin, tz)
        if steps > MAX_RULE_STEPS:
            raise invalid(
                f"the calendar's recurrence rules and RDATEs make more than {MAX_RULE_STEPS} dates "
                "up to the end of the window (a rule repeating every second or minute, or starting "
                "long before the window); they are not expanded",
                "ics",
            )
        built = list(islice(_occurrences(calendar, start - margin, end + margin), MAX_EXPANDED + 1))
        instances = [_instance(component, tz) for component in built]
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
        raise invalid(
            f"the calendar's events could not be expanded ({type(exc).__name__}): a date, time "
            "zone or recurrence rule is invalid",
            "ics",
        ) from None
    inside = [i for i in instances if _overlaps(i.start, i.end, start, end)]
    if len(inside) > MAX_INSTANCES or len(built) > MAX_EXPANDED:
        raise invalid(
            f"the calendar has more than {MAX_INSTANCES} event occurrences in the window (or "
            f"more than {MAX_EXPANDED} within a day of it); choose a shorter window",
            "ics",
        )
    return sorted(inside, key=lambda i: (i.start, i.end, i.title))


def _occurrences(calendar: icalendar.Calendar, start: datetime, stop: datetime) -> Iterator[icalendar.Event]:
    """The VEVENT occurrences in ``[start, stop)``, built one at a time (series by series, not in
    time order): what ``recurring_ical_events.of(calendar).between(start, stop)`` returns, except
    that its list holds every occurrence before the first is returned."""
    query = recurring_ical_events.of(calendar, components=["VEVENT"])
    for series in query.series:
        for occurrence in series.between(start, stop):
            yield occurrence.as_component(query.keep_recurrence_attributes)


def rule_steps(calendar: icalendar.Calendar, stop: datetime, tz: tzinfo) -> int:
    """An upper bound of the dates dateutil makes to expand ``calendar``'s VEVENTs up to
    ``stop``: for each RRULE, from DTSTART to ``stop`` (or UNTIL, if sooner), the periods of its
    FREQ × INTERVAL (capped by COUNT when no BYxxx part filters) times the dates one period can
    hold (the days a BYxxx day part may select, times each finer BYHOUR/BYMINUTE/BYSECOND list);
    plus every RDATE. ``stop`` is moved later by the largest RECURRENCE-ID past its DTSTART (a
    moved occurrence makes the library expand that much further). Raises ValueError,
    TypeError, AttributeError or OverflowError on a value it cannot read."""
    events = calendar.walk("VEVENT")
    moves = [_when(_dt(e, "RECURRENCE-ID"), tz) - _when(_dt(e, "DTSTART"), tz)
             for e in events if e.get("RECURRENCE-ID") is not None and e.get("DTSTART") is not None]
    stop += max([timedelta(0), *moves])
    total = 0
    for event in events:
        rdates = event.get("RDATE", [])
        total += sum(len(r.dts) for r in (rdates if isinstance(rdates, list) else [rdates]))
        rules = event.get("RRULE", [])
        if rules and event.get("DTSTART") is not None:
            first = _when(_dt(event, "DTSTART"), tz)
            total += sum(_steps(rule, first, stop, tz) for rule in (rules if isinstance(rules, list) else [rules]))
    return total


def _steps(rule: Any, first: datetime, stop: datetime, tz: tzinfo) -> int:
    """The :func:`rule_steps` bound of one RRULE (a vRecur: part name -> list of values)."""
    freq = _FREQS.index(str(rule["FREQ"][0]).upper())
    until = min([stop, *(_when(u, tz) for u in rule.get("UNTIL", []))])
    interval = max(1, int(rule.get("INTERVAL", [1])[0]))
    periods = max(0, int((until - first).total_seconds())) // (_FREQ_SECONDS[freq] * interval) + 1
    filtered = [part for part in (*_DAY_PARTS, *_TIME_PARTS) if rule.get(part)]
    count = int(rule.get("COUNT", [0])[0])  # the library ignores a negative COUNT
    if count > 0 and not filtered:
        periods = min(periods, count)
    per_period = _PERIOD_DAYS.get(_FREQS[freq], 1) if any(p in filtered for p in _DAY_PARTS) else 1
    for part, finest in _TIME_PARTS.items():
        if freq > finest and rule.get(part):
            per_period *= len(rule[part])
    return periods * per_period


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
