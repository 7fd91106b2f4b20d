"""task-prioritize and task-breakdown over VTODO items or a JSON task list.

Input: ``ics`` (iCalendar with VTODO components, RFC 5545 §3.6.2) or ``tasks`` (a list of
:class:`TaskItem`). From a VTODO: SUMMARY -> title, DESCRIPTION -> notes, DUE (else DTSTART +
DURATION) -> due, PRIORITY (1 highest .. 9 lowest, 0 undefined), STATUS, DURATION -> estimate.
A recurring VTODO counts once (its first occurrence).

task-prioritize ranks open tasks (status needs-action or in-process); it sends at most
:data:`MAX_PROMPT_TASKS` of them, the ones due soonest (then highest priority); tasks due furthest
away or without a due date are dropped first; notes are cut to :data:`MAX_NOTES_CHARS`. The
model answers with task numbers; ``finish`` keeps valid ones and appends any open task the model
left out in code order (due date, then priority), so every sent task appears exactly once.

task-breakdown splits one task (``task``, its index in the list) into subtasks with estimates;
the total is added up in code.

Answer limits (each string's ``maxLength`` sets the request's ``max_tokens``, see
:mod:`opsgate.operations.caps`), product decisions of issue 16 that follow what the prompts ask
for: task-prioritize's "one-sentence reason" per task at most :data:`MAX_RANK_REASON_CHARS`
characters (about 33 words; was 300) and its "short summary" at most :data:`MAX_SUMMARY_CHARS`
(about 100 words; was 1,000); task-breakdown's "short imperative title" per subtask at most
:data:`MAX_SUBTASK_TITLE_CHARS` (about 16 words; was 200). A breakdown's ``done_when`` (200) and
``notes`` (1,000, the assumptions) keep their limits. Each limit is in the JSON schema the model
is given; a longer answer fails it and gets one repair request.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time
from typing import Literal, get_args

import icalendar
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from opsgate.operations.base import Operation, Prepared, Sent
from opsgate.operations.prompts import PromptVersion
from opsgate.operations.common import Answer, build_request, clip, data_block, invalid, user_request
from opsgate.operations.ical import parse_calendar

MAX_ICS_CHARS = 1_000_000
MAX_TASKS = 1_000
MAX_PROMPT_TASKS = 60
MAX_TITLE_CHARS = 500
MAX_NOTES_CHARS = 300
MAX_BREAKDOWN_NOTES_CHARS = 4_000
MAX_RANK_REASON_CHARS = 200
MAX_SUMMARY_CHARS = 600
MAX_SUBTASK_TITLE_CHARS = 100
Status = Literal["needs-action", "in-process", "completed", "cancelled"]
_STATUSES: dict[str, Status] = {s: s for s in get_args(Status)}
DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")
OPEN = ("needs-action", "in-process")


class TaskItem(BaseModel):
    """One task. ``priority``: 1 highest .. 9 lowest, 0 or None undefined (RFC 5545 §3.8.1.9);
    ``estimate_minutes``: expected effort; ``due``: a date (``YYYY-MM-DD`` stays a date) or a
    datetime, stored aware (naive = UTC), so it serialises as an RFC 3339 ``date-time``."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=MAX_TITLE_CHARS)
    notes: str | None = Field(None, max_length=20_000)
    due: datetime | date | None = None
    priority: int | None = Field(None, ge=0, le=9)
    status: Status = "needs-action"
    estimate_minutes: int | None = Field(None, ge=1, le=100_000)

    @field_validator("due", mode="before")
    @classmethod
    def _date_stays_date(cls, value: object) -> object:
        """``"2025-03-01"`` is a date (lax union parsing would make it a naive midnight)."""
        if isinstance(value, str) and DATE_ONLY.fullmatch(value):
            return date.fromisoformat(value)
        return value

    @field_validator("due")
    @classmethod
    def _aware(cls, value: datetime | date | None) -> datetime | date | None:
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class TaskSource(BaseModel):
    """``ics`` (VTODO data) or ``tasks`` (a JSON list), exactly one; ``today`` marks overdue."""

    model_config = ConfigDict(extra="forbid")

    ics: str | None = Field(None, min_length=1, max_length=MAX_ICS_CHARS)
    tasks: list[TaskItem] | None = Field(None, min_length=1, max_length=MAX_TASKS)
    today: date | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> TaskSource:
        if (self.ics is None) == (self.tasks is None):
            raise ValueError("give the tasks in 'ics' (VTODO) or in 'tasks' (a JSON list), exactly one")
        return self

    def items(self) -> list[TaskItem]:
        """The tasks in input order; raises InvalidInput for broken ICS or one without VTODO."""
        if self.tasks is not None:
            return list(self.tasks)
        todos = parse_calendar(self.ics or "").walk("VTODO")
        if not todos:
            raise invalid("the calendar holds no VTODO task", "ics")
        if len(todos) > MAX_TASKS:
            raise invalid(f"at most {MAX_TASKS} tasks are accepted", "ics")
        try:
            return [_from_vtodo(todo) for todo in todos]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise invalid(f"a VTODO could not be read ({type(exc).__name__}): a date, duration or "
                          "priority is invalid", "ics") from None


class TaskOut(BaseModel):
    """A task as returned: ``index`` is its position in the input; ``overdue`` needs ``today``."""

    index: int
    title: str
    due: datetime | date | None
    priority: int | None
    status: Status
    estimate_minutes: int | None
    overdue: bool | None


def _from_vtodo(todo: icalendar.Component) -> TaskItem:
    due = todo.get("DUE")
    duration = todo.get("DURATION")
    start = todo.get("DTSTART")
    due_value = due.dt if due is not None else None
    if due_value is None and start is not None and duration is not None:
        due_value = start.dt + duration.dt
    status = str(todo.get("STATUS", "NEEDS-ACTION")).lower()
    priority = todo.get("PRIORITY")
    estimate = int(duration.dt.total_seconds() // 60) if duration is not None else None
    return TaskItem(
        title=clip(str(todo.get("SUMMARY", "")).strip() or "(untitled)", MAX_TITLE_CHARS)[0],
        notes=str(todo["DESCRIPTION"])[:20_000] if todo.get("DESCRIPTION") else None,
        due=due_value,
        priority=int(priority) if priority is not None else None,
        status=_STATUSES.get(status, "needs-action"),
        estimate_minutes=estimate if estimate and estimate > 0 else None,
    )


def _due_key(task: TaskItem) -> datetime:
    """Sort key: due as an aware UTC datetime; no due date sorts last."""
    due = task.due
    if due is None:
        return datetime.max.replace(tzinfo=UTC)
    if not isinstance(due, datetime):
        return datetime.combine(due, time(23, 59), tzinfo=UTC)
    return due


def urgency_order(tasks: list[TaskItem]) -> list[int]:
    """Indices of ``tasks`` by due date, then priority (1 first, undefined last), then position."""
    return sorted(range(len(tasks)), key=lambda i: (_due_key(tasks[i]), tasks[i].priority or 10, i))


def task_out(index: int, task: TaskItem, today: date | None) -> TaskOut:
    """The returned view of ``task``; ``overdue`` when due before ``today`` and still open."""
    overdue = None
    if today is not None and task.due is not None:
        overdue = task.status in OPEN and _due_key(task) < datetime.combine(today, time(0), tzinfo=UTC)
    return TaskOut(index=index, title=task.title, due=task.due, priority=task.priority,
                   status=task.status, estimate_minutes=task.estimate_minutes, overdue=overdue)


def _render(index: int, task: TaskItem, notes_limit: int) -> str:
    parts = [f"[{index}] {task.title}", f"  status: {task.status}"]
    if task.due is not None:
        parts.append(f"  due: {task.due.isoformat()}")
    if task.priority:
        parts.append(f"  priority: {task.priority} (1 highest, 9 lowest)")
    if task.estimate_minutes:
        parts.append(f"  estimate: {task.estimate_minutes} min")
    if task.notes:
        parts.append(f"  notes: {clip(task.notes.strip(), notes_limit)[0]}")
    return "\n".join(parts)


# ---------------------------------------------------------------- task-prioritize


class PrioritizeInput(TaskSource):
    """task-prioritize input: the tasks, optional ``today`` and the user's ``goal``."""

    goal: str | None = Field(None, max_length=1_000)


class RankedTask(Answer):
    """The model's pick: ``task`` is a task number from the list it was given."""

    task: int = Field(ge=0)
    reason: str = Field(max_length=MAX_RANK_REASON_CHARS)


class PrioritizeAnswer(Answer):
    """The model's order (most important first) and a short summary."""

    order: list[RankedTask] = Field(max_length=MAX_PROMPT_TASKS)
    summary: str = Field(max_length=MAX_SUMMARY_CHARS)


class RankedTaskOut(BaseModel):
    """One place in the ordered list; ``source`` says who placed it (``model`` or ``code``)."""

    rank: int
    task: TaskOut
    reason: str
    source: Literal["model", "code"]


class PrioritizeOutput(BaseModel):
    """Open tasks in order with reasons; closed tasks listed apart."""

    ranked: list[RankedTaskOut]
    closed: list[TaskOut]
    summary: str
    trimmed: bool
    trim_notes: list[str]
    dropped_references: int


class TaskPrioritize(Operation):
    """Order open tasks by importance and urgency, with a reason for each."""

    id = "task-prioritize"
    Input = PrioritizeInput
    reads = ("ics", "tasks")
    ModelOutput = PrioritizeAnswer
    Output = PrioritizeOutput
    sends = (
        Sent("today"),
        Sent(f"task titles (the {MAX_PROMPT_TASKS} open tasks due soonest)", MAX_TITLE_CHARS),
        Sent("task status, due date, priority, estimate"),
        Sent("task notes", MAX_NOTES_CHARS),
        Sent("goal"),
    )

    def prepare(self, data: BaseModel, prompt: PromptVersion | None = None) -> Prepared:
        """Select the open tasks (soonest due first, capped) and ask for an order."""
        assert isinstance(data, PrioritizeInput)
        tasks = data.items()
        order = urgency_order(tasks)
        open_ids = [i for i in order if tasks[i].status in OPEN]
        sent = open_ids[:MAX_PROMPT_TASKS]
        notes = []
        if len(open_ids) > len(sent):
            notes.append(f"only the {MAX_PROMPT_TASKS} open tasks due soonest of {len(open_ids)} were sent")
        listing = "\n".join(_render(i, tasks[i], MAX_NOTES_CHARS) for i in sent) or "(no open tasks)"
        today = f"Today is {data.today.isoformat()}.\n" if data.today else ""
        user = today + data_block("tasks", listing)
        if data.goal:
            user += "\n\n" + user_request(data.goal)
        system = self.system_prompt(prompt)
        request = build_request(system, user, PrioritizeAnswer, "task_priorities", {"order": len(sent)})
        context = {
            "sent": sent, "tasks": [task_out(i, t, data.today) for i, t in enumerate(tasks)],
            "trim_notes": notes,
        }
        return Prepared(request=request, context=context)

    def finish(self, prepared: Prepared, answer: BaseModel) -> PrioritizeOutput:
        """The model's valid picks first, then the sent tasks it left out, in code order."""
        assert isinstance(answer, PrioritizeAnswer)
        sent: list[int] = prepared.context["sent"]
        tasks: list[TaskOut] = prepared.context["tasks"]
        allowed = set(sent)
        ranked: list[RankedTaskOut] = []
        for pick in answer.order:
            if pick.task in allowed:
                allowed.discard(pick.task)
                ranked.append(RankedTaskOut(rank=len(ranked) + 1, task=tasks[pick.task], reason=pick.reason, source="model"))
        used = len(ranked)
        for index in sent:
            if index in allowed:
                ranked.append(RankedTaskOut(
                    rank=len(ranked) + 1, task=tasks[index], source="code",
                    reason="not ranked by the model; placed by due date and priority",
                ))
        notes = prepared.context["trim_notes"]
        return PrioritizeOutput(
            ranked=ranked, closed=[t for t in tasks if t.status not in OPEN], summary=answer.summary,
            trimmed=bool(notes), trim_notes=notes, dropped_references=len(answer.order) - used,
        )


# ---------------------------------------------------------------- task-breakdown


class BreakdownInput(TaskSource):
    """task-breakdown input: the tasks, which one (``task``, 0-based) and a subtask cap."""

    task: int = Field(0, ge=0)
    max_subtasks: int = Field(8, ge=2, le=12)
    context: str | None = Field(None, max_length=2_000)


class Subtask(Answer):
    """One step: a title, an effort estimate in minutes and how to tell it is done."""

    title: str = Field(max_length=MAX_SUBTASK_TITLE_CHARS)
    estimate_minutes: int = Field(ge=1, le=480)
    done_when: str = Field(max_length=200)


class BreakdownAnswer(Answer):
    """The model's steps in order and any remarks."""

    subtasks: list[Subtask] = Field(min_length=1, max_length=12)
    notes: str = Field(max_length=1_000)


class SubtaskOut(Subtask):
    """A step with its 1-based position."""

    step: int


class BreakdownOutput(BaseModel):
    """The task, its steps, and the steps' total effort computed in code."""

    task: TaskOut
    subtasks: list[SubtaskOut]
    total_estimate_minutes: int
    original_estimate_minutes: int | None
    notes: str
    trimmed: bool
    trim_notes: list[str]


class TaskBreakdown(Operation):
    """Split one task into ordered subtasks with estimates."""

    id = "task-breakdown"
    Input = BreakdownInput
    reads = ("ics", "tasks")
    ModelOutput = BreakdownAnswer
    Output = BreakdownOutput
    sends = (
        Sent("the chosen task's title", MAX_TITLE_CHARS),
        Sent("its status, due date, priority, estimate"),
        Sent("its notes", MAX_BREAKDOWN_NOTES_CHARS),
        Sent("context"),
    )
    prompt_fields = frozenset({"max_subtasks"})

    def prepare(self, data: BaseModel, prompt: PromptVersion | None = None) -> Prepared:
        """Pick the task and ask for subtasks."""
        assert isinstance(data, BreakdownInput)
        tasks = data.items()
        if data.task >= len(tasks):
            raise invalid(f"'task' must be less than the number of tasks ({len(tasks)})", "task")
        task = tasks[data.task]
        notes = []
        if task.notes and len(task.notes) > MAX_BREAKDOWN_NOTES_CHARS:
            notes.append(f"task notes cut to {MAX_BREAKDOWN_NOTES_CHARS} characters")
        user = data_block("task", _render(data.task, task, MAX_BREAKDOWN_NOTES_CHARS))
        if data.context:
            user += "\n\n" + user_request(data.context)
        system = self.system_prompt(prompt, max_subtasks=data.max_subtasks)
        request = build_request(system, user, BreakdownAnswer, "task_breakdown",
                                {"subtasks": data.max_subtasks})
        context = {
            "task": task_out(data.task, task, data.today), "max_subtasks": data.max_subtasks,
            "trim_notes": notes,
        }
        return Prepared(request=request, context=context)

    def finish(self, prepared: Prepared, answer: BaseModel) -> BreakdownOutput:
        """Number the steps (at most ``max_subtasks``) and add up their estimates."""
        assert isinstance(answer, BreakdownAnswer)
        steps = [
            SubtaskOut(step=n, **sub.model_dump())
            for n, sub in enumerate(answer.subtasks[: prepared.context["max_subtasks"]], start=1)
        ]
        task: TaskOut = prepared.context["task"]
        notes = prepared.context["trim_notes"]
        return BreakdownOutput(
            task=task, subtasks=steps, total_estimate_minutes=sum(s.estimate_minutes for s in steps),
            original_estimate_minutes=task.estimate_minutes, notes=answer.notes,
            trimmed=bool(notes), trim_notes=notes,
        )

