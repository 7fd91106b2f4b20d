"""Property tests of the free-slot arithmetic (hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from opsgate.operations.slots import SlotRules, free_slots, merge, subtract

BASE = datetime(2026, 3, 20, tzinfo=UTC)  # spans the EU and US DST changes within 3 weeks
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "Pacific/Chatham"]

minutes = st.integers(min_value=0, max_value=21 * 24 * 60)
busy_lists = st.lists(
    st.tuples(minutes, st.integers(min_value=0, max_value=600)).map(
        lambda t: (BASE + timedelta(minutes=t[0]), BASE + timedelta(minutes=t[0] + t[1]))
    ),
    max_size=40,
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[tuple[datetime, datetime], ZoneInfo, SlotRules]:
    start = BASE + timedelta(minutes=draw(st.integers(0, 7 * 24 * 60)))
    end = start + timedelta(minutes=draw(st.integers(1, 14 * 24 * 60)))
    open_hour = draw(st.integers(0, 22))
    close = draw(st.sampled_from([time(0), time(min(open_hour + draw(st.integers(1, 10)), 23), 59)]))
    rules = SlotRules(
        duration=timedelta(minutes=draw(st.sampled_from([5, 15, 25, 30, 45, 60, 90, 240]))),
        day_start=time(open_hour, draw(st.sampled_from([0, 15, 30]))),
        day_end=close,
        weekdays=frozenset(draw(st.lists(st.integers(0, 6), min_size=1, max_size=7))),
        granularity=timedelta(minutes=draw(st.sampled_from([5, 10, 15, 30, 60]))),
        limit=draw(st.integers(1, 60)),
    )
    return (start, end), ZoneInfo(draw(st.sampled_from(ZONES))), rules


@settings(max_examples=300, deadline=None)
@given(requests(), busy_lists)
def test_slots_are_free_inside_the_window_of_exact_length_and_disjoint(request, busy) -> None:
    window, tz, rules = request
    slots = free_slots(window, busy, tz, rules)
    utc = [(s.astimezone(UTC), e.astimezone(UTC)) for s, e in slots]
    assert len(slots) <= rules.limit
    assert utc == sorted(utc)
    for index, (start, end) in enumerate(utc):
        assert end - start == rules.duration
        assert window[0] <= start and end <= window[1]
        if index:
            assert utc[index - 1][1] <= start
        for busy_start, busy_end in busy:
            assert not (busy_start < end and busy_end > start)
            assert not (busy_start == busy_end and start < busy_start < end)
        local = start.astimezone(tz)
        assert local.weekday() in rules.weekdays
        assert local.time() >= rules.day_start


@settings(max_examples=200, deadline=None)
@given(requests())
def test_an_empty_calendar_gives_slots_when_the_window_allows(request) -> None:
    window, tz, rules = request
    long_window = (window[0], window[0] + timedelta(days=8))
    loose = SlotRules(duration=timedelta(minutes=5), day_start=time(0), day_end=time(0),
                      weekdays=frozenset(range(7)), granularity=timedelta(minutes=5), limit=rules.limit)
    assert len(free_slots(long_window, [], tz, loose)) == rules.limit


@given(busy_lists)
def test_merge_is_a_disjoint_cover(busy) -> None:
    merged = merge(busy)
    assert all(a[1] < b[0] for a, b in pairwise(merged))
    for start, end in busy:
        assert any(m_start <= start and end <= m_end for m_start, m_end in merged)


def test_subtract_splits_at_a_point_event() -> None:
    window = [(BASE, BASE + timedelta(hours=2))]
    point = BASE + timedelta(hours=1)
    assert subtract(window, [(point, point)]) == [(BASE, point), (point, BASE + timedelta(hours=2))]


def test_spread_takes_slots_from_every_day() -> None:
    rules = SlotRules(duration=timedelta(hours=1), weekdays=frozenset(range(7)), limit=3)
    slots = free_slots((BASE, BASE + timedelta(days=3)), [], UTC, rules)
    assert [s.strftime("%d %H:%M") for s, _ in slots] == ["20 09:00", "21 09:00", "22 09:00"]
