"""The ledger's exceptions.

- :class:`LedgerError` — a caller asked for something the ledger format forbids (a float in a
  payload, a reserved key, a naive timestamp) or a stored body could not be decoded. A bug, not an
  outage: HTTP 500.
- :class:`LedgerUnavailable` — an append could not be made durable (the transaction failed, the
  ledger is closed). The pipeline refuses the operation: code ``audit_unavailable``, HTTP 503.
- :class:`LedgerIOError` — the ledger could not be *read* (missing table, unreachable database).
  The CLI maps it to exit status 2, distinct from tampering (exit 1).
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
