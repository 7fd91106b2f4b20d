"""Appending to the ledger with group commit.

One writer thread owns one database connection. Callers enqueue requests; the thread takes
everything queued (up to ``max_batch``) and writes it in ONE transaction:

1. take the ledger's write lock — SQLite: the writer's connection begins every transaction with
   ``BEGIN IMMEDIATE`` (:func:`~opsgate.store.db.writing`), which acquires the database's
   RESERVED lock (waiting up to ``busy_timeout``) before any statement of the batch runs.
   PostgreSQL: ``pg_advisory_xact_lock(LOCK_KEY)`` (on the DB-API cursor,
   :func:`~opsgate.store.statements.run`), released at commit or rollback. Either way appends
   from several processes are serialised.
2. run each request's ``work`` (see :data:`InTransaction`); works of one kind that can run
   together (a ``many``, see :data:`BatchRun`) run as one call, the batch ordered so that they
   are adjacent; then read the head (highest ``seq``, its hash and ``ts``) inside that transaction
   (on the DB-API cursor, :func:`~opsgate.store.statements.fetch`);
3. assign consecutive ``seq`` values, clamp ``ts`` to ``max(clock.now(), head ts)``, hash the chain;
4. insert the entries and every extra row the callers attached (``rows``), one executemany per
   table (:func:`~opsgate.store.inserts.insert_rows`: the statement compiled once per table, sent
   on the DB-API cursor);
5. commit, then resolve each caller with an :class:`AppendedEntry`.

If the transaction fails, every caller in the batch gets :class:`LedgerUnavailable` and the database
holds none of the batch. One exception: an integrity error (a caller's row breaks a unique
constraint) makes the writer retry the batch's requests one by one, so one bad row cannot take the
others down with it.

A failed transaction also marks the store as refusing writes (:meth:`Ledger.storage_failing`,
what ``/readyz`` reads) until the next transaction commits: an attribute set by the writer
thread, no statement of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Generic, Self, TypeAlias, TypeVar, overload

from sqlalchemy import Connection, Engine, RootTransaction, Table, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from opsgate.clock import Clock
from opsgate.errors import OpsgateError
from opsgate.ledger.entry import (
    FIRST_SEQ,
    GENESIS_PREV_HASH,
    ChainedEntry,
    chain_entry,
    clean_payload,
    encode_body,
    format_ts,
    parse_ts,
)
from opsgate.ledger.errors import LedgerError, LedgerUnavailable
from opsgate.store.db import writing
from opsgate.store.inserts import insert_rows
from opsgate.store.statements import fetch, run
from opsgate.store.models import ledger_entries

log = logging.getLogger(__name__)

LOCK_KEY = 0x6F70_7367_6174_654C
"""PostgreSQL advisory lock id of the ledger's append lock (ASCII "opsgateL", a signed bigint)."""

_LOCK_SQL = {
    "sqlite": None,  # the BEGIN IMMEDIATE of the writer's connection takes the lock
    "postgresql": text(f"SELECT pg_advisory_xact_lock({LOCK_KEY})"),
}
_HEAD = (
    select(ledger_entries.c.seq, ledger_entries.c.entry_hash, ledger_entries.c.body)
    .order_by(ledger_entries.c.seq.desc())
    .limit(1)
)
_STOP = object()
STORAGE_RECHECK_S = 5.0
"""How long after a failed transaction, with no transaction committed since, the store still
counts as refusing writes (:meth:`Ledger.storage_failing`): long enough for a load balancer to
take the replica out, short enough that one with nothing left to write (whose next write is
the only test of the store) is tried again."""
_WRITERS: weakref.WeakSet[Connection] = weakref.WeakSet()
"""The writer threads' connections: every transaction on one of them takes the append lock (on
SQLite the database write lock) before any work runs (see :func:`holds_write_lock`)."""

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

ExtraRows = Iterable[tuple[Table, Mapping[str, Any]]]
InTransaction: TypeAlias = Callable[[Connection], T]
"""``InTransaction[T]``: work that must commit atomically with an entry (e.g. a budget reservation,
``T = Reservation``). It runs inside the append's transaction, before the entry is chained, and
its return value comes back as :attr:`AppendedEntry.work_result`. Raising an
:class:`~opsgate.errors.OpsgateError` refuses that one append (the caller gets the error) without
disturbing the rest of the batch. Work that writes before it may raise must undo its own writes (a
savepoint around them), so a refusal leaves nothing behind but what it means to record (a
budget's refusal count); work that only reads needs none."""

BatchRun: TypeAlias = Callable[[Connection, Sequence[Any]], list[Any]]
"""A work's ``many``: several works of one kind run as one (e.g. the budget holds of every intent
of a batch, one conditional update per budget counter instead of one per call). It gets the
works, in order, and returns, for each, what that work alone would have returned or the
:class:`~opsgate.errors.OpsgateError` it would have raised (a refusal of that append only), with
the same guarantees. An :data:`InTransaction` that has a ``many`` attribute is batched with the
other works of the batch that have the same one (see :func:`_grouped`)."""

Amend: TypeAlias = Callable[[T], dict[str, Any]]
"""``Amend[T]``: the payload fields an append's work result adds to its entry (e.g. the target a
budget reservation chose), checked like the payload; ``{}`` adds none."""


@dataclass(frozen=True, slots=True)
class AppendedEntry(Generic[T_co]):
    """A committed entry: its ``seq``, 32-byte ``entry_hash``, ``ts`` (UTC, microseconds) and
    ``work_result``, what the append's :data:`InTransaction` returned (``None`` without one)."""

    seq: int
    entry_hash: bytes
    ts: datetime
    work_result: T_co


@dataclass(frozen=True, slots=True)
class _Request:
    """One queued append. Async callers wait on an asyncio future of ``loop``; sync callers on a
    ``concurrent.futures.Future`` (``loop`` is None)."""

    kind: str
    payload: dict[str, Any]
    rows: tuple[tuple[Table, Mapping[str, Any]], ...]
    future: Future[AppendedEntry[Any]] | asyncio.Future[AppendedEntry[Any]]
    loop: asyncio.AbstractEventLoop | None
    work: InTransaction[Any] | None = None
    amend: Amend[Any] | None = None

    def amended(self, work_result: Any) -> _Request:
        """This request with the fields :attr:`amend` draws from ``work_result`` in its payload."""
        if self.amend is None:
            return self
        extra = clean_payload(self.kind, self.amend(work_result))
        return replace(self, payload={**self.payload, **extra}) if extra else self

    def take(self) -> bool:
        """Claim the request for writing; False if its caller already gave up (cancelled)."""
        if self.loop is None:
            return self.future.set_running_or_notify_cancel()  # type: ignore[union-attr]  # no loop: a thread Future
        return not self.future.cancelled()


Outcome = AppendedEntry[Any] | OpsgateError


@dataclass(frozen=True, slots=True)
class _Head:
    seq: int
    entry_hash: bytes
    ts: datetime


class Ledger:
    """The append side of the ledger (see the module docstring for the commit protocol).

    ``Ledger(engine, clock)``; ``start()`` launches the writer thread; ``close()`` writes whatever
    is queued, then stops and joins it; ``with Ledger(engine, clock) as ledger:`` does both.
    Engines come from ``opsgate.store.db.make_engine`` (SQLite or PostgreSQL). ``transactions``
    and ``entries`` count what has been committed.
    """

    def __init__(self, engine: Engine, clock: Clock, *, max_batch: int = 1024) -> None:
        if engine.dialect.name not in _LOCK_SQL:
            raise LedgerError(f"the ledger does not support {engine.dialect.name} databases")
        self._engine = engine
        self._clock = clock
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._guard = threading.Lock()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._conn: Connection | None = None
        self.transactions = 0
        self.entries = 0
        self._failed_at: float | None = None

    def start(self) -> None:
        """Start the writer thread (once)."""
        with self._guard:
            if self._closed or self._thread is not None:
                raise LedgerError("ledger already started or closed")
            self._thread = threading.Thread(target=self._run, name="opsgate-ledger", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Commit everything queued, stop the writer thread and wait for it. Idempotent."""
        with self._guard:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join()
        else:
            self._fail_queued()

    def storage_failing(self, recheck_s: float = STORAGE_RECHECK_S) -> bool:
        """True when the last transaction failed (the database refused the write: disk full, a
        restart, a lost connection; not a caller's bad row) less than ``recheck_s`` seconds ago
        on the clock's ``monotonic``, and none has committed since. Reads one attribute."""
        failed = self._failed_at
        return failed is not None and self._clock.monotonic() - failed < recheck_s

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @overload
    async def append(
        self, kind: str, payload: dict[str, Any], rows: ExtraRows = (), *, work: None = None
    ) -> AppendedEntry[None]: ...

    @overload
    async def append(
        self, kind: str, payload: dict[str, Any], rows: ExtraRows = (), *, work: InTransaction[T],
        amend: Amend[T] | None = None,
    ) -> AppendedEntry[T]: ...

    async def append(
        self,
        kind: str,
        payload: dict[str, Any],
        rows: ExtraRows = (),
        *,
        work: InTransaction[Any] | None = None,
        amend: Amend[Any] | None = None,
    ) -> AppendedEntry[Any]:
        """Append one entry and commit ``rows`` (``(table, values)`` inserts) and ``work`` (see
        :data:`InTransaction`) with it; what ``work`` returns comes back as ``work_result``, and
        ``amend(work_result)`` adds its fields to the payload before the entry is chained.

        Returns once the entry is durable. Raises LedgerError for a payload the format refuses
        (see ``entry.clean_payload``), LedgerUnavailable if the transaction failed or the ledger
        is closed, or the OpsgateError ``work`` raised (then nothing of this append is written).
        Cancelling the caller before the writer takes the request drops the request.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AppendedEntry[Any]] = loop.create_future()
        cleaned = clean_payload(kind, payload)
        self._enqueue(_Request(kind, cleaned, tuple(rows), future, loop, work, amend))
        return await future

    @overload
    def append_sync(
        self, kind: str, payload: dict[str, Any], rows: ExtraRows = (), timeout: float | None = None,
        *, work: None = None,
    ) -> AppendedEntry[None]: ...

    @overload
    def append_sync(
        self, kind: str, payload: dict[str, Any], rows: ExtraRows = (), timeout: float | None = None,
        *, work: InTransaction[T], amend: Amend[T] | None = None,
    ) -> AppendedEntry[T]: ...

    def append_sync(
        self,
        kind: str,
        payload: dict[str, Any],
        rows: ExtraRows = (),
        timeout: float | None = None,
        *,
        work: InTransaction[Any] | None = None,
        amend: Amend[Any] | None = None,
    ) -> AppendedEntry[Any]:
        """Blocking :meth:`append` (same ``rows``, ``work`` and ``amend``, same errors) for threads
        without an event loop; ``timeout`` in seconds."""
        future: Future[AppendedEntry[Any]] = Future()
        self._enqueue(_Request(kind, clean_payload(kind, payload), tuple(rows), future, None, work, amend))
        return future.result(timeout)

    def _enqueue(self, request: _Request) -> None:
        with self._guard:
            if self._closed:
                raise LedgerUnavailable("the ledger is closed")
            self._queue.put(request)

    def _run(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                live = [r for r in batch if r.take()]
                if live:
                    self._commit(_grouped(live))
        finally:
            self._drop_connection()

    def _next_batch(self) -> list[_Request] | None:
        """Block for one request, then take whatever else is queued; None once stopped."""
        batch: list[_Request] = []
        item = self._queue.get()
        while item is not _STOP:
            batch.append(item)
            if len(batch) >= self._max_batch:
                return batch
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch
        self._queue.put(_STOP)  # seen: finish this batch, stop on the next call
        return batch or None

    def _commit(self, requests: list[_Request]) -> None:
        try:
            appended = self._transaction(requests)
        except IntegrityError:
            if len(requests) == 1:
                self._fail(requests, "a row broke a database constraint")
                return
            log.warning(
                "ledger batch hit an integrity error; retrying %d appends one by one", len(requests)
            )
            for request in requests:
                self._commit([request])
            return
        except Exception:
            log.exception("ledger transaction failed")
            self._failed_at = self._clock.monotonic()
            self._fail(requests, "the ledger transaction failed")
            return
        self._failed_at = None
        _settle(requests, appended)

    def _transaction(self, requests: list[_Request]) -> list[Outcome]:
        try:
            conn, transaction = self._begin_locked()
            with transaction:
                done = _run_works(conn, requests)
                accepted = [r.amended(w) for r, w in zip(requests, done, strict=True) if not _refused(w)]
                head = _read_head(conn)
                ts = max(self._clock.now().astimezone(UTC), head.ts)
                chained = _chain(head, format_ts(ts), accepted)
                insert_rows(conn, ledger_entries, [_row(e) for e in chained])
                for table, rows in _rows_by_table(accepted).items():
                    insert_rows(conn, table, rows)  # one executemany per table
        except Exception:
            self._drop_connection()
            raise
        self.transactions += 1
        self.entries += len(chained)
        entries = iter(chained)
        return [
            w if _refused(w) else AppendedEntry((e := next(entries)).seq, e.entry_hash, ts, w)
            for w in done
        ]

    def _begin_locked(self) -> tuple[Connection, RootTransaction]:
        """Begin a transaction and take the append lock (step 1 of the module doc). On PostgreSQL
        a connection the server closed since the last batch (a database restart) fails on the
        lock, the first statement, before anything is written, so it is replaced once and the
        lock taken on the new one."""
        lock = _LOCK_SQL[self._engine.dialect.name]
        for attempt in (1, 2):
            conn = self._connection()
            transaction = conn.begin()
            try:
                if lock is not None:
                    run(conn, lock)
                return conn, transaction
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
                log.warning("the database closed the ledger connection; appending on a new one")
                self._drop_connection()
        raise AssertionError("unreachable")

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = writing(self._engine.connect())
            _WRITERS.add(self._conn)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                log.warning("closing the ledger connection failed", exc_info=True)
            self._conn = None

    def _fail(self, requests: list[_Request], why: str) -> None:
        _settle(requests, [LedgerUnavailable(why) for _ in requests])

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP and item.take():
                self._fail([item], "the ledger was closed unstarted")


def holds_write_lock(conn: Connection) -> bool:
    """True when ``conn`` is the ledger writer's connection, inside an append's transaction: the
    append lock, on SQLite the database write lock, is already held (step 1 of the module doc), so
    :data:`InTransaction` work need not take it again. False for any other connection."""
    return conn in _WRITERS


def _settle(requests: list[_Request], outcomes: Sequence[Outcome]) -> None:
    """Resolve each caller. Async callers are woken with one ``call_soon_threadsafe`` per event
    loop per batch, not one per caller: waking a loop costs a self-pipe write each time."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Outcome]]] = {}
    for request, outcome in zip(requests, outcomes, strict=True):
        if request.loop is None:
            _resolve(request.future, outcome)
        else:
            by_loop.setdefault(request.loop, []).append((request.future, outcome))  # type: ignore[arg-type]  # a loop: an asyncio Future
    for loop, pending in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve_all, pending)
        except RuntimeError:  # the caller's loop is closed: nobody is waiting any more
            log.warning("ledger caller's event loop closed before its append was settled")


def _resolve_all(pending: list[tuple[asyncio.Future[Any], Outcome]]) -> None:
    for future, outcome in pending:
        if not future.done():
            _resolve(future, outcome)


def _rows_by_table(requests: list[_Request]) -> dict[Table, list[Mapping[str, Any]]]:
    """The requests' extra rows by table, in order (the rows as the callers passed them:
    :func:`~opsgate.store.inserts.insert_rows` reads them, never keeps them)."""
    grouped: dict[Table, list[Mapping[str, Any]]] = {}
    for request in requests:
        for table, values in request.rows:
            grouped.setdefault(table, []).append(values)
    return grouped


def _grouped(requests: list[_Request]) -> list[_Request]:
    """``requests`` in the order their work runs and their entries are chained: first those
    without a batchable work (no ``many``, see :data:`BatchRun`), in order, then those of each
    ``many``, together, in order of first appearance. Any order of one batch is a true order:
    every caller waits for its append to commit, so the requests of a batch were concurrent."""
    groups: dict[BatchRun | None, list[_Request]] = {None: []}
    for request in requests:
        groups.setdefault(_many(request), []).append(request)
    return [request for group in groups.values() for request in group]


def _many(request: _Request) -> BatchRun | None:
    many: BatchRun | None = getattr(request.work, "many", None)
    return many


def _run_works(conn: Connection, requests: list[_Request]) -> list[Any]:
    """What each request's work returned or refused with (see :func:`_run_work`), in order; the
    works of a run of requests with the same ``many`` (:func:`_grouped` makes the runs) run as
    one call of it."""
    done: list[Any] = []
    start = 0
    while start < len(requests):
        many = _many(requests[start])
        end = start + 1
        if many is None:
            done.append(_run_work(conn, requests[start]))
        else:
            while end < len(requests) and _many(requests[end]) == many:
                end += 1
            done.extend(many(conn, [r.work for r in requests[start:end]]))
        start = end
    return done


def _run_work(conn: Connection, request: _Request) -> Any:
    """Run ``request.work``; an OpsgateError it raises is returned (a refusal)."""
    if request.work is None:
        return None
    try:
        return request.work(conn)
    except OpsgateError as exc:
        return exc


def _refused(work_result: Any) -> bool:
    return isinstance(work_result, OpsgateError)


def _resolve(future: Future[Any] | asyncio.Future[Any], outcome: Outcome) -> None:
    if isinstance(outcome, OpsgateError):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _read_head(conn: Connection) -> _Head:
    """The highest entry's seq, hash and ts, read in the append's transaction on the DB-API
    cursor (:func:`~opsgate.store.statements.fetch`); before the first entry, the genesis."""
    rows = fetch(conn, _HEAD)
    if not rows:
        return _Head(FIRST_SEQ - 1, GENESIS_PREV_HASH, datetime.min.replace(tzinfo=UTC))
    row = rows[0]
    return _Head(row.seq, bytes(row.entry_hash), parse_ts(json.loads(bytes(row.body))["ts"]))


def _chain(head: _Head, ts: str, requests: list[_Request]) -> list[ChainedEntry]:
    chained: list[ChainedEntry] = []
    seq, prev_hash = head.seq, head.entry_hash
    for request in requests:
        seq += 1
        entry = chain_entry(seq, prev_hash, encode_body(seq, ts, request.kind, request.payload))
        chained.append(entry)
        prev_hash = entry.entry_hash
    return chained


def _row(entry: ChainedEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "prev_hash": entry.prev_hash,
        "entry_hash": entry.entry_hash,
        "body": entry.body,
    }
