"""Reserve, settle and expire budget reservations, atomically in the database.

Per budget and period there is one ``budget_counters`` row. :func:`hold` runs inside ONE transaction (the ledger intent's, on the request path; its own in
:func:`reserve`):
for every applicable budget (in id order, so concurrent transactions lock rows in the same order)
it runs the conditional update, all of them as one executemany (one round trip); only when they
did not all match (no room, or a period's counter row not created yet) are they undone and run
one by one, each making sure the period's counter row exists when it matches no row and running
once more ::

    UPDATE budget_counters SET reserved = reserved + :worst
     WHERE budget_id = :b AND period_start = :p
       AND spent + reserved + :worst <= (SELECT limit FROM budgets WHERE id = :b)

If any update matches no row the holds roll back (a savepoint) and :class:`BudgetExceeded` is
raised, unless every budget without room is ``cheaper``: then the worst cases of the chain's
further targets are tried in turn the same way and the first that fits is held (the call is
degraded). Either way each budget without room gets a ``budget_outcomes`` row (``refused`` or
``degraded``). Otherwise one ``budget_reservations`` row per budget is inserted in the same
transaction.
On PostgreSQL (READ COMMITTED) a concurrent UPDATE waits for the row lock and re-evaluates its
WHERE clause on the committed row, so two replicas can never both pass the check; on SQLite the
transaction's first statement is a write, which takes the database write lock (waiting up to the
busy timeout) before anything is read -- a ledger append's transaction took that lock with its
``BEGIN IMMEDIATE``, so these functions issue none there (``holds_write_lock``).

:func:`extend` (per attempt: a retry, a fallback or a repair request the first hold does not
cover) runs the same conditional UPDATE for the extra amount on the counters the call's open rows
hold, and grows those rows' ``worst_micro_usd``, all or nothing, in the caller's transaction (the
ledger ``extend`` entry's): the same guarantees as the first hold.

:func:`settle` moves one call from reserved to spent (``reserved -= worst; spent += actual``) in
one transaction: one update marking the call's open rows that returns what each held, the update
of each counter (one executemany, in budget id order), and one read of which of the call's budgets
are now over their limit (a call that expired meanwhile: one read of its rows first). :func:`expire_reservations` settles reservations nobody settled before their
``expires_at`` (a crashed request) at their worst case, state ``expired``; a late settle of such a
call then corrects ``spent`` to the real charge. Nothing is leaked or dropped.

:func:`hold_at_once` and :func:`charge_at_once` do the holds and the settlements of one ledger
batch (several calls, one transaction) with one counter update per budget counter for all of
them, and hand back to the one-call functions whenever the result could differ.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Connection, Engine, bindparam, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from opsgate.clock import Clock
from opsgate.ledger.writer import holds_write_lock
from opsgate.metering.budgets import Budget, budgets_for, period_start, shadow_budgets
from opsgate.metering.errors import BudgetExceeded
from opsgate.metering.models import (
    CHEAPER,
    DEGRADED,
    EXPIRED,
    OPEN,
    REFUSED,
    SETTLED,
    UNKNOWN_USAGE,
    budget_counters,
    budget_outcomes,
    budget_reservations,
    budgets,
)
from opsgate.store.db import begin_write, savepoint
from opsgate.store.inserts import insert_rows
from opsgate.store.statements import fetch, run

log = logging.getLogger("opsgate.metering")

_SQLITE_WRITE_LOCK = text("INSERT INTO budget_counters SELECT * FROM budget_counters WHERE 0")

# Statements are built once, with bound parameters: building SQLAlchemy expressions per call cost
# more than the database work on the request path.
_c, _r = budget_counters.c, budget_reservations.c
_ENSURE = {
    name: dialect.insert(budget_counters)
    .values(budget_id=bindparam("b"), period_start=bindparam("p"), spent_micro_usd=0,
            reserved_micro_usd=0)
    .on_conflict_do_nothing()
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}
_HOLD = (
    update(budget_counters)
    .where(_c.budget_id == bindparam("b"), _c.period_start == bindparam("p"),
           _c.spent_micro_usd + _c.reserved_micro_usd + bindparam("amount")
           <= select(budgets.c.limit_micro_usd).where(budgets.c.id == bindparam("b")).scalar_subquery())
    .values(reserved_micro_usd=_c.reserved_micro_usd + bindparam("amount"))
)
_ROWS = (
    select(_r.budget_id, _r.period_start, _r.worst_micro_usd, _r.state)
    .where(_r.request_id == bindparam("rid"), _r.state.in_(bindparam("states", expanding=True)))
    .order_by(_r.budget_id)
    .with_for_update()
)
_MARK = (  # every row of the request at once; amount NULL = each row's worst case (expiry)
    update(budget_reservations)
    .where(_r.request_id == bindparam("rid"), _r.state.in_(bindparam("states", expanding=True)))
    .values(state=bindparam("new_state"), settled_at=bindparam("now"),
            actual_micro_usd=func.coalesce(bindparam("amount", type_=BigInteger), _r.worst_micro_usd))
)
_SETTLE_OPEN = (  # a settlement's common case: mark the call's open rows, learn what they held
    update(budget_reservations)
    .where(_r.request_id == bindparam("rid"), _r.state == OPEN)
    .values(state=bindparam("new_state"), settled_at=bindparam("now"),
            actual_micro_usd=bindparam("amount"))
    .returning(_r.budget_id, _r.period_start, _r.worst_micro_usd)
)
_OPEN_OF = (  # a batch's settlements: the open rows of several calls, read (and locked) at once
    select(_r.request_id, _r.budget_id, _r.period_start, _r.worst_micro_usd)
    .where(_r.request_id.in_(bindparam("rids", expanding=True)), _r.state == OPEN)
    .order_by(_r.request_id, _r.budget_id)
    .with_for_update()
)
_MARK_OPEN = (  # then marked, one executemany over those rows: what _SETTLE_OPEN writes, each
    update(budget_reservations)  # row found by its primary key (SQLite would otherwise search
    .where(_r.request_id == bindparam("rid"), _r.budget_id == bindparam("b"),  # the state index)
           _r.state == OPEN)
    .values(state=bindparam("new_state"), settled_at=bindparam("now"),
            actual_micro_usd=bindparam("amount"))
)
_GROW = (
    update(budget_reservations)
    .where(_r.request_id == bindparam("rid"), _r.state == OPEN)
    .values(worst_micro_usd=_r.worst_micro_usd + bindparam("amount"))
)
_APPLY = (  # run as one executemany over a call's counters, in budget id order
    update(budget_counters)
    .where(_c.budget_id == bindparam("b"), _c.period_start == bindparam("p"))
    .values(reserved_micro_usd=_c.reserved_micro_usd - bindparam("released"),
            spent_micro_usd=_c.spent_micro_usd + bindparam("spent_delta"))
)
_COUNTERS = (  # counters with their budget's limit, narrowed by budget ids and period starts
    select(_c.budget_id, _c.period_start, _c.spent_micro_usd, budgets.c.limit_micro_usd)
    .join(budgets, budgets.c.id == _c.budget_id)
    .where(_c.budget_id.in_(bindparam("ids", expanding=True)),
           _c.period_start.in_(bindparam("starts", expanding=True)))
)
_OVER = (  # the budgets of a call's rows whose period spend is above their limit
    select(_r.budget_id)
    .join(budget_counters, (_c.budget_id == _r.budget_id) & (_c.period_start == _r.period_start))
    .join(budgets, budgets.c.id == _r.budget_id)
    .where(_r.request_id == bindparam("rid"), _c.spent_micro_usd > budgets.c.limit_micro_usd)
)


@dataclass(frozen=True, slots=True)
class Reservation:
    """What :func:`hold` holds for one call: ``worst_micro_usd`` against each of ``budgets``
    (empty when no budget applies, in which case nothing was written). ``choice`` is the target
    the holds are for: 0 for the first target of the call's chain, ``n`` for the ``n``-th cheaper
    candidate when the budgets had no room for the first one (the call is then degraded)."""

    request_id: str
    user_id: str
    operation: str
    worst_micro_usd: int
    budgets: tuple[Budget, ...]
    choice: int = 0

    @property
    def degraded(self) -> bool:
        """True when the call was sent to a cheaper target than its chain's first."""
        return self.choice > 0


@dataclass(frozen=True, slots=True)
class Settlement:
    """The outcome of :func:`settle`: the amount charged, the state written, and the budgets whose
    period spend is now above their limit (an overspend: the call cost more than its worst case)."""

    charged_micro_usd: int
    state: str
    over_limit: tuple[Budget, ...]


def reserve(
    engine: Engine,
    clock: Clock,
    *,
    request_id: str,
    user_id: str,
    operation: str,
    worst_micro_usd: int,
    ttl_s: float,
    cheaper: Sequence[int] = (),
) -> Reservation:
    """:func:`hold` in a transaction of its own (a refusal's ``budget_outcomes`` rows commit too)."""
    with begin_write(engine) as conn:
        try:
            return hold(conn, clock, request_id=request_id, user_id=user_id, operation=operation,
                        worst_micro_usd=worst_micro_usd, ttl_s=ttl_s, cheaper=cheaper)
        except BudgetExceeded as exc:
            refused = exc
    raise refused


def hold(
    conn: Connection,
    clock: Clock,
    *,
    request_id: str,
    user_id: str,
    operation: str,
    worst_micro_usd: int,
    ttl_s: float,
    shadow: bool = False,
    cheaper: Sequence[int] = (),
    note: bool = True,
) -> Reservation:
    """Hold ``worst_micro_usd`` (the first request's worst case at the first target of the call's
    chain) against every budget that applies to (``user_id``, ``operation``), inside the caller's
    transaction ``conn`` (the pipeline uses the ledger intent's transaction); with ``shadow``,
    against the ``shadow`` scope's budgets instead, and none set is a refusal.

    When some budgets have no room and every one of them is ``cheaper``, the worst cases of the
    chain's further targets, ``cheaper`` in chain order, are tried in turn with the same
    conditional updates, and the first that every budget has room for is held
    (:attr:`Reservation.choice`); each budget without room for the first target gets a
    ``degraded`` row in ``budget_outcomes``. Raises :class:`BudgetExceeded` (402, naming a
    budget) when a ``refuse`` budget has no room for the first target or no candidate fits; each
    budget without room for the first target then gets a ``refused`` row, written after the
    holds were undone (savepoints), so the caller keeps them when it commits. Without ``note``
    (a try that another try follows) no row is written. Database errors propagate.
    """
    _lock(conn)  # before any read: a SQLite read snapshot cannot be upgraded to a write later
    found = tuple(shadow_budgets(conn) if shadow else budgets_for(conn, user_id, operation))
    if shadow and not found:
        raise BudgetExceeded("No shadow budget is set (opsgate budgets set --scope shadow ...): "
                             "shadow calls are refused")
    if not found:
        return Reservation(request_id, user_id, operation, worst_micro_usd, found)
    now = clock.now()
    choice, amount = 0, worst_micro_usd
    lacking = _hold_all(conn, found, now, worst_micro_usd)
    if lacking:
        refusing = next((b for b in lacking if b.on_exhausted != CHEAPER), None)
        chosen = None if refusing else _cheapest_fit(conn, found, now, cheaper)
        if note:
            _note(conn, request_id, lacking, REFUSED if chosen is None else DEGRADED, now)
        if chosen is None:
            named = refusing or lacking[0]
            raise BudgetExceeded(
                f"The {named.period} budget of {named.scope} has no room for this call's "
                f"worst-case cost of {worst_micro_usd} micro-USD"
                + ("" if refusing else " (nor at a cheaper target of its chain)")
            )
        choice, amount = chosen
    reservation = Reservation(request_id, user_id, operation, amount, found, choice)
    insert_rows(conn, budget_reservations, _rows(reservation, now, ttl_s))
    return reservation


@dataclass(frozen=True, slots=True)
class Hold:
    """One call's first hold, as :func:`hold` takes it: ``worst_micro_usd`` for the call
    ``request_id`` by ``user_id`` on ``operation`` (``shadow``: against the shadow budgets)."""

    request_id: str
    user_id: str
    operation: str
    worst_micro_usd: int
    shadow: bool = False


def hold_at_once(conn: Connection, clock: Clock, holds: Sequence[Hold], ttl_s: float) -> list[Reservation] | None:
    """The common case of several calls' first holds in one transaction (a ledger batch's
    intents), in a number of statements that does not grow with the calls: one read of the
    applicable budgets per (user, operation), ONE conditional update per budget counter holding
    the sum of the worst cases of the calls it applies to (one executemany, in budget id order),
    one insert of every call's reservation rows. Returns each call's :class:`Reservation` (choice
    0), in order, when every counter had room for its sum: then each call alone would have fit too,
    in any order, so the limits hold exactly as with :func:`hold` one by one.

    ``None`` when any counter has no room for its sum (or its period's row does not exist yet),
    or a shadow call has no shadow budget: nothing is held then (a savepoint) and the caller holds
    the calls one by one with :func:`hold`, which admits those that fit and refuses or degrades
    the others. Database errors propagate."""
    _lock(conn)
    scopes: dict[tuple[bool, str, str], tuple[Budget, ...]] = {}
    for h in holds:
        key = (h.shadow, h.user_id, h.operation)
        if key not in scopes:
            scopes[key] = tuple(shadow_budgets(conn) if h.shadow else budgets_for(conn, h.user_id, h.operation))
            if h.shadow and not scopes[key]:
                return None
    now = clock.now()
    sums: dict[tuple[int, datetime], int] = {}
    for h in holds:
        for b in scopes[(h.shadow, h.user_id, h.operation)]:
            counter = (b.id, period_start(b.period, now))
            sums[counter] = sums.get(counter, 0) + h.worst_micro_usd
    if sums and not _held_at_once(conn, [(b, p, amount) for (b, p), amount in sorted(sums.items())]):
        return None
    reservations = [Reservation(h.request_id, h.user_id, h.operation, h.worst_micro_usd,
                                scopes[(h.shadow, h.user_id, h.operation)]) for h in holds]
    rows = [row for r in reservations for row in _rows(r, now, ttl_s)]
    insert_rows(conn, budget_reservations, rows)
    return reservations


def _rows(reservation: Reservation, now: datetime, ttl_s: float) -> list[dict[str, Any]]:
    """The ``budget_reservations`` rows of ``reservation`` made at ``now``: one per budget, open."""
    return [
        {"request_id": reservation.request_id, "budget_id": b.id,
         "period_start": period_start(b.period, now), "worst_micro_usd": reservation.worst_micro_usd,
         "state": OPEN, "created_at": now, "expires_at": now + timedelta(seconds=ttl_s)}
        for b in reservation.budgets
    ]


def _hold_all(conn: Connection, found: Sequence[Budget], now: datetime, amount: int) -> list[Budget]:
    """Hold ``amount`` on every budget of ``found`` (in id order); the budgets without room. When
    there are any, every hold made here is undone (a savepoint)."""
    starts = [period_start(b.period, now) for b in found]
    if _held_at_once(conn, [(b.id, start, amount) for b, start in zip(found, starts, strict=True)]):
        return []
    with savepoint(conn) as point:
        lacking = [b for b, start in zip(found, starts, strict=True)
                   if not _hold(conn, b.id, start, amount)]
        if lacking:
            point.rollback()
    return lacking


def _cheapest_fit(
    conn: Connection, found: Sequence[Budget], now: datetime, cheaper: Sequence[int]
) -> tuple[int, int] | None:
    """The first of ``cheaper`` (1-based index, amount) that every budget has room for, held;
    ``None`` when none fits. The conditional updates decide: a candidate a concurrent call took
    the room of is passed over for the next."""
    for index, amount in enumerate(cheaper, 1):
        if not _hold_all(conn, found, now, amount):
            return index, amount
    return None


def _note(conn: Connection, request_id: str, found: Sequence[Budget], outcome: str, now: datetime) -> None:
    """One ``budget_outcomes`` row per budget of ``found`` for ``request_id``."""
    conn.execute(budget_outcomes.insert(), [
        {"request_id": request_id, "budget_id": b.id, "outcome": outcome, "created_at": now}
        for b in found
    ])


def extend(conn: Connection, clock: Clock, reservation: Reservation, amount: int) -> None:
    """Hold ``amount`` more micro-USD for ``reservation``'s call on every budget it holds, inside
    the caller's transaction, before a further request of the call leaves.

    Raises :class:`BudgetExceeded` (402, naming the budget) when any of them has no room (after
    writing that budget's ``refused`` row in ``budget_outcomes``), or when the reservation is no
    longer open (it expired); nothing is then held (savepoint). A call that no budget applies to
    writes nothing.
    """
    if not reservation.budgets or amount <= 0:
        return
    _lock(conn)
    rows = conn.execute(_ROWS, {"rid": reservation.request_id, "states": [OPEN]}).all()
    if len(rows) != len(reservation.budgets):
        raise BudgetExceeded("This call's budget reservation is no longer open (it expired)")
    if _held_at_once(conn, [(row.budget_id, row.period_start, amount) for row in rows]):
        short = None
    else:
        with savepoint(conn) as point:
            short = next((budget for row, budget in zip(rows, reservation.budgets, strict=True)
                          if not _hold(conn, row.budget_id, row.period_start, amount)), None)
            if short is not None:
                point.rollback()
    if short is None:
        conn.execute(_GROW, {"rid": reservation.request_id, "amount": amount})
    if short is not None:
        _note(conn, reservation.request_id, [short], REFUSED, clock.now())
        raise BudgetExceeded(
            f"The {short.period} budget of {short.scope} has no room for this call's "
            f"next request (worst case {amount} micro-USD more)"
        )


def settle(
    engine: Engine, clock: Clock, reservation: Reservation, actual_micro_usd: int, *,
    unknown_usage: bool, estimated: bool = False,
) -> Settlement:
    """:func:`charge` in a transaction of its own."""
    with begin_write(engine) as conn:
        return charge(conn, clock, reservation, actual_micro_usd, unknown_usage=unknown_usage,
                      estimated=estimated)


def charge(
    conn: Connection, clock: Clock, reservation: Reservation, actual_micro_usd: int, *,
    unknown_usage: bool, estimated: bool = False,
) -> Settlement:
    """Charge the call and release the rest of its reservation, inside the caller's transaction.

    ``actual_micro_usd`` is the metered cost. With ``unknown_usage`` (the provider may have billed
    tokens we never saw and the caller cannot say for which request) the call is charged
    ``max(actual, worst)`` and its rows are flagged ``unknown_usage``. With ``estimated`` the
    caller metered per attempt and ``actual`` already charges each attempt of unknown usage its
    own worst case: it is charged as is, and the rows are flagged ``unknown_usage``.
    """
    charged, state = Charge(reservation, actual_micro_usd, unknown_usage, estimated).terms
    if not reservation.budgets:
        return Settlement(charged, state, ())
    _lock(conn)
    over_ids = _settle_open(conn, clock, reservation.request_id, state, charged)
    if over_ids is None:  # no open row: a late settle of a call that expired meanwhile
        over_ids = _close(conn, clock, reservation.request_id, (EXPIRED,), state, charged) or set()
    return Settlement(charged, state, tuple(b for b in reservation.budgets if b.id in over_ids))


@dataclass(frozen=True, slots=True)
class Charge:
    """One call's settlement, as :func:`charge` takes it."""

    reservation: Reservation
    actual_micro_usd: int
    unknown_usage: bool = False
    estimated: bool = False

    @property
    def terms(self) -> tuple[int, str]:
        """What :func:`charge` charges (micro-USD) and the state it writes."""
        worst = self.reservation.worst_micro_usd
        charged = max(self.actual_micro_usd, worst) if self.unknown_usage else self.actual_micro_usd
        return charged, UNKNOWN_USAGE if self.unknown_usage or self.estimated else SETTLED


def charge_at_once(conn: Connection, clock: Clock, charges: Sequence[Charge]) -> list[Settlement] | None:
    """Several calls' :func:`charge` in one transaction (a ledger batch's results), written as
    one by one in order would write them, in fewer statements: one read of every call's open
    rows (locked: ``FOR UPDATE`` on PostgreSQL; on SQLite the transaction holds the database's
    write lock) and one update marking them (an executemany, one parameter set per row, found by
    its primary key), then
    ONE update per budget counter moving the batch's sums (one executemany, in budget id order)
    and one read of those counters with their limits. A call's over-limit budgets are those
    whose spend passed their limit once its own charge was added in order (the spend read after,
    less the charges of the calls after it). Every call must hold budgets. ``None`` when a call
    has no open row (it expired meanwhile) or two charges name one request: nothing is written
    then (a savepoint), for the caller to charge them one by one. Database errors propagate."""
    _lock(conn)
    now = clock.now()
    terms = [c.terms for c in charges]
    rids = [c.reservation.request_id for c in charges]
    if len(set(rids)) != len(rids):
        return None
    with savepoint(conn) as point:
        open_rows: dict[str, list[Any]] = {}
        for row in fetch(conn, _OPEN_OF, {"rids": rids}):
            open_rows.setdefault(row.request_id, []).append(row)
        marked = [open_rows.get(rid, []) for rid in rids]
        if not all(marked):
            point.rollback()
            return None
        run(conn, _MARK_OPEN, [{"rid": rid, "b": row.budget_id, "new_state": state, "amount": charged,
                                "now": now}
                               for rid, rows, (charged, state) in zip(rids, marked, terms, strict=True)
                               for row in rows])
    moved: dict[tuple[int, datetime], tuple[int, int]] = {}
    for rows, (charged, _) in zip(marked, terms, strict=True):
        for row in rows:
            released, spent = moved.get((row.budget_id, row.period_start), (0, 0))
            moved[(row.budget_id, row.period_start)] = (released + row.worst_micro_usd, spent + charged)
    run(conn, _APPLY, [{"b": b, "p": p, "released": released, "spent_delta": spent}
                       for (b, p), (released, spent) in sorted(moved.items())])
    after = {(row.budget_id, row.period_start): (row.spent_micro_usd, row.limit_micro_usd)
             for row in fetch(conn, _COUNTERS, {"ids": sorted({b for b, _ in moved}),
                                                "starts": sorted({p for _, p in moved})})}
    running = {counter: after[counter][0] - moves[1] for counter, moves in moved.items()}
    settlements = []
    for c, rows, (charged, state) in zip(charges, marked, terms, strict=True):
        over = set()
        for row in rows:
            counter = (row.budget_id, row.period_start)
            running[counter] += charged
            if running[counter] > after[counter][1]:
                over.add(row.budget_id)
        settlements.append(Settlement(charged, state, tuple(b for b in c.reservation.budgets if b.id in over)))
    return settlements


def expire_reservations(engine: Engine, clock: Clock) -> list[str]:
    """Settle every open reservation past its ``expires_at`` at its worst case (state ``expired``).

    Returns the request ids this call expired (one another process expired first, between the
    read and the write, is left out and not logged). Run at start-up of every gateway, by
    ``opsgate budgets show``, before a budget is deleted, and every ``reservation TTL / 2``
    seconds by each running gateway (:meth:`~opsgate.metering.service.MeteringService.expire_every`).
    Only rows past ``expires_at`` (created + ``OPSGATE_BUDGET_RESERVATION_TTL_S``, longer than any
    call) are touched, so a call still in flight keeps its hold. One indexed read
    (``ix_budget_reservations_state_expires``) when nothing is stale.
    """
    now = clock.now()
    with engine.connect() as conn:
        stale = conn.execute(
            select(budget_reservations.c.request_id).distinct()
            .where(budget_reservations.c.state == OPEN, budget_reservations.c.expires_at < now)
        ).scalars().all()
    expired = []
    for request_id in stale:
        with begin_write(engine) as conn:
            _lock(conn)
            closed = _close(conn, clock, request_id, (OPEN,), EXPIRED, None)
        if closed is None:
            continue
        expired.append(request_id)
        log.warning("budget reservation of request %s expired unsettled; charged its worst case",
                    request_id)
    return expired


def release_interrupted(conn: Connection, clock: Clock, request_id: str) -> bool:
    """Close ``request_id``'s open reservation rows as ``expired``, charged their worst case, in
    the caller's transaction: the work of ``opsgate ledger recover``'s ``interrupted`` result
    append (:func:`opsgate.ledger.recovery.recover`), so the ledger's closing of a crashed call and
    the release of its hold commit together. The usage of an interrupted call is unknown, and a
    request the provider may have billed is never charged 0 (docs/budgets.md); a late settle of the
    call still corrects ``spent`` to the real charge, as after :func:`expire_reservations`.

    Returns True when open rows were closed, False when the call held none (no budget applied,
    or it was settled or expired already)."""
    _lock(conn)
    closed = _close(conn, clock, request_id, (OPEN,), EXPIRED, None)
    if closed is None:
        return False
    log.warning("budget reservation of interrupted request %s released; charged its worst case",
                request_id)
    return True


def _lock(conn: Connection) -> None:
    """SQLite: take the write lock first (see the module doc), unless ``conn`` is in a ledger
    append's transaction, which took it as its first statement. PostgreSQL: row locks suffice."""
    if conn.dialect.name == "sqlite" and not holds_write_lock(conn):
        conn.execute(_SQLITE_WRITE_LOCK)


def _held_at_once(conn: Connection, holds: Sequence[tuple[int, datetime, int]]) -> bool:
    """The common case of a hold in one round trip: the conditional update on every counter of
    ``holds`` ((budget id, period start, micro-USD to hold), in budget id order, so row locks are
    taken in the same order as one by one), as one executemany. True when every counter took its
    amount; when one did not (no room, or its period's row does not exist yet) nothing stays held
    (a savepoint) and False is returned, for the caller to go one by one and learn which."""
    with savepoint(conn) as point:
        params = [{"b": budget_id, "p": start, "amount": amount} for budget_id, start, amount in holds]
        if run(conn, _HOLD, params) == len(params):
            return True
        point.rollback()
    return False


def _hold(conn: Connection, budget_id: int, start: datetime, amount: int) -> bool:
    """The conditional update; when it matches no row, the period's counter may not exist yet:
    create it (a no-op if it does) and try once more. One statement once the counter exists."""
    values = {"b": budget_id, "p": start, "amount": amount}
    if run(conn, _HOLD, values) == 1:
        return True
    conn.execute(_ENSURE[conn.dialect.name], values)
    return run(conn, _HOLD, values) == 1


def _settle_open(conn: Connection, clock: Clock, request_id: str, state: str, charged: int) -> set[int] | None:
    """Charge ``charged`` to ``request_id``'s open rows and release what they held: one update
    marking them (it returns each row's budget, period and worst case), then :func:`_apply`.
    Returns the ids of the budgets now over their limit, or ``None`` when the call has no open
    row (a call's rows are open, expired or settled together: :func:`hold` and :func:`extend`
    write all of them, :func:`_close` moves all of them)."""
    rows = fetch(conn, _SETTLE_OPEN, {"rid": request_id, "new_state": state, "amount": charged,
                                      "now": clock.now()})
    if not rows:
        return None
    return _apply(conn, request_id, [
        {"b": row.budget_id, "p": row.period_start, "released": row.worst_micro_usd,
         "spent_delta": charged}
        for row in rows
    ])


def _apply(conn: Connection, request_id: str, moves: list[dict[str, Any]]) -> set[int]:
    """Move the counters of ``request_id``'s rows, ``reserved -= released; spent += spent_delta``
    for each of ``moves`` (``{"b", "p", "released", "spent_delta"}``, not empty), in budget id
    order as one executemany. Returns the ids of the budgets of ``request_id``'s rows whose period
    spend is now above their limit."""
    run(conn, _APPLY, sorted(moves, key=lambda move: move["b"]))
    return {row.budget_id for row in fetch(conn, _OVER, {"rid": request_id})}


def _close(
    conn: Connection,
    clock: Clock,
    request_id: str,
    from_states: Sequence[str],
    state: str,
    charged: int | None,
) -> set[int] | None:
    """Move ``request_id``'s rows in ``from_states`` to ``state`` and apply them to the counters.

    ``charged`` None means "the worst case" (expiry). An ``open`` row releases its worst case from
    ``reserved``; an ``expired`` row (already charged its worst case) corrects ``spent``.
    Returns the ids of the budgets whose period spend is now above their limit, or ``None`` when
    ``request_id`` has no row in ``from_states`` (nothing was written).
    """
    rows = conn.execute(_ROWS, {"rid": request_id, "states": list(from_states)}).all()
    if not rows:
        return None
    conn.execute(_MARK, {"rid": request_id, "states": list(from_states), "new_state": state,
                         "amount": charged, "now": clock.now()})
    moves = []
    for row in rows:
        amount = row.worst_micro_usd if charged is None else charged
        moves.append({"b": row.budget_id, "p": row.period_start,
                      "released": row.worst_micro_usd if row.state == OPEN else 0,
                      "spent_delta": amount if row.state == OPEN else amount - row.worst_micro_usd})
    return _apply(conn, request_id, moves)
