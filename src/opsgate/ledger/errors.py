"""The ledger's exceptions.

- :class:`LedgerError` — a caller asked for something the ledger format forbids (a float in a
  payload, a reserved key, a naive timestamp) or a stored body could not be decoded. A bug, not an
  outage: HTTP 500.
- :class:`LedgerUnavailable` — an append could not be made durable (the transaction failed, the
  ledger is closed). The pipeline refuses the operation: code ``audit_unavailable``, HTTP 503.
- :class:`LedgerRolledBack` — an anchor outside the database holds a checkpoint larger than the
  log (the database was restored from an older backup); no checkpoint is signed until an
  operator runs ``opsgate ledger accept-rollback``.
- :class:`LedgerIOError` — the ledger could not be *read* (missing table, unreachable database).
  The CLI maps it to exit status 2, distinct from tampering (exit 1).
- :class:`StoredValueError` — a stored ledger column holds a value of another type or shape than
  the schema's (SQLite keeps any type in any column): tampering, reported, never a crash.
- :class:`ResultClosed` — a ``result`` append refused because the call already has one (its
  ``ai_operation_log`` row, or a recovery's ``ledger_recoveries`` row): the refusal that makes a
  late result write and ``opsgate ledger recover`` idempotent per intent. Never reaches HTTP.
"""

from __future__ import annotations

from opsgate.errors import OpsgateError


class LedgerError(OpsgateError):
    """Invalid ledger input or an undecodable stored body."""

    code = "ledger_error"
    status = 500
    title = "Ledger error"


class LedgerUnavailable(LedgerError):
    """The audit ledger could not record an entry; nothing from the failed batch was written."""

    code = "audit_unavailable"
    status = 503
    title = "The audit ledger is unavailable"


class LedgerIOError(LedgerUnavailable):
    """The ledger store could not be read (configuration or I/O failure, not tampering)."""

    title = "The audit ledger could not be read"


class CheckpointError(LedgerError):
    """A malformed key, checkpoint or note, or a signature that does not verify."""

    code = "ledger_checkpoint_invalid"
    title = "Invalid ledger checkpoint"


class AnchorError(LedgerError):
    """An anchor could not be written or read (I/O, HTTP, or a conflicting existing copy)."""

    code = "ledger_anchor_failed"
    status = 503
    title = "Ledger anchor failed"


class ProofError(LedgerError):
    """A proof that does not verify, or one asked for with impossible sizes or indexes."""

    code = "ledger_proof_invalid"
    status = 422
    title = "Invalid ledger proof"


class LedgerRolledBack(LedgerError):
    """The log is behind an anchor: ``anchored_size`` entries were anchored, ``log_size`` remain."""

    def __init__(self, detail: str, *, anchored_size: int, log_size: int) -> None:
        super().__init__(detail)
        self.anchored_size = anchored_size
        self.log_size = log_size


class StoredValueError(LedgerError):
    """A stored ledger column holds a value of another type or shape than the schema's (TEXT in a
    BLOB column, a NULL, a negative size): the database was written around the application.
    ``detail`` names the table, the row and the column."""

    code = "ledger_tampered"
    title = "Ledger value of the wrong type"


class ResultClosed(LedgerError):
    """A ``result`` append refused inside its transaction because the call's intent is already
    closed: ``by`` is ``"recorded"`` (the call's ``ai_operation_log`` row exists: its result was
    written, perhaps by a commit whose acknowledgement was lost) or ``"recovered"`` (``opsgate
    ledger recover`` closed it as ``interrupted``). Nothing of the refused append is written."""

    code = "ledger_result_closed"
    status = 409
    title = "The call's result is already recorded"

    def __init__(self, request_id: str, by: str) -> None:
        super().__init__(f"the result of {request_id} is already {by}")
        self.request_id = request_id
        self.by = by
