"""Closing intents a crash left open: an ``interrupted`` result for each.

After a ``kill -9`` mid-request the ledger holds the durable ``intent`` but no ``result``. The
chain is intact (each append is one transaction) and ``verify`` counts such intents as incomplete,
not as tampering. :func:`recover` appends, for every intent older than ``older_than_s`` without a
result, a ``result`` entry ``{"request_id", "intent_seq", "status": "interrupted", "error_code":
"interrupted"}`` together with a ``ledger_recoveries`` row whose primary key makes a second
recovery of the same request fail instead of writing a duplicate. The age threshold keeps it away
from requests still running in another replica.

A result the gateway could not write when the call ended (the store was full or restarting) is
kept pending in the process and written later (``Gateway.flush_pending``). Both writers check,
inside their append's transaction, under the append lock, that the call is not already closed
(:func:`closed_by`): a recovery refuses a call whose ``ai_operation_log`` row exists, a late
result refuses a call recovery closed (:class:`~opsgate.ledger.errors.ResultClosed`). Whichever
commits first wins; the other writes nothing. A process that dies with results pending leaves
their intents open, and recovery closes them as ``interrupted`` as for any crash.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TypeAlias

from sqlalchemy import Connection, Engine, bindparam, select

from opsgate.clock import Clock
from opsgate.ledger.entry import decode_body_fast, format_ts
from opsgate.ledger.errors import LedgerUnavailable, ResultClosed
from opsgate.ledger.models import ledger_recoveries
from opsgate.ledger.verify import row_batches
from opsgate.ledger.writer import InTransaction, Ledger
from opsgate.store.models import ai_operation_log

RECORDED = "recorded"
RECOVERED = "recovered"
_LOGGED = select(ai_operation_log.c.request_id).where(ai_operation_log.c.request_id == bindparam("rid"))
_RECOVERED = select(ledger_recoveries.c.request_id).where(ledger_recoveries.c.request_id == bindparam("rid"))

DEFAULT_OLDER_THAN_S = 900.0
"""Longer than any request can run (provider timeout x retries), so no live request is closed."""


def open_intents(engine: Engine, before: str) -> dict[str, int]:
    """``request_id -> intent seq`` for intents with ``ts < before`` (``format_ts`` text) and no
    result entry. Reads the whole log once."""
    pending: dict[str, int] = {}
    for batch in row_batches(engine, 10_000):
        for seq, _, _, body in batch:
            obj = decode_body_fast(bytes(body))
            request_id = obj.get("request_id")
            if not isinstance(request_id, str):
                continue
            if obj["kind"] == "intent" and obj["ts"] < before:
                pending[request_id] = seq
            elif obj["kind"] == "result":
                pending.pop(request_id, None)
    return pending


Release: TypeAlias = Callable[[Connection, str], object]
"""``release(conn, request_id)``: what else closes with a crashed call, run in its ``interrupted``
result's transaction (the budget reservation's release,
:func:`opsgate.metering.reservations.release_interrupted`, wired by :func:`opsgate.runtime.recover_interrupted`;
the ledger cannot import metering)."""


def closed_by(conn: Connection, request_id: str) -> str | None:
    """How the call ``request_id`` was closed, read in ``conn``'s transaction: :data:`RECORDED`
    (its ``ai_operation_log`` row exists; every pipeline ``result`` writes one, request ids are
    unique per call), :data:`RECOVERED` (a ``ledger_recoveries`` row exists), or ``None`` (open).
    Two primary-key lookups; only late writes and recovery run it, never a call's first write."""
    if conn.execute(_LOGGED, {"rid": request_id}).first() is not None:
        return RECORDED
    if conn.execute(_RECOVERED, {"rid": request_id}).first() is not None:
        return RECOVERED
    return None


def unless_closed(request_id: str, work: InTransaction[object] | None = None) -> InTransaction[object]:
    """The work of a ``result`` append that must not close an already closed call: raises
    :class:`ResultClosed` (the append is refused, nothing written) when :func:`closed_by` finds
    it closed, else runs ``work`` (``None``: nothing) and returns what it returns."""

    def once(conn: Connection) -> object:
        by = closed_by(conn, request_id)
        if by is not None:
            raise ResultClosed(request_id, by)
        return work(conn) if work is not None else None

    return once


async def recover(
    engine: Engine, ledger: Ledger, clock: Clock, older_than_s: float = DEFAULT_OLDER_THAN_S,
    release: Release | None = None,
) -> list[str]:
    """Append an ``interrupted`` result for every open intent older than ``older_than_s``;
    return their request ids (those another recovery or a late result write closed first, after
    the log was read, are left out: each append checks :func:`unless_closed` under the lock). With
    ``release`` each append also runs ``release(conn, request_id)`` in its transaction, so the
    call's budget hold is released exactly when (and only if) its intent is closed."""
    before = format_ts(clock.now() - timedelta(seconds=older_than_s))
    closed = []
    for request_id, seq in open_intents(engine, before).items():
        payload = {
            "request_id": request_id,
            "intent_seq": seq,
            "status": "interrupted",
            "error_code": "interrupted",
        }
        row = {"request_id": request_id, "intent_seq": seq, "created_at": clock.now()}
        try:
            await ledger.append("result", payload, rows=[(ledger_recoveries, row)],
                                work=unless_closed(request_id, _bound(release, request_id)))
        except (LedgerUnavailable, ResultClosed):
            continue
        closed.append(request_id)
    return closed


def _bound(release: Release | None, request_id: str) -> Callable[[Connection], object] | None:
    """``release`` for one request, as the append's work (``None`` without one)."""
    if release is None:
        return None
    return lambda conn: release(conn, request_id)
