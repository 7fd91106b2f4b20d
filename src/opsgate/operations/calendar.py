"""calendar-prep and calendar-time over iCalendar data (see :mod:`opsgate.operations.ical`).

Common options: ``timezone`` (IANA name, default ``UTC``) is the requester's zone; naive
``window_start``/``window_end`` are read in it. Without ``window_start`` the window starts at
local midnight of the calendar's earliest DTSTART (events or free/busy data), so a file can be
run without options and the result does not depend on today's date; without ``window_end`` it
lasts :data:`DEFAULT_WINDOW_DAYS` days. A window may last at most :data:`MAX_WINDOW_DAYS` days and
lies within :data:`WINDOW_YEARS`. Working hours (``day_start``/``day_end``) are wall-clock times
in ``timezone``; a time with a UTC offset is refused.

calendar-prep sends the model at most :data:`MAX_PREP_EVENTS` events — the earliest; the furthest
are dropped first — with titles, locations and descriptions cut to fixed lengths.

calendar-time computes the free slots in code (:mod:`opsgate.operations.slots`); the model sees
only the numbered slots and ranks some of them by index. ``finish`` returns only computed slots:
an index the code did not produce is dropped and counted in ``dropped_references``.

Answer limits (each string's ``maxLength`` sets the request's ``max_tokens``, see
:mod:`opsgate.operations.caps`), product decisions of issue 16 that follow what the prompts ask
for: calendar-prep's "short summary" of the window at most :data:`MAX_PREP_SUMMARY_CHARS`
characters (about 200 words; was 2,000) and each event's briefing ("what it is and what
matters") at most :data:`MAX_BRIEFING_CHARS` (about 65 words; was 600) — with up to
:data:`MAX_PREP_EVENTS` items the briefings dominate the cap, which reaches the 8,192-token
ceiling from about nine events; calendar-time's "one-sentence reason" per ranked slot at most
:data:`MAX_SLOT_REASON_CHARS` (about 33 words; was 300) and its "short summary" at most
:data:`MAX_TIME_SUMMARY_CHARS` (about 100 words; was 1,000). Each limit is in the JSON schema the
model is given; a longer answer fails it and gets one repair request.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta, tzinfo
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from opsgate.operations.base import Operation, Prepared, Sent
from opsgate.operations.prompts import PromptVersion
from opsgate.operations.common import (
    Answer,
    build_request,
    clip,
    data_block,
    invalid,
    known_references,
    user_request,
)
from opsgate.operations.ical import (
    EventInstance,
    busy_intervals,
    earliest_start,
    event_instances,
    freebusy_periods,
    parse_calendar,
    people_of,
)
from opsgate.operations.slots import SlotRules, free_slots, merge

MAX_ICS_CHARS = 1_000_000
DEFAULT_WINDOW_DAYS = 7
MAX_WINDOW_DAYS = 62
MAX_PREP_EVENTS = 40
MAX_TITLE_CHARS = 200
MAX_LOCATION_CHARS = 200
MAX_DESCRIPTION_CHARS = 400
MAX_ATTENDEES_LISTED = 10
MAX_STEP_CHARS = 200
"""One preparation step of a briefing item (bounds the answer, :mod:`opsgate.operations.caps`)."""
MAX_PREP_SUMMARY_CHARS = 1_200
MAX_BRIEFING_CHARS = 400
MAX_SLOT_REASON_CHARS = 200
MAX_TIME_SUMMARY_CHARS = 600
WINDOW_YEARS = (1900, 2200)


class CalendarInput(BaseModel):
    """The calendar (``ics``), the requester's ``timezone`` and the optional window."""

    model_config = ConfigDict(extra="forbid")

    ics: str = Field(min_length=1, max_length=MAX_ICS_CHARS)
    timezone: str = Field("UTC", min_length=1, max_length=64)
    window_start: datetime | None = None
    window_end: datetime | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown IANA time zone name (e.g. Europe/Berlin)") from None
        return value

    @field_validator("window_start", "window_end")
    @classmethod
    def _window_years(cls, value: datetime | None) -> datetime | None:
        """Refuse (422) moments outside :data:`WINDOW_YEARS`, so zone conversions and the
        default window length never leave the range ``datetime`` can represent."""
        if value is not None and not WINDOW_YEARS[0] <= value.year <= WINDOW_YEARS[1]:
            raise ValueError(f"window times must lie in the years {WINDOW_YEARS[0]} to {WINDOW_YEARS[1]}")
        return value

    @model_validator(mode="after")
    def _window_order(self) -> CalendarInput:
        if self.window_start and self.window_end and self._aware(self.window_end) <= self._aware(self.window_start):
            raise ValueError("window_end must be after window_start")
        return self

    def zone(self) -> ZoneInfo:
        """The requester's zone."""
        return ZoneInfo(self.timezone)

    def _aware(self, moment: datetime) -> datetime:
        return moment if moment.tzinfo else moment.replace(tzinfo=self.zone())

    def window(self, calendar: Any) -> tuple[datetime, datetime]:
        """The request window in the requester's zone (defaults: see the module docstring)."""
        tz = self.zone()
        if self.window_start is not None:
            start = self._aware(self.window_start).astimezone(tz)
        else:
            first = earliest_start(calendar, tz)
            if first is None:
                raise invalid(
                    "the calendar has no events or free/busy data, so window_start is required",
                    "window_start",
                )
            start = first.replace(hour=0, minute=0, second=0, microsecond=0)
            if not WINDOW_YEARS[0] <= start.year <= WINDOW_YEARS[1]:
                raise invalid(f"the calendar's first event is outside the years {WINDOW_YEARS[0]} "
                              f"to {WINDOW_YEARS[1]}; give window_start", "window_start")
        end = (
            self._aware(self.window_end).astimezone(tz)
            if self.window_end is not None
            else start + timedelta(days=DEFAULT_WINDOW_DAYS)
        )
        if end - start > timedelta(days=MAX_WINDOW_DAYS):
            raise invalid(f"the window may last at most {MAX_WINDOW_DAYS} days", "window_end")
        if end <= start:
            raise invalid("window_end must be after window_start", "window_end")
        return start, end


class EventOut(BaseModel):
    """One event occurrence as returned (times in the requester's zone, ISO 8601)."""

    index: int
    title: str
    start: datetime
    end: datetime
    all_day: bool
    status: str
    busy: bool
    location: str


def _event_out(index: int, event: EventInstance) -> EventOut:
    return EventOut(
        index=index, title=event.title, start=event.start, end=event.end, all_day=event.all_day,
        status=event.status, busy=event.busy, location=event.location,
    )


def _fmt(moment: datetime) -> str:
    return moment.strftime("%a %Y-%m-%d %H:%M")


# ---------------------------------------------------------------- calendar-prep


class PrepInput(CalendarInput):
    """calendar-prep input: the calendar, window, zone and an optional ``focus`` request."""

    focus: str | None = Field(None, max_length=1_000)


class PrepItem(Answer):
    """The model's briefing for event number ``event``."""

    event: int = Field(ge=0)
    briefing: str = Field(max_length=MAX_BRIEFING_CHARS)
    preparation: list[Annotated[str, Field(max_length=MAX_STEP_CHARS)]] = Field(max_length=5)


class PrepAnswer(Answer):
    """The model's agenda: an overall ``summary`` and per-event items."""

    summary: str = Field(max_length=MAX_PREP_SUMMARY_CHARS)
    items: list[PrepItem] = Field(max_length=MAX_PREP_EVENTS)


class PrepItemOut(BaseModel):
    """A briefing item joined with the event it is about."""

    event: EventOut
    briefing: str
    preparation: list[str]


class PrepOutput(BaseModel):
    """The agenda: events computed in code, overlapping busy events, the model's briefing."""

    timezone: str
    window_start: datetime
    window_end: datetime
    events: list[EventOut]
    conflicts: list[tuple[int, int]]
    summary: str
    items: list[PrepItemOut]
    trimmed: bool
    trim_notes: list[str]
    dropped_references: int


def conflicts(events: list[EventInstance]) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, of busy events whose time ranges overlap."""
    pairs = []
    for i, first in enumerate(events):
        for j in range(i + 1, len(events)):
            second = events[j]
            if second.start >= first.end:
                break
            if first.busy and second.busy and second.start < first.end and first.start < second.end:
                pairs.append((i, j))
    return pairs


def _render_event(index: int, event: EventInstance, tz: tzinfo) -> str:
    when = "all day " + event.start.strftime("%a %Y-%m-%d") if event.all_day else (
        f"{_fmt(event.start)} - {_fmt(event.end)}"
    )
    lines = [
        f"[{index}] {clip(event.title, MAX_TITLE_CHARS)[0] or '(untitled)'}",
        f"  when: {when}; status: {event.status.lower()}; {'busy' if event.busy else 'free'}",
    ]
    if event.location:
        lines.append(f"  location: {clip(event.location, MAX_LOCATION_CHARS)[0]}")
    if event.organizer:
        lines.append(f"  organizer: {event.organizer}")
    if event.attendees:
        more = len(event.attendees) - MAX_ATTENDEES_LISTED
        listed = ", ".join(event.attendees[:MAX_ATTENDEES_LISTED]) + (f" and {more} more" if more > 0 else "")
        lines.append(f"  attendees: {listed}")
    if event.description:
        lines.append(f"  description: {clip(' '.join(event.description.split()), MAX_DESCRIPTION_CHARS)[0]}")
    return "\n".join(lines)


class CalendarPrep(Operation):
    """An agenda and briefing for the events in a window."""

    id = "calendar-prep"
    Input = PrepInput
    reads = ("ics",)
    off_loop_bytes = 0  # a few hundred bytes of RRULEs may take a second to expand (ical.MAX_RULE_STEPS)
    ModelOutput = PrepAnswer
    Output = PrepOutput
    sends = (
        Sent("window and time zone"),
        Sent(f"event titles (the earliest {MAX_PREP_EVENTS} events)", MAX_TITLE_CHARS),
        Sent("event times, status, busy or free"),
        Sent("event locations", MAX_LOCATION_CHARS),
        Sent("event organizer (name and address)"),
        Sent(f"event attendees (names and addresses, first {MAX_ATTENDEES_LISTED})"),
        Sent("event descriptions (whitespace collapsed)", MAX_DESCRIPTION_CHARS),
        Sent("overlapping events (computed)"),
        Sent("focus"),
    )

    def prepare(self, data: BaseModel, prompt: PromptVersion | None = None) -> Prepared:
        """Expand the events in the window and ask for a briefing on them."""
        assert isinstance(data, PrepInput)
        calendar = parse_calendar(data.ics)
        tz = data.zone()
        start, end = data.window(calendar)
        events = event_instances(calendar, start, end, tz)
        sent = events[:MAX_PREP_EVENTS]
        notes = []
        if len(events) > len(sent):
            notes.append(f"only the earliest {MAX_PREP_EVENTS} of {len(events)} events were sent")
        pairs = conflicts(sent)
        body = "\n".join(_render_event(i, e, tz) for i, e in enumerate(sent)) or "(no events)"
        clashes = ", ".join(f"[{i}] and [{j}]" for i, j in pairs) or "none"
        user = (
            f"Window: {_fmt(start)} to {_fmt(end)} ({data.timezone}).\n"
            f"Overlapping busy events (computed): {clashes}.\n\n" + data_block("events", body)
        )
        if data.focus:
            user += "\n\n" + user_request(data.focus)
        system = self.system_prompt(prompt)
        request = build_request(system, user, PrepAnswer, "calendar_briefing", {"items": len(sent)})
        context = {
            "timezone": data.timezone, "window_start": start, "window_end": end,
            "events": [_event_out(i, e) for i, e in enumerate(sent)], "conflicts": pairs,
            "trim_notes": notes,
        }
        return Prepared(request=request, context=context, people=tuple(people_of(events)))

    def finish(self, prepared: Prepared, answer: BaseModel) -> PrepOutput:
        """Join the items with the computed events; unknown or repeated indices are dropped."""
        assert isinstance(answer, PrepAnswer)
        events: list[EventOut] = prepared.context["events"]
        items = [
            PrepItemOut(event=events[item.event], briefing=item.briefing, preparation=item.preparation)
            for item in known_references(answer.items, lambda item: item.event, len(events))
        ]
        ctx = prepared.context
        return PrepOutput(
            timezone=ctx["timezone"], window_start=ctx["window_start"], window_end=ctx["window_end"],
            events=events, conflicts=ctx["conflicts"], summary=answer.summary, items=items,
            trimmed=bool(ctx["trim_notes"]), trim_notes=ctx["trim_notes"],
            dropped_references=len(answer.items) - len(items),
        )


# ---------------------------------------------------------------- calendar-time


class TimeInput(CalendarInput):
    """calendar-time input: the slot length and working hours besides the calendar options.

    ``day_start``/``day_end`` are local working hours (``day_end`` 00:00 = end of day);
    ``weekdays`` are allowed days (0 = Monday); slot starts are multiples of ``granularity_minutes``
    of local time; at most ``max_slots`` slots are returned.
    """

    duration_minutes: int = Field(30, ge=5, le=24 * 60)
    day_start: time = time(9)
    day_end: time = time(17)
    weekdays: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1, max_length=7)
    granularity_minutes: int = Field(15, ge=5, le=240)
    max_slots: int = Field(20, ge=1, le=50)
    purpose: str | None = Field(None, max_length=1_000)

    @field_validator("weekdays")
    @classmethod
    def _weekday_range(cls, value: list[int]) -> list[int]:
        if any(day < 0 or day > 6 for day in value):
            raise ValueError("weekdays are 0 (Monday) to 6 (Sunday)")
        return value

    @field_validator("day_start", "day_end")
    @classmethod
    def _wall_clock(cls, value: time) -> time:
        """Working hours are local times in ``timezone``; an offset on them is refused (422)."""
        if value.tzinfo is not None:
            raise ValueError("working hours are local times in 'timezone', without a UTC offset")
        return value

    @model_validator(mode="after")
    def _hours_order(self) -> TimeInput:
        if self.day_end != time(0) and self.day_end <= self.day_start:
            raise ValueError("day_end must be after day_start (00:00 means end of day)")
        return self

    def rules(self) -> SlotRules:
        """The slot rules of this request."""
        return SlotRules(
            duration=timedelta(minutes=self.duration_minutes), day_start=self.day_start,
            day_end=self.day_end, weekdays=frozenset(self.weekdays),
            granularity=timedelta(minutes=self.granularity_minutes), limit=self.max_slots,
        )


class SlotOut(BaseModel):
    """A free slot computed in code; ``index`` is its number in the prompt."""

    index: int
    start: datetime
    end: datetime


class RankedSlot(Answer):
    """The model's pick: ``slot`` is a slot number from the list it was given."""

    slot: int = Field(ge=0)
    reason: str = Field(max_length=MAX_SLOT_REASON_CHARS)


class TimeAnswer(Answer):
    """The model's ranking of up to 5 slots and a one-paragraph summary."""

    ranked: list[RankedSlot] = Field(max_length=5)
    summary: str = Field(max_length=MAX_TIME_SUMMARY_CHARS)


class RecommendedSlot(SlotOut):
    """A computed slot the model recommended, with its reason."""

    reason: str


class TimeOutput(BaseModel):
    """Free slots (all computed in code) and the model's recommendations among them."""

    timezone: str
    window_start: datetime
    window_end: datetime
    duration_minutes: int
    busy_count: int
    slots: list[SlotOut]
    recommended: list[RecommendedSlot]
    summary: str
    dropped_references: int


class CalendarTime(Operation):
    """Concrete free slots of a requested length; the model ranks and explains them."""

    id = "calendar-time"
    Input = TimeInput
    reads = ("ics",)
    off_loop_bytes = 0  # a few hundred bytes of RRULEs may take a second to expand (ical.MAX_RULE_STEPS)
    ModelOutput = TimeAnswer
    Output = TimeOutput
    sends = (
        Sent("window and time zone"),
        Sent("requested duration"),
        Sent("free slots (computed; never event titles)"),
        Sent("busy minutes per day (computed)"),
        Sent("purpose"),
    )

    def prepare(self, data: BaseModel, prompt: PromptVersion | None = None) -> Prepared:
        """Compute the free slots and ask the model to rank them."""
        assert isinstance(data, TimeInput)
        calendar = parse_calendar(data.ics)
        tz = data.zone()
        start, end = data.window(calendar)
        events = event_instances(calendar, start, end, tz)
        busy = busy_intervals(events, freebusy_periods(calendar, start, end, tz))
        slots = free_slots((start, end), busy, tz, data.rules())
        listing = "\n".join(f"[{i}] {_fmt(s)} - {e.strftime('%H:%M')}" for i, (s, e) in enumerate(slots))
        per_day: dict[str, int] = {}
        for busy_start, busy_end in merge(busy):
            clipped_start, clipped_end = max(busy_start, start), min(busy_end, end)
            day = clipped_start.astimezone(tz).strftime("%a %Y-%m-%d")
            minutes = int((clipped_end - clipped_start).total_seconds() // 60)
            per_day[day] = per_day.get(day, 0) + max(minutes, 0)
        load = ", ".join(f"{day}: {minutes} min" for day, minutes in per_day.items()) or "none"
        user = (
            f"Requested: {data.duration_minutes} minutes between {_fmt(start)} and {_fmt(end)} "
            f"({data.timezone}).\nBusy minutes per day: {load}.\nFree slots:\n"
            + data_block("free_slots", listing or "(none)")
        )
        if data.purpose:
            user += "\n\n" + user_request(data.purpose)
        system = self.system_prompt(prompt)
        request = build_request(system, user, TimeAnswer, "meeting_slots", {"ranked": len(slots)})
        context = {
            "timezone": data.timezone, "window_start": start, "window_end": end,
            "duration_minutes": data.duration_minutes, "busy_count": len(busy),
            "slots": [SlotOut(index=i, start=s, end=e) for i, (s, e) in enumerate(slots)],
        }
        return Prepared(request=request, context=context, people=tuple(people_of(events)))

    def finish(self, prepared: Prepared, answer: BaseModel) -> TimeOutput:
        """Keep the model's picks that name computed slots; never returns another slot."""
        assert isinstance(answer, TimeAnswer)
        slots: list[SlotOut] = prepared.context["slots"]
        recommended = [
            RecommendedSlot(**slots[pick.slot].model_dump(), reason=pick.reason)
            for pick in known_references(answer.ranked, lambda pick: pick.slot, len(slots))
        ]
        return TimeOutput(
            **prepared.context, recommended=recommended, summary=answer.summary,
            dropped_references=len(answer.ranked) - len(recommended),
        )
