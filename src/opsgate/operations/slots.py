"""Free-slot computation by interval arithmetic (deterministic; no model involved).

All intervals are half-open ``[start, end)`` of timezone-aware datetimes; arithmetic is done in
UTC (Python subtracts same-zone datetimes by wall clock, which is wrong across DST changes), and
results are returned in the requester's zone. A zero-length busy interval (a point in time) may
not lie strictly inside a slot. Algorithm:

1. working windows: for each local day of the window whose weekday is allowed, ``day_start`` to
   ``day_end`` local time (``day_end`` 00:00 means midnight at the end of the day), clipped to the
   request window;
2. free intervals = working windows minus the union of the busy intervals;
3. slots: inside each free interval, the first start is rounded up to a multiple of
   ``granularity`` minutes of local wall-clock time, then back-to-back slots of exactly
   ``duration`` are cut while they fit (so slots never overlap each other);
4. if more than ``limit`` slots exist, they are picked round-robin across local days (each day's
   first slot, then each day's second, ...) so the choice spans the window, then sorted by start.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

Interval = tuple[datetime, datetime]


@dataclass(frozen=True)
class SlotRules:
    """The request's shape: slot ``duration``, local working hours, allowed ``weekdays``
    (0 = Monday), start ``granularity`` and the maximum number of slots ``limit``."""

    duration: timedelta
    day_start: time = time(9)
    day_end: time = time(17)
    weekdays: frozenset[int] = frozenset(range(5))
    granularity: timedelta = timedelta(minutes=15)
    limit: int = 20


def free_slots(window: Interval, busy: Iterable[Interval], tz: tzinfo, rules: SlotRules) -> list[Interval]:
    """Slots of exactly ``rules.duration`` inside ``window`` and working hours, overlapping no
    busy interval and no other slot; in ``tz``, sorted by start. See the module docstring."""
    free = subtract(working_windows(window, tz, rules), busy)
    slots = [slot for interval in free for slot in _cut(interval, tz, rules)]
    chosen = _spread(slots, tz, rules.limit)
    return [(start.astimezone(tz), end.astimezone(tz)) for start, end in chosen]


def working_windows(window: Interval, tz: tzinfo, rules: SlotRules) -> list[Interval]:
    """Local working hours of every allowed day, clipped to ``window``; in UTC."""
    start, end = (moment.astimezone(UTC) for moment in window)
    day = start.astimezone(tz).date() - timedelta(days=1)
    last = end.astimezone(tz).date()
    result: list[Interval] = []
    while day <= last:
        if day.weekday() in rules.weekdays:
            open_at, close_at = _local_hours(day, tz, rules)
            clipped = (max(open_at, start), min(close_at, end))
            if clipped[0] < clipped[1]:
                result.append(clipped)
        day += timedelta(days=1)
    return result


def subtract(windows: list[Interval], busy: Iterable[Interval]) -> list[Interval]:
    """``windows`` minus every busy interval (points split a window); in UTC, sorted."""
    blocks = sorted((s.astimezone(UTC), e.astimezone(UTC)) for s, e in busy)
    result: list[Interval] = []
    for win_start, win_end in windows:
        cursor = win_start
        for busy_start, busy_end in blocks:
            if busy_end < cursor or busy_start >= win_end or (busy_end == cursor and busy_start < busy_end):
                continue
            if busy_start > cursor:
                result.append((cursor, busy_start))
            cursor = max(cursor, busy_end)
        if cursor < win_end:
            result.append((cursor, win_end))
    return result


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """The union of ``intervals`` as sorted, non-overlapping, non-touching intervals (in UTC)."""
    merged: list[Interval] = []
    for start, end in sorted((s.astimezone(UTC), e.astimezone(UTC)) for s, e in intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _local_hours(day: date, tz: tzinfo, rules: SlotRules) -> Interval:
    open_at = datetime.combine(day, rules.day_start, tzinfo=tz)
    close_day = day + timedelta(days=1) if rules.day_end == time(0) else day
    close_at = datetime.combine(close_day, rules.day_end, tzinfo=tz)
    return open_at.astimezone(UTC), close_at.astimezone(UTC)


def _cut(interval: Interval, tz: tzinfo, rules: SlotRules) -> list[Interval]:
    start, end = interval
    local = start.astimezone(tz)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    step = rules.granularity
    offset = local - midnight
    rounded = -(-offset // step) * step
    cursor = start + (rounded - offset)
    slots: list[Interval] = []
    while cursor + rules.duration <= end:
        slots.append((cursor, cursor + rules.duration))
        cursor += rules.duration
    return slots


def _spread(slots: list[Interval], tz: tzinfo, limit: int) -> list[Interval]:
    if len(slots) <= limit:
        return slots
    by_day: dict[date, list[Interval]] = {}
    for slot in slots:
        by_day.setdefault(slot[0].astimezone(tz).date(), []).append(slot)
    chosen: list[Interval] = []
    rank = 0
    while len(chosen) < limit:
        chosen += [day[rank] for day in by_day.values() if rank < len(day)][: limit - len(chosen)]
        rank += 1
    return sorted(chosen)
