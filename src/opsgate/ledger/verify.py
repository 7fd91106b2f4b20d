"""Verifying the ledger from the stored bytes: chain, Merkle tree, checkpoints and anchors.

:func:`verify` reads ``ledger_entries`` in ``seq`` order in batches of a power-of-two size. A small
log, or ``workers=1``, is streamed through this process with the driver's own cursor (a named
server-side cursor inside one REPEATABLE READ snapshot on PostgreSQL). A larger one is split into
ranges covering the row count seen at the start; worker processes read and check their ranges over their
own connections and this process joins the results in order (links and timestamps across ranges,
the Merkle tree from each range's aligned perfect subtrees, checkpoint roots, open intents).
Memory stays bounded by the batches in flight plus the intents still waiting for their result.
Before the scan every checkpoint is gathered — stored in the database and read back from external
anchors — and its signature checked; at each checkpointed size the recomputed root is compared.

Failures (the first one stops the scan; its ``seq`` is where trust ends):

``bad_signature``  a checkpoint (stored or anchored) is not validly signed by the ledger's key, or
                   its stored root differs from its note; seq = the checkpoint's last entry.
``bad_type``       a stored column holds a value of another type or shape than the schema's (an
                   integer seq counting from 0, byte strings for the hashes and the body; in
                   ``ledger_checkpoints`` an integer size >= 0, a 32-byte root hash, a byte-string
                   note), e.g. a body or a note rewritten as TEXT, a NULL, a negative seq. The
                   detail names the table, the row and the column; SQLite keeps whatever type is
                   written into any column, so nothing read back is trusted to have its declared
                   type. For a checkpoint row, seq = its last entry (0 when its size is unusable).
``seq_gap``        the row's seq is larger than the previous seq + 1 (the first row must be 0);
                   the failure names the first missing seq.
``bad_body``       the body is not the canonical v1 JSON the writer produces (``entry.decode_body``).
``seq_mismatch``   the body's own ``seq`` differs from the row's (e.g. two bodies swapped).
``hash_mismatch``  ``SHA-256(domain || prev_hash || body)`` differs from the stored ``entry_hash``.
``link_mismatch``  ``prev_hash`` differs from the previous row's ``entry_hash`` (genesis: zeros).
``root_mismatch``  the tree recomputed over entries ``0 .. size-1`` differs from a signed
                   checkpoint of that size (e.g. the chain was recomputed after an edit); seq = the
                   first entry not covered by the last checkpoint that still matched, so the change
                   lies in ``seq .. size-1``.
``truncated``      a checkpoint stored in the database covers more entries than the log holds;
                   seq = the first missing entry.
``rolled_back``    an external anchor holds a checkpoint larger than the log and the database has no
                   such checkpoint (e.g. restored from an older backup); seq = the first missing entry.
``anchor_mismatch`` an anchor does not hold what the database records as posted to it
                   (``ledger_anchor_records``, ``ledger_anchor_state``): a checkpoint file deleted
                   or replaced by another note; or an anchored note is filed under another size
                   than the one it signs. A missing checkpoint is looked for after the entries
                   (their failures come first; seq = the last entry of the smallest one missing),
                   a misfiled note with the signatures (seq = the last entry of the smaller size).

Warnings, not failures: ``clock_regression`` (a ``ts`` earlier than its predecessor's; the writer
clamps, so it means another writer's clock or a hand-made entry). ``incomplete_intents`` counts
intents without a result for the same ``request_id``: a crash or an operation in flight.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sqlite3
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import DBAPIError

from opsgate.ledger.checkpoint import Checkpoint, Verifier, parse_checkpoint
from opsgate.ledger.entry import CHAIN_DOMAIN, GENESIS_PREV_HASH, decode_body_fast
from opsgate.ledger.errors import CheckpointError, LedgerError, LedgerIOError, StoredValueError
from opsgate.ledger.merkle import CompactRange
from opsgate.ledger.models import (
    ledger_anchor_records,
    ledger_anchor_state,
    ledger_checkpoints,
    stored_bytes,
    stored_int,
    stored_text,
)
from opsgate.store.models import ledger_entries

MAX_KEPT_WARNINGS = 100
DB_SOURCE = "database"
_ROWS_SQL = "SELECT seq, prev_hash, entry_hash, body FROM ledger_entries ORDER BY seq"
_CHAIN = hashlib.sha256(CHAIN_DOMAIN)
_LEAF = hashlib.sha256(b"\x00")


@dataclass(frozen=True, slots=True)
class Finding:
    """A failure or warning at ``seq``; ``reason`` is a stable token, ``detail`` free text."""

    seq: int
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class AnchoredNote:
    """A signed checkpoint note read back from an external anchor: ``source`` names the copy (a
    file path, ``discord:<message id>``), ``anchor`` the anchor (``directory``, ``discord``; as in
    ``ledger_anchor_records``), ``claimed`` the size the anchor files it under (the file name, the
    message's header), None when unknown."""

    source: str
    note: bytes
    anchor: str = ""
    claimed: int | None = None


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of :func:`verify`.

    ``entries``: rows checked (on failure, including the failing row). ``head_seq`` and
    ``head_hash`` (32 bytes): the last entry that verified, None for an empty ledger or a failure on
    the first row. ``failure``: the first failure, None when ``ok``. ``warnings``: the first
    ``MAX_KEPT_WARNINGS`` warnings; ``warning_count``: all of them. ``incomplete_intents``: intent
    entries with no result carrying the same ``request_id``. ``checkpoints``: distinct checkpoint
    sizes checked (stored and anchored). ``anchored_size``: the largest size confirmed by an
    external anchor given to :func:`verify` (0 without anchors); ``unanchored`` = entries beyond it.
    ``root``: the recomputed tree hash of all entries (None on failure).
    """

    ok: bool
    entries: int
    head_seq: int | None
    head_hash: bytes | None
    failure: Finding | None
    warnings: tuple[Finding, ...]
    warning_count: int
    incomplete_intents: int
    checkpoints: int = 0
    anchored_size: int = 0
    root: bytes | None = None

    @property
    def unanchored(self) -> int:
        """Entries not covered by any externally anchored checkpoint."""
        return max(self.entries - self.anchored_size, 0)


@dataclass(slots=True)
class _Target:
    """A checkpointed size with its signed root and where each copy of it came from."""

    size: int
    root: bytes
    sources: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Scan:
    """What :func:`_scan_batch` found in one batch of rows starting at ``start`` (a multiple of the
    power-of-two batch size). ``checked``: rows that passed. ``frontier``: ``(height, hash)``
    perfect subtrees of the passed rows' leaves, largest first; ``prefixes``: the same for each
    checkpoint size inside the batch. ``events``: ``(is_intent, request_id, seq)`` in order."""

    start: int
    checked: int = 0
    failure: Finding | None = None
    first_prev: bytes = b""
    last_hash: bytes = b""
    first_ts: str = ""
    last_ts: str = ""
    frontier: list[tuple[int, bytes]] = field(default_factory=list)
    prefixes: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)
    events: list[tuple[bool, str, int]] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)


def _scan_batch(
    job: tuple[int, list[tuple[int, bytes, bytes, bytes]], frozenset[int]],
) -> _Scan:
    """Every per-row check of one batch that needs no earlier batch (runs in a worker process):
    seq contiguity, body, body seq, chain hash, links inside the batch, ts order inside the batch,
    leaf hashes. The first row's link and ts are checked by the caller against the previous batch."""
    start, rows, sizes = job
    scan = _Scan(start)
    chain, leaf, tree = _CHAIN.copy, _LEAF.copy, CompactRange()
    expected, head_hash, head_ts = start, b"", ""
    for seq, prev_hash, entry_hash, body in rows:
        obj = _check_row(expected, seq, prev_hash, entry_hash, body, head_hash, chain)
        if type(obj) is Finding:
            scan.failure = obj
            return scan
        ts, kind = obj["ts"], obj["kind"]
        if seq == start:
            scan.first_prev, scan.first_ts = prev_hash, ts
        elif ts < head_ts:  # fixed-width UTC text: string order is time order
            scan.warnings.append(Finding(seq, "clock_regression", f"ts {ts} < {head_ts}"))
        if kind == "intent" or kind == "result":
            request_id = obj.get("request_id")
            if isinstance(request_id, str):
                scan.events.append((kind == "intent", request_id, seq))
        digest = leaf()
        digest.update(body)
        tree.append(digest.digest())
        expected, head_hash, head_ts = seq + 1, entry_hash, ts
        scan.checked, scan.last_hash, scan.last_ts = scan.checked + 1, entry_hash, ts
        if expected in sizes:
            scan.prefixes[expected] = tree.subtrees()
    scan.frontier = tree.subtrees()
    return scan


def _check_row(
    expected: int,
    seq: int,
    prev_hash: bytes,
    entry_hash: bytes,
    body: bytes,
    head_hash: bytes,
    chain: Callable[[], Any],
) -> Any:
    """The row's parsed body, or the Finding of its first failed check (in the documented order;
    the link is only checked here when ``head_hash`` is known, i.e. not for a batch's first row)."""
    if type(seq) is not int or not (type(prev_hash) is type(entry_hash) is type(body) is bytes):
        return Finding(expected, "bad_type", _type_problem(seq, prev_hash, entry_hash, body))
    if seq != expected:
        if seq < expected:  # rows come in seq order: a negative (or repeated) seq
            return Finding(expected, "bad_type",
                           f"ledger_entries row seq={seq}, column seq holds {seq}, below {expected}")
        return Finding(expected, "seq_gap", f"entry {expected} is missing (next row is {seq})")
    try:
        obj = decode_body_fast(body)
    except LedgerError as exc:
        return Finding(seq, "bad_body", exc.detail)
    if obj["seq"] != seq:
        return Finding(seq, "seq_mismatch", f"row {seq} holds the body of entry {obj['seq']}")
    digest = chain()
    digest.update(prev_hash)
    digest.update(body)
    if digest.digest() != entry_hash:
        return Finding(seq, "hash_mismatch", "stored entry_hash does not match the body")
    if head_hash and prev_hash != head_hash:
        return Finding(seq, "link_mismatch", "prev_hash is not the previous entry's hash")
    return obj


def _type_problem(seq: object, prev_hash: object, entry_hash: object, body: object) -> str:
    """The detail of an entry row with a value of the wrong type: the row (by its seq as
    stored) and the first such column."""
    row = f"ledger_entries row seq={_shown(seq)}"
    try:
        stored_int(seq, f"{row}, column seq", minimum=None)
        for column, value in (("prev_hash", prev_hash), ("entry_hash", entry_hash), ("body", body)):
            stored_bytes(value, f"{row}, column {column}")
    except StoredValueError as exc:
        return exc.detail
    return f"{row}: a column holds a value of an unexpected type"


def _shown(value: object) -> str:
    """A stored value as it can name a row in a finding (at most 40 characters)."""
    return str(value) if type(value) is int else repr(value)[:40]


class _Checker:
    """Joins batch scans in seq order: links and ts across batches, the tree, checkpoint roots,
    open intents. Stops after the first failure."""

    def __init__(self, targets: dict[int, _Target]) -> None:
        self.entries = 0
        self.head_seq: int | None = None
        self.head_hash = GENESIS_PREV_HASH
        self.head_ts = ""
        self.failure: Finding | None = None
        self.warnings: list[Finding] = []
        self.warning_count = 0
        self.open_intents: dict[str, int] = {}
        self.tree = CompactRange()
        self.targets = targets
        self.matched_size = 0

    def join(self, scan: _Scan) -> bool:
        """Take one batch's scan (batches in order); False once a failure is recorded."""
        self.entries += scan.checked + (scan.failure is not None)
        if scan.checked and scan.first_prev != self.head_hash:
            return self._fail(
                scan.start, "link_mismatch", "prev_hash is not the previous entry's hash"
            )
        if scan.checked and scan.first_ts < self.head_ts:
            self._warn(
                Finding(scan.start, "clock_regression", f"ts {scan.first_ts} < {self.head_ts}")
            )
        for finding in scan.warnings:
            self._warn(finding)
        for size in sorted(scan.prefixes):
            if not self._check_root(self.targets[size], scan.prefixes[size]):
                return False
        for is_intent, request_id, seq in scan.events:
            if is_intent:
                self.open_intents[request_id] = seq
            else:
                self.open_intents.pop(request_id, None)
        for height, node in scan.frontier:
            self.tree.append_subtree(node, height)
        if scan.checked:
            self.head_seq = scan.start + scan.checked - 1
            self.head_hash, self.head_ts = scan.last_hash, scan.last_ts
        if scan.failure is not None:
            self.failure = scan.failure
            return False
        return True

    def _check_root(self, target: _Target, prefix: list[tuple[int, bytes]]) -> bool:
        tree = self.tree.copy()
        for height, node in prefix:
            tree.append_subtree(node, height)
        if tree.root() != target.root:
            start = self.matched_size
            return self._fail(
                start,
                "root_mismatch",
                f"entries {start}..{target.size - 1} differ from the signed checkpoint of size "
                f"{target.size} ({', '.join(target.sources)})",
            )
        self.matched_size = target.size
        return True

    def finish(self) -> None:
        """After the last row: checkpoints larger than the log are truncation or a rollback."""
        size = self.tree.size
        beyond = [t for t in self.targets.values() if t.size > size]
        if self.failure is not None or not beyond:
            return
        target = max(beyond, key=lambda t: t.size)
        reason = "truncated" if DB_SOURCE in target.sources else "rolled_back"
        self._fail(
            size,
            reason,
            f"a signed checkpoint of size {target.size} ({', '.join(target.sources)}) "
            f"but the log ends at {size} entries",
        )

    def _fail(self, seq: int, reason: str, detail: str) -> bool:
        self.failure = Finding(seq, reason, detail)
        return False

    def _warn(self, finding: Finding) -> None:
        self.warning_count += 1
        if len(self.warnings) < MAX_KEPT_WARNINGS:
            self.warnings.append(finding)

    def report(self, anchored_size: int) -> VerifyReport:
        ok = self.failure is None
        return VerifyReport(
            ok=ok,
            entries=self.entries,
            head_seq=self.head_seq,
            head_hash=None if self.head_seq is None else self.head_hash,
            failure=self.failure,
            warnings=tuple(self.warnings),
            warning_count=self.warning_count,
            incomplete_intents=len(self.open_intents),
            checkpoints=len(self.targets),
            anchored_size=anchored_size if ok else 0,
            root=self.tree.root() if ok else None,
        )


def verify(
    engine: Engine,
    *,
    verifier: Verifier | None = None,
    anchored: Sequence[AnchoredNote] = (),
    batch_size: int = 8192,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    recorded: Mapping[str, Collection[int]] | None = None,
) -> VerifyReport:
    """Recompute ``engine``'s ledger from the stored bytes (see the module docstring).

    ``verifier`` checks the signatures of stored checkpoints and of the ``anchored`` notes (read
    from external anchors); without it stored checkpoints are compared by root only and anchored
    notes are refused. ``recorded`` maps anchors whose every current note is in ``anchored`` to
    the sizes the database records as posted to them (:func:`recorded_anchors`, read *before*
    the anchors, so a checkpoint published meanwhile is never missing): each must be there
    (``anchor_mismatch`` otherwise). ``progress`` (optional) is called with the rows checked after each batch.
    Batches (``batch_size`` rounded up to a power of two) are checked by ``workers`` processes
    (default: one per CPU; 1 = in this process) while this process reads the next ones and joins
    the results in order.
    Raises :class:`LedgerIOError` if the ledger cannot be read (no table, database unreachable).
    """
    try:
        stored, failure = _stored_checkpoints(engine)
    except DBAPIError as exc:
        raise LedgerIOError(f"could not read the checkpoints: {type(exc.orig).__name__}") from exc
    targets, failure = _targets(stored, anchored, verifier) if failure is None else ({}, failure)
    checker = _Checker(targets)
    if failure is not None:
        checker.failure = failure
        return checker.report(0)
    try:
        for scan in _scans(engine, _power_of_two(batch_size), frozenset(targets), workers):
            if not checker.join(scan):
                break
            if progress is not None:
                progress(checker.entries)
    except (DBAPIError, engine.dialect.loaded_dbapi.Error) as exc:
        cause = exc.orig if isinstance(exc, DBAPIError) else exc
        raise LedgerIOError(f"could not read the ledger: {type(cause).__name__}") from exc
    checker.finish()
    if checker.failure is None and recorded:
        checker.failure = _missing_from_anchors(anchored, recorded)
    external = [t.size for t in targets.values() if set(t.sources) - {DB_SOURCE}]
    return checker.report(max(external, default=0))


def recorded_anchors(engine: Engine) -> dict[str, frozenset[int]]:
    """Per anchor name, the checkpoint sizes the database records as posted to it: the rows of
    ``ledger_anchor_records`` and its ``ledger_anchor_state.anchored_size`` (when > 0). Read it
    before reading the anchors (a publisher writes the anchor first, then the record).
    :class:`StoredValueError` for a value of the wrong type, naming its row and column;
    :class:`LedgerIOError` when the tables cannot be read."""
    records = select(ledger_anchor_records.c.anchor, ledger_anchor_records.c.size)
    states = select(ledger_anchor_state.c.anchor, ledger_anchor_state.c.anchored_size)
    try:
        with engine.connect() as conn, _any_text(conn.connection.dbapi_connection):
            rows = [(table, column, *row) for table, column, query in (
                ("ledger_anchor_records", "size", records), ("ledger_anchor_state", "anchored_size", states))
                for row in conn.execute(query).all()]
    except DBAPIError as exc:
        raise LedgerIOError(f"could not read the anchor records: {type(exc.orig).__name__}") from exc
    found: dict[str, set[int]] = {}
    for table, column, anchor, value in rows:
        where = f"{table} row anchor={_shown(anchor)}, {column}={_shown(value)}, column"
        sizes = found.setdefault(stored_text(anchor, f"{where} anchor"), set())
        if (size := stored_int(value, f"{where} {column}")) > 0:
            sizes.add(size)
    return {name: frozenset(sizes) for name, sizes in found.items()}


def failed(finding: Finding) -> VerifyReport:
    """The report of a verification that failed with ``finding`` before reading any entry."""
    return VerifyReport(ok=False, entries=0, head_seq=None, head_hash=None, failure=finding,
                        warnings=(), warning_count=0, incomplete_intents=0)


def _missing_from_anchors(
    anchored: Sequence[AnchoredNote], recorded: Mapping[str, Collection[int]]
) -> Finding | None:
    """``anchor_mismatch`` when an anchor lacks a checkpoint the database ``recorded`` as posted
    to it. A note counts at the size it is filed under (its signed size was checked against that
    before the scan)."""
    held = {(note.anchor, note.claimed) for note in anchored}
    missing = {name: sorted(s for s in sizes if (name, s) not in held) for name, sizes in recorded.items()}
    missing = {name: sizes for name, sizes in missing.items() if sizes}
    if not missing:
        return None
    name, sizes = min(missing.items(), key=lambda item: item[1][0])
    return Finding(sizes[0] - 1, "anchor_mismatch",
                   f"the database records the checkpoints of size {', '.join(map(str, sizes))} as "
                   f"posted to the {name} anchor, which does not hold them (deleted, or replaced by "
                   f"another note)")


def _power_of_two(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()


def _scans(
    engine: Engine, batch_size: int, sizes: frozenset[int], workers: int | None
) -> Iterator[_Scan]:
    """Scans of consecutive batches of ``batch_size`` rows, in order.

    With one worker, or a log of one batch, this process streams and checks the rows itself. With
    more, each worker process reads its own ranges (``seq >= start ORDER BY seq LIMIT n``) over its
    own connection, so this process only joins small results; at most ``2 * workers`` ranges are
    in flight. Workers are forked from a forkserver (a single-threaded process started once, with this
    module preloaded), never from this process: a fork copies every lock as it stands, and one that
    another thread of the caller held at that instant (SQLite's allocator mutex while a gateway or
    ledger-writer thread queries) stays locked in the child for good, so the worker and this call
    would wait forever. Ranges cover the row count seen when verification starts (never the largest stored seq,
    which a flipped bit can make astronomically large): the log is append-only, so rows below it
    do not change while they are read (a change would itself be tampering, caught
    by the hashes).
    """
    workers = workers or os.cpu_count() or 1
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(ledger_entries)).scalar() or 0
    if workers == 1 or total <= batch_size or engine.url.database in (None, "", ":memory:"):
        jobs = (
            (index * batch_size, rows, _sizes_in(sizes, index * batch_size, batch_size))
            for index, rows in enumerate(row_batches(engine, batch_size))
        )
        yield from map(_scan_batch, jobs)
        return
    ranges = (
        (start, min(batch_size, total - start), _sizes_in(sizes, start, batch_size))
        for start in range(0, total, batch_size)
    )
    url = engine.url.render_as_string(hide_password=False)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # takes effect when this process first starts its server
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_open_worker, initargs=(url,)
    ) as pool:
        pending: deque[Future[_Scan]] = deque()
        for job in ranges:
            pending.append(pool.submit(_scan_range, job))
            if len(pending) >= 2 * workers:
                scan = pending.popleft().result()
                yield scan
                if scan.failure is not None:
                    return
        while pending:
            yield pending.popleft().result()


def _sizes_in(sizes: frozenset[int], start: int, batch_size: int) -> frozenset[int]:
    return frozenset(s for s in sizes if start < s <= start + batch_size)


_worker_engine: Engine | None = None


def _open_worker(url: str) -> None:
    """Worker process initializer: its own engine (a worker shares no connection with the caller)."""
    global _worker_engine
    from opsgate.store.db import make_engine

    _worker_engine = make_engine(url)


def _scan_range(job: tuple[int, int, frozenset[int]]) -> _Scan:
    """Read up to ``count`` rows from seq ``start`` in this worker and scan them. A gap shows up
    as a row whose seq is not the expected one, exactly as in the streamed scan."""
    start, count, sizes = job
    assert _worker_engine is not None
    # the first range has no lower bound, so a row below seq 0 is read (and fails) as in the streamed scan
    where = f"WHERE seq >= {int(start)} " if start else ""
    sql = f"{_ROWS_SQL.replace('ORDER BY', f'{where}ORDER BY')} LIMIT {int(count)}"
    with _worker_engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        try:
            with _any_text(raw):
                cursor.execute(sql)
                rows = cursor.fetchall()
        finally:
            cursor.close()
    return _scan_batch((start, rows, sizes))  # type: ignore[arg-type]  # DB-API rows are untyped tuples


def _stored_checkpoints(engine: Engine) -> tuple[list[tuple[int, bytes, bytes]], Finding | None]:
    """Every stored checkpoint as ``(size, root, note)`` by size, each value's type and shape
    checked; or the first row with a value of the wrong type as a ``bad_type`` Finding."""
    query = select(
        ledger_checkpoints.c.size, ledger_checkpoints.c.root_hash, ledger_checkpoints.c.note
    ).order_by(ledger_checkpoints.c.size)
    with engine.connect() as conn, _any_text(conn.connection.dbapi_connection):
        rows = conn.execute(query).all()
    checked = []
    for size, root, note in rows:
        row = f"ledger_checkpoints row size={_shown(size)}"
        try:
            checked.append((stored_int(size, f"{row}, column size"),
                            stored_bytes(root, f"{row}, column root_hash", length=32),
                            stored_bytes(note, f"{row}, column note")))
        except StoredValueError as exc:
            seq = max(size - 1, 0) if type(size) is int else 0
            return checked, Finding(seq, "bad_type", exc.detail)
    return checked, None


def _targets(
    stored: list[tuple[int, bytes, bytes]],
    anchored: Sequence[AnchoredNote],
    verifier: Verifier | None,
) -> tuple[dict[int, _Target], Finding | None]:
    """Every checkpoint by size, each signature checked; or the first bad one as a Finding."""
    targets: dict[int, _Target] = {}
    notes: list[tuple[str, bytes, int | None, bytes | None, int | None]]
    notes = [(DB_SOURCE, note, size, root, None) for size, root, note in stored]
    notes += [(a.source, a.note, None, None, a.claimed) for a in anchored]
    for source, note, size, root, claimed in notes:
        try:
            checkpoint = _open(note, verifier)
        except CheckpointError as exc:
            seq = max((size or _claimed_size(note)) - 1, 0)
            return targets, Finding(seq, "bad_signature", f"checkpoint from {source}: {exc.detail}")
        if (size is not None and (size, root) != (checkpoint.size, checkpoint.root)) or (
            checkpoint.size == 0
        ):
            return targets, Finding(
                max(checkpoint.size - 1, 0),
                "bad_signature",
                f"checkpoint from {source}: stored size/root differ from its signed note",
            )
        if claimed is not None and claimed != checkpoint.size:
            return targets, Finding(
                max(min(claimed, checkpoint.size) - 1, 0),
                "anchor_mismatch",
                f"{source} is filed as the checkpoint of size {claimed} but holds the one of size "
                f"{checkpoint.size}",
            )
        target = targets.setdefault(checkpoint.size, _Target(checkpoint.size, checkpoint.root))
        if target.root != checkpoint.root:
            return targets, Finding(
                checkpoint.size - 1,
                "root_mismatch",
                f"two signed checkpoints of size {checkpoint.size} disagree "
                f"({', '.join(target.sources)} vs {source}): the signing key is misused",
            )
        target.sources.append(source)
    return targets, None


def _claimed_size(note: bytes) -> int:
    """The size an unverifiable note claims (to name a seq in the failure), 0 if unreadable."""
    try:
        return _open(note, None).size
    except CheckpointError:
        return 0


def _open(note: bytes, verifier: Verifier | None) -> Checkpoint:
    if verifier is not None:
        return verifier.open_checkpoint(note)
    cut = note.rfind(b"\n\n")
    return parse_checkpoint(note[: cut + 1] if cut >= 0 else note)


def row_batches(engine: Engine, batch_size: int) -> Iterator[list[tuple[int, bytes, bytes, bytes]]]:
    """Raw DBAPI rows in seq order, ``batch_size`` at a time, from one consistent snapshot."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            raw = conn.connection.dbapi_connection
            assert raw is not None
            cursor = (
                raw.cursor(name="opsgate_ledger_verify")
                if engine.dialect.name == "postgresql"
                else raw.cursor()
            )
            try:
                with _any_text(raw):
                    cursor.execute(_ROWS_SQL)
                    while batch := cursor.fetchmany(batch_size):
                        yield batch  # type: ignore[misc]  # DBAPI rows are (int, bytes, bytes, bytes)
            finally:
                cursor.close()


@contextmanager
def _any_text(raw: Any) -> Iterator[None]:
    """While reading through ``raw`` (a DB-API connection): on SQLite, TEXT that is not valid
    UTF-8 (a hash or body rewritten as TEXT byte for byte) comes back as a ``str`` with
    surrogate escapes instead of failing the fetch, so verification reports it as a value of the
    wrong type (``bad_type``) rather than as an unreadable store. The ledger tables have no TEXT
    column the verifier reads, so nothing legitimate is decoded differently."""
    if not isinstance(raw, sqlite3.Connection):
        yield
        return
    previous = raw.text_factory
    raw.text_factory = _decode_any
    try:
        yield
    finally:
        raw.text_factory = previous


def _decode_any(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def format_summary(report: VerifyReport) -> str:
    """One line: ``OK entries=N head=SEQ hash=HEX checkpoints=C anchored=A unanchored=U
    warnings=W incomplete=I`` or ``FAIL seq=N reason=R: detail`` (``head=none hash=none`` for an
    empty ledger)."""
    if report.failure is not None:
        failure = report.failure
        return f"FAIL seq={failure.seq} reason={failure.reason}: {failure.detail}"
    head = "none" if report.head_seq is None else str(report.head_seq)
    digest = "none" if report.head_hash is None else report.head_hash.hex()
    return (
        f"OK entries={report.entries} head={head} hash={digest} "
        f"checkpoints={report.checkpoints} anchored={report.anchored_size} "
        f"unanchored={report.unanchored} "
        f"warnings={report.warning_count} incomplete={report.incomplete_intents}"
    )
