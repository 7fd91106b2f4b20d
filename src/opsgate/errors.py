"""The root of every domain's exception hierarchy.

Each domain package (providers, routing, ledger, security, operations, ...) subclasses
:class:`OpsgateError`. The API turns any of them into an RFC 9457 problem+json response with the
class's stable ``code`` and HTTP ``status``; ``detail`` is the only free text a client sees, so it
must never hold a key, a host, a provider's raw error body or a stack trace.
"""

from __future__ import annotations


class OpsgateError(Exception):
    """Base class. ``code`` is a stable machine-readable string, ``status`` an HTTP status."""

    code: str = "internal_error"
    status: int = 500
    title: str = "Internal error"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title


class InvalidInput(OpsgateError):
    """The request body failed validation (422). ``errors`` lists ``{"loc", "msg"}`` without values."""

    code = "invalid_input"
    status = 422
    title = "Invalid input"

    def __init__(self, detail: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(detail)
        self.errors = errors or []


class NotFound(OpsgateError):
    """The named resource (e.g. an operation id) does not exist (404)."""

    code = "not_found"
    status = 404
    title = "Not found"
