"""Budgets: limits in micro-USD per user, per operation, per (user, operation) and global, each for
a UTC calendar day and/or a UTC calendar month.

A budget row is ``(user_id, operation, period, limit_micro_usd)`` where ``*`` is the wildcard:

==================  =========  ===========
scope               user_id    operation
==================  =========  ===========
global              ``*``      ``*``
user U              ``U``      ``*``
operation OP        ``*``      ``OP``
user U on OP        ``U``      ``OP``
shadow              ``*``      ``@shadow``
==================  =========  ===========

A call by U on OP is charged against every budget that matches it (up to 8: four scopes × two
periods). A shadow call (a variant rollout's candidate answering a live call again, unseen) is
charged against the ``shadow`` budgets only (:func:`shadow_budgets`), so it never takes room from
a user's, an operation's or the global budget. Periods are UTC calendar periods: a day runs from 00:00:00 UTC, a month from 00:00:00
UTC on its first day. A call is charged to the period in which its reservation was made.

Each budget says what happens to a call whose first request does not fit (``on_exhausted``):
``refuse`` (402, the default) or ``cheaper``: the call goes to the first target of its chain whose
worst case fits every budget, marked degraded. When several budgets apply, a call is degraded
only if every budget without room for its first target is ``cheaper``; one ``refuse`` budget
without room refuses it (see :func:`opsgate.metering.reservations.hold`).
Plain functions over an engine (the Dispatch ``service.py`` shape).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Context
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, case, delete, func, insert, or_, select, update

from opsgate.clock import Clock
from opsgate.errors import InvalidInput, NotFound
from opsgate.ledger.writer import Ledger
from opsgate.metering.errors import BudgetConflict
from opsgate.metering.models import (
    ANY,
    CHEAPER,
    DEGRADED,
    OPEN,
    REFUSE,
    REFUSED,
    SHADOW,
    budget_counters,
    budget_outcomes,
    budget_reservations,
    budgets,
)
from opsgate.numbers import MAX_DIGITS, parse_decimal
from opsgate.operations import OPERATIONS
from opsgate.security.users import check_user_id
from opsgate.store.statements import fetch

PERIODS = ("day", "month")
ON_EXHAUSTED = (REFUSE, CHEAPER)
MICRO_PER_USD = 1_000_000
MAX_LIMIT_USD = 1_000_000_000
"""The largest budget limit, in USD: 10**15 micro-USD, so a limit and the sums charged against it
stay far inside a signed 64-bit ``BIGINT`` (9.2 * 10**18, the column type on SQLite and
PostgreSQL)."""
MAX_LIMIT_MICRO_USD = MAX_LIMIT_USD * MICRO_PER_USD


@dataclass(frozen=True, slots=True)
class Budget:
    """One budget: ``id``, ``user_id`` and ``operation`` (``*`` = any), ``period`` (day | month),
    ``limit_micro_usd``, ``on_exhausted`` (``refuse`` | ``cheaper``)."""

    id: int
    user_id: str
    operation: str
    period: str
    limit_micro_usd: int
    on_exhausted: str = REFUSE

    @property
    def scope(self) -> str:
        """``global``, ``user:U``, ``operation:OP``, ``user:U/operation:OP`` or ``shadow``."""
        if self.operation == SHADOW:
            return "shadow"
        parts = [f"user:{self.user_id}"] if self.user_id != ANY else []
        parts += [f"operation:{self.operation}"] if self.operation != ANY else []
        return "/".join(parts) or "global"


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """A budget with its current period's counters (micro-USD) and the calls it refused (402)
    and degraded (sent to a cheaper target) during the current UTC day."""

    budget: Budget
    period_start: datetime
    spent_micro_usd: int
    reserved_micro_usd: int
    refused_today: int = 0
    degraded_today: int = 0

    @property
    def left_micro_usd(self) -> int:
        """What the limit leaves after spent and reserved; never below 0 (see :attr:`over_micro_usd`)."""
        return max(0, self._room)

    @property
    def over_micro_usd(self) -> int:
        """How far spent plus reserved exceed the limit (0 when within it). A budget can be over
        when a call's real cost passed its reserved worst case (a provider's answer longer than
        announced) or when its limit was lowered below what was already spent; new calls are then
        refused (or degraded), and nothing already charged is undone."""
        return max(0, -self._room)

    @property
    def _room(self) -> int:
        return self.budget.limit_micro_usd - self.spent_micro_usd - self.reserved_micro_usd


def period_start(period: str, now: datetime) -> datetime:
    """The UTC start of the ``day`` or ``month`` containing ``now`` (aware). ``ValueError`` for
    another period name."""
    now = now.astimezone(UTC)
    if period == "day":
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "month":
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    raise ValueError(f"unknown budget period {period!r}; expected day or month")


def usd_to_micro(usd: str) -> int:
    """A USD amount (decimal text, e.g. ``"0.010"``) as integer micro-USD.

    The text follows the one number grammar of :mod:`opsgate.numbers` (ASCII digits, an optional
    ``.``: no ``_``, exponent, spaces or other scripts' digits). Raises :class:`InvalidInput`
    naming the rule, never the text, when it does not, or when the amount is not from 0 to
    :data:`MAX_LIMIT_USD` with at most 6 decimals.
    """
    try:
        value = parse_decimal(usd)
    except ValueError as exc:
        raise InvalidInput(f"limit_usd {exc}") from None
    if value > MAX_LIMIT_USD:
        raise InvalidInput(f"limit_usd must be at most {MAX_LIMIT_USD:,} USD")
    micro = value.scaleb(6, Context(prec=MAX_DIGITS))  # exact: the text has at most MAX_DIGITS digits
    if value < 0 or micro != micro.to_integral_value():
        raise InvalidInput("limit_usd must be >= 0 with at most 6 decimals (whole micro-USD)")
    return int(micro)


def set_budget(
    ledger: Ledger, clock: Clock, *, actor: str, user_id: str, operation: str, period: str,
    limit_micro_usd: int, on_exhausted: str | None = None,
) -> Budget:
    """Create or change the budget of a scope and period as ``actor``; ``*`` is the wildcard.
    Returns it. ``on_exhausted`` (``refuse`` | ``cheaper``) is kept as it is when ``None``
    (``refuse`` for a new budget).

    The row is written in the transaction of its ledger entry ``budget.set`` (``actor``,
    ``user_id``, ``operation``, ``period``, ``scope``, ``before`` and ``after``: each
    ``{"limit_micro_usd", "on_exhausted"}``, ``before`` ``null`` for a new budget), so no budget
    changes without its entry (docs/security.md: every admin change is ledgered before it takes
    effect). Lowering a limit below what is already spent or reserved refuses new calls; it never
    undoes a charge. Raises :class:`InvalidInput` (see :func:`check_budget`) for bad input and
    :class:`~opsgate.ledger.errors.LedgerUnavailable` when the entry cannot be written; nothing is
    written then.
    """
    check_budget(user_id, operation, period, limit_micro_usd, on_exhausted)
    where = and_(budgets.c.user_id == user_id, budgets.c.operation == operation,
                 budgets.c.period == period)
    policy = {"on_exhausted": on_exhausted} if on_exhausted else {}

    def change(conn: Connection) -> tuple[Budget | None, Budget]:
        before = conn.execute(select(budgets).where(where)).first()
        values = {"limit_micro_usd": limit_micro_usd, "updated_at": clock.now(), **policy}
        if before is None:
            conn.execute(insert(budgets).values(user_id=user_id, operation=operation, period=period,
                                                **values))
        else:
            conn.execute(update(budgets).where(where).values(**values))
        after = conn.execute(select(budgets).where(where)).one()
        return (None if before is None else _budget(before)), _budget(after)

    entry = ledger.append_sync(
        "budget.set", {"actor": actor, "user_id": user_id, "operation": operation, "period": period},
        work=change, amend=_budget_change,
    )
    return entry.work_result[1]


NO_SUCH_BUDGET = "no such budget; `opsgate budgets show` (or GET /v1/admin/budgets) lists them"


def find_budget(engine: Engine, user_id: str, operation: str, period: str) -> Budget:
    """The budget of a scope and period (``*`` the wildcard). Raises :class:`InvalidInput` for an
    unknown period and :class:`NotFound` when no such budget is set."""
    if period not in PERIODS:
        raise InvalidInput(f"period must be one of {', '.join(PERIODS)}")
    with engine.connect() as conn:
        row = conn.execute(select(budgets).where(budgets.c.user_id == user_id, budgets.c.operation == operation,
                                                 budgets.c.period == period)).first()
    if row is None:
        raise NotFound(NO_SUCH_BUDGET)
    return _budget(row)


def delete_budget(ledger: Ledger, *, actor: str, budget_id: int) -> Budget:
    """Delete budget ``budget_id`` as ``actor``; returns it as it was.

    The budget goes in the transaction of its ledger entry ``budget.delete`` (``actor``,
    ``budget_id``, ``user_id``, ``operation``, ``period``, ``scope`` and ``before``:
    ``{"limit_micro_usd", "on_exhausted"}``), with its counters, its settled and expired
    reservation rows and its refused/degraded rows: nothing is left to attach to a budget that
    takes its id later. A deletion is refused while calls in flight hold open reservations against
    the budget (:class:`~opsgate.metering.errors.BudgetConflict`, 409, naming how many and when
    the last expires): a held call then settles and extends as usual, and a later deletion leaves
    no open reservation behind. Holds, extensions and settlements run inside ledger appends too,
    so none can slip between the check and the deletion. A late settlement of a call that expired
    earlier charges the budgets that remain and skips the deleted one (no error; a deleted budget
    has no limit to overspend). Raises :class:`~opsgate.errors.NotFound` (404) for no such budget
    and :class:`~opsgate.ledger.errors.LedgerUnavailable`; nothing is written then.
    """
    where = budgets.c.id == budget_id

    def remove(conn: Connection) -> Budget:
        row = conn.execute(select(budgets).where(where).with_for_update()).first()
        if row is None:
            raise NotFound(NO_SUCH_BUDGET)
        held = (budget_reservations.c.budget_id == budget_id) & (budget_reservations.c.state == OPEN)
        count, last = conn.execute(select(func.count(), func.max(budget_reservations.c.expires_at))
                                   .where(held)).one()
        if count:
            raise BudgetConflict(
                f"{count} call(s) in flight hold reservations against this budget; delete it once "
                f"they settle (the last expires at {last.astimezone(UTC).isoformat(timespec='seconds')}"
                "; `opsgate budgets show` charges expired ones)")
        for table in (budget_outcomes, budget_reservations, budget_counters):
            conn.execute(delete(table).where(table.c.budget_id == budget_id))
        conn.execute(delete(budgets).where(where))
        return _budget(row)

    entry = ledger.append_sync("budget.delete", {"actor": actor, "budget_id": budget_id},
                               work=remove, amend=_budget_deleted)
    return entry.work_result


def _budget_deleted(budget: Budget) -> dict[str, Any]:
    """The scope fields and ``before`` of a ``budget.delete`` entry."""
    return {"user_id": budget.user_id, "operation": budget.operation, "period": budget.period,
            "scope": budget.scope, "before": _terms(budget)}


def _budget_change(change: tuple[Budget | None, Budget]) -> dict[str, Any]:
    """The ``scope``, ``before`` and ``after`` fields of a ``budget.set`` entry."""
    before, after = change
    return {"scope": after.scope, "before": _terms(before) if before else None, "after": _terms(after)}


def _terms(budget: Budget) -> dict[str, Any]:
    return {"limit_micro_usd": budget.limit_micro_usd, "on_exhausted": budget.on_exhausted}


_APPLICABLE = (
    select(budgets)
    .where(or_(budgets.c.user_id == bindparam("user_id"), budgets.c.user_id == ANY),
           or_(budgets.c.operation == bindparam("operation"), budgets.c.operation == ANY))
    .order_by(budgets.c.id)
)


def budgets_for(conn: Connection, user_id: str, operation: str) -> list[Budget]:
    """Every budget that a call by ``user_id`` on ``operation`` is charged against, by id, read on
    ``conn`` (inside the caller's transaction, on its DB-API cursor:
    :func:`~opsgate.store.statements.fetch`)."""
    rows = fetch(conn, _APPLICABLE, {"user_id": user_id, "operation": operation})
    return [_budget(row) for row in rows]


_SHADOW_BUDGETS = select(budgets).where(budgets.c.operation == SHADOW).order_by(budgets.c.id)


def shadow_budgets(conn: Connection) -> list[Budget]:
    """The ``shadow`` scope's budgets (day and/or month), by id, read on ``conn``."""
    return [_budget(row) for row in conn.execute(_SHADOW_BUDGETS)]


_OUTCOMES_TODAY = (
    select(budget_outcomes.c.budget_id, budget_outcomes.c.outcome, func.count())
    .where(budget_outcomes.c.created_at >= bindparam("since"))
    .group_by(budget_outcomes.c.budget_id, budget_outcomes.c.outcome)
)


def budget_statuses(engine: Engine, now: datetime) -> list[BudgetStatus]:
    """Every budget with the spent and reserved amounts of its current period, and the calls it
    refused and degraded since 00:00 UTC of ``now``'s day (its ``budget_outcomes`` rows)."""
    with engine.connect() as conn:
        rows = conn.execute(select(budgets).order_by(budgets.c.id)).all()
        counts = {(b, outcome): n for b, outcome, n in
                  conn.execute(_OUTCOMES_TODAY, {"since": period_start("day", now)})}
        result = []
        for row in rows:
            budget = _budget(row)
            start = period_start(budget.period, now)
            counter = conn.execute(
                select(budget_counters.c.spent_micro_usd, budget_counters.c.reserved_micro_usd)
                .where(budget_counters.c.budget_id == budget.id,
                       budget_counters.c.period_start == start)
            ).first()
            spent, reserved = (counter.spent_micro_usd, counter.reserved_micro_usd) if counter else (0, 0)
            result.append(BudgetStatus(budget, start, spent, reserved,
                                       counts.get((budget.id, REFUSED), 0),
                                       counts.get((budget.id, DEGRADED), 0)))
    return result


SCOPE_KINDS = ("global", "user", "operation", "user_operation", "shadow")
"""The kinds of budget scope, without the names in them (a metrics label must not carry a user id)."""
_SCOPE_KIND = case(
    (budgets.c.operation == SHADOW, "shadow"),
    (and_(budgets.c.user_id == ANY, budgets.c.operation == ANY), "global"),
    (budgets.c.user_id == ANY, "operation"),
    (budgets.c.operation == ANY, "user"),
    else_="user_operation",
)
_OUTCOMES_BY_KIND = (
    select(_SCOPE_KIND, budget_outcomes.c.outcome, func.count())
    .select_from(budget_outcomes.join(budgets, budgets.c.id == budget_outcomes.c.budget_id))
    .group_by(_SCOPE_KIND, budget_outcomes.c.outcome)
)


def outcome_counts(conn: Connection) -> dict[tuple[str, str], int]:
    """``{(scope kind, outcome): n}`` for every :data:`SCOPE_KINDS` and outcome (``refused``,
    ``degraded``; 0 when none): the ``budget_outcomes`` rows ever written, one per budget that had
    no room for a call's first request (a call refused by two budgets counts twice)."""
    found = {(kind, outcome): 0 for kind in SCOPE_KINDS for outcome in (REFUSED, DEGRADED)}
    for kind, outcome, n in conn.execute(_OUTCOMES_BY_KIND):
        found[(kind, outcome)] = n
    return found


def check_budget(user_id: str, operation: str, period: str, limit_micro_usd: int,
                 on_exhausted: str | None) -> None:
    """The one check of a budget to set (CLI ``opsgate budgets set`` and ``PUT /v1/admin/budgets``
    both reach it through :func:`set_budget`). Raises :class:`InvalidInput` for: an unknown period
    or policy; an empty or too long id; a ``user_id`` that is blank, holds a control character or
    is secret-shaped (the one user-id rule, :func:`~opsgate.security.users.check_user_id`: an id
    is stored as sent, never redacted into another one); a limit outside 0..:data:`MAX_LIMIT_MICRO_USD`; an
    operation that is neither ``*``, ``@shadow`` nor a known operation (the message names them);
    a shadow budget that is not global (``user_id`` ``*``) or is ``cheaper`` (shadow calls are
    never degraded). Unknown users are accepted: a budget may precede a user's first call."""
    if period not in PERIODS:
        raise InvalidInput(f"period must be one of {', '.join(PERIODS)}")
    if on_exhausted is not None and on_exhausted not in ON_EXHAUSTED:
        raise InvalidInput(f"on_exhausted must be one of {', '.join(ON_EXHAUSTED)}")
    check_user_id(user_id)
    if not operation or len(operation) > 64:
        raise InvalidInput("operation is 1-64 characters ('*' for any)")
    if not 0 <= limit_micro_usd <= MAX_LIMIT_MICRO_USD:
        raise InvalidInput(f"the limit must be from 0 to {MAX_LIMIT_MICRO_USD:,} micro-USD "
                           f"({MAX_LIMIT_USD:,} USD)")
    if operation == SHADOW:
        if user_id != ANY:
            raise InvalidInput("a shadow budget is global only: user_id must be '*'")
        if on_exhausted == CHEAPER:
            raise InvalidInput("a shadow budget cannot be cheaper: shadow calls are never degraded")
    elif operation != ANY and operation not in OPERATIONS:
        raise InvalidInput(f"unknown operation; known: {', '.join(sorted(OPERATIONS))}")


def _budget(row: Any) -> Budget:
    """The :class:`Budget` of a ``budgets`` row (a SQLAlchemy ``Row`` or the named tuple of
    :func:`~opsgate.store.statements.fetch`: attributes named by the columns)."""
    return Budget(row.id, row.user_id, row.operation, row.period, row.limit_micro_usd,
                  row.on_exhausted)
