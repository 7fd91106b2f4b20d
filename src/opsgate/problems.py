"""RFC 9457 problem details: every error response the API sends.

Body: ``{"type", "title", "status", "detail", "code", "request_id"}`` plus ``errors`` (field
locations and messages, never values) for ``invalid_input``. Served as ``application/problem+json``.
Only an :class:`OpsgateError`'s ``detail`` reaches a client; anything else becomes a bare
``internal_error`` with no exception text, host, key or stack trace (the redacted traceback goes to
the server log only).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response

from sqlalchemy.exc import OperationalError

from opsgate.errors import DatabaseUnavailable, InvalidInput, OpsgateError
from opsgate.security.sanitizer import sanitize_obj

PROBLEM_TYPE_BASE = "https://opsgate.dev/problems/"
log = logging.getLogger("opsgate.api")


def as_opsgate_error(exc: BaseException) -> OpsgateError | None:
    """``exc`` as the catalogue's error: itself for an :class:`OpsgateError`,
    :class:`DatabaseUnavailable` for the database driver's ``OperationalError`` (the database did
    not answer), None for anything unexpected."""
    if isinstance(exc, OpsgateError):
        return exc
    if isinstance(exc, OperationalError):
        return DatabaseUnavailable("The database did not answer; retry shortly")
    return None


def problem_body(exc: BaseException, request_id: str) -> tuple[int, dict[str, Any]]:
    """The status and problem document for ``exc``; unexpected exceptions are logged, not shown.

    The log line (ERROR, logger ``opsgate.api``) names the request and the exception type and
    carries the traceback (``exc_info``), which the logging set-up redacts like every record
    (:mod:`opsgate.security.logging`): an operator can find the failing line, no secret in the
    exception's message reaches the log."""
    known = as_opsgate_error(exc)
    if known is None:
        log.error("unhandled error in request %s: %s", request_id, type(exc).__name__, exc_info=exc)
        known = OpsgateError()
    exc = known
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + exc.code,
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
        "code": exc.code,
        "request_id": request_id,
    }
    if isinstance(exc, InvalidInput) and exc.errors:
        body["errors"] = exc.errors
    return exc.status, sanitize_obj(body)


def problem_response(
    exc: BaseException, request_id: str, fields: Mapping[str, str] | None = None
) -> Response:
    """An ``application/problem+json`` response for ``exc`` with ``X-Request-ID``, the header
    ``fields`` the call earned before it failed (e.g. the ``RateLimit`` fields of a counted
    request), ``Retry-After`` in whole seconds when the error carries ``retry_after``, and the
    error's own ``response_headers`` when it has them (they win: e.g. a request limit's refusal)."""
    status, body = problem_body(exc, request_id)
    headers = {"X-Request-ID": request_id, **(fields or {})}
    known = as_opsgate_error(exc)
    retry_after = getattr(known, "retry_after", None)
    if status in (429, 503) and retry_after:
        headers["Retry-After"] = str(max(1, round(retry_after)))
    headers.update(getattr(known, "response_headers", {}))
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/problem+json", headers=headers
    )
