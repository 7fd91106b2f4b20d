"""The root of every domain's exception hierarchy, and the catalogue of every error.

Each domain package subclasses :class:`OpsgateError` in its own ``errors.py`` (nowhere else). The
API turns any of them into an RFC 9457 problem+json response with the class's stable ``code`` and
HTTP ``status``; ``detail`` is the only free text a client sees, so it must never hold a key, a
host, a provider's raw error body or a stack trace. Anything that is not an OpsgateError becomes
a bare 500 ``internal_error``. The tree (``tests/test_error_catalogue.py`` keeps it, and the
table in docs/architecture.md, equal to the classes)::

    class                             code                      status module
    OpsgateError                      internal_error            500  errors
    ├── DatabaseUnavailable           database_unavailable      503  errors
    ├── HTTPError                     http_error                400  errors
    ├── ContentTooLarge               content_too_large         413  errors
    ├── InvalidInput                  invalid_input             422  errors
    ├── MethodNotAllowed              method_not_allowed        405  errors
    ├── NotFound                      not_found                 404  errors
    │   ├── RolloutNotFound           not_found                 404  rollout.errors
    │   └── VariantNotFound           not_found                 404  rollout.errors
    ├── NotReady                      not_ready                 503  errors
    ├── UnsupportedMediaType          unsupported_media_type    415  errors
    ├── LedgerError                   ledger_error              500  ledger.errors
    │   ├── AnchorError               ledger_anchor_failed      503  ledger.errors
    │   ├── CheckpointError           ledger_checkpoint_invalid 500  ledger.errors
    │   ├── LedgerRolledBack          ledger_error              500  ledger.errors
    │   ├── LedgerUnavailable         audit_unavailable         503  ledger.errors
    │   │   └── LedgerIOError         audit_unavailable         503  ledger.errors
    │   ├── ProofError                ledger_proof_invalid      422  ledger.errors
    │   ├── ResultClosed              ledger_result_closed      409  ledger.errors
    │   └── StoredValueError          ledger_tampered           500  ledger.errors
    ├── BudgetConflict                budget_conflict           409  metering.errors
    ├── BudgetExceeded                budget_exceeded           402  metering.errors
    ├── BudgetUnavailable             budget_unavailable        503  metering.errors
    ├── PriceTableError               price_table_invalid       500  metering.errors
    ├── RateLimitExceeded             rate_limited              429  metering.errors
    ├── UnknownModelPrice             unknown_model_price       500  metering.errors
    ├── IncidentConflict              incident_conflict         409  monitoring.errors
    ├── ProviderError                 provider_unavailable      503  providers.errors
    │   ├── InvalidModelOutput        provider_bad_response     502  operations.errors
    │   ├── AuthenticationFailed      provider_unavailable      503  providers.errors
    │   ├── BillingFailed             provider_unavailable      503  providers.errors
    │   ├── ConnectionFailed          provider_unavailable      503  providers.errors
    │   ├── ContentFiltered           content_filtered          422  providers.errors
    │   ├── ContextLengthExceeded     input_too_large           413  providers.errors
    │   │   ├── ContextWindowTooSmall input_too_large           413  routing.errors
    │   │   └── InputTooLarge         input_too_large           413  routing.errors
    │   ├── EmptyAnswer               provider_bad_response     502  providers.errors
    │   ├── IncompleteAnswer          provider_bad_response     502  providers.errors
    │   ├── InvalidRequest            provider_rejected         502  providers.errors
    │   ├── MalformedResponse         provider_bad_response     502  providers.errors
    │   ├── ModelUnavailable          model_unavailable         503  providers.errors
    │   ├── Overloaded                provider_unavailable      503  providers.errors
    │   ├── ProviderTimeout           provider_unavailable      503  providers.errors
    │   ├── RateLimited               provider_unavailable      503  providers.errors
    │   ├── ServerError               provider_unavailable      503  providers.errors
    │   ├── SpendCapReached           provider_unavailable      503  providers.errors
    │   ├── AllProvidersFailed        provider_unavailable      503  routing.errors
    │   │   └── NoUsableAnswer        provider_bad_response     502  routing.errors
    │   ├── CircuitOpen               provider_unavailable      503  routing.errors
    │   ├── DeadlineExceeded          provider_unavailable      503  routing.errors
    │   └── ProviderNotConfigured     provider_unavailable      503  routing.errors
    ├── ClientClosed                  client_closed             499  routing.errors
    ├── InvalidPlan                   invalid_input             422  rollout.errors
    ├── OperationDisabled             operation_disabled        403  rollout.errors
    ├── RolloutConflict               rollout_conflict          409  rollout.errors
    ├── BackupError                   backup_failed             500  security.errors
    ├── DecryptionFailed              decryption_failed         500  security.errors
    ├── Forbidden                     forbidden                 403  security.errors
    │   └── CSRFFailed                csrf_failed               403  security.errors
    ├── KeyRingError                  key_ring_error            503  security.errors
    ├── SecretNotFound                secret_not_found          500  security.errors
    ├── SecretUnavailable             secret_unavailable        503  security.errors
    └── Unauthorized                  unauthorized              401  security.errors

``HTTPError`` carries the status the web framework raised (400 is its default). A code names one
status wherever it is used; several classes may share a code (the router tells provider failures
apart by class, a client by code).
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


class UnsupportedMediaType(OpsgateError):
    """A request body whose ``Content-Type`` the route does not read, e.g. ``text/plain`` sent to a
    JSON route, or whose ``Content-Encoding`` is not ``identity`` (415, RFC 9110 §15.5.16).
    ``response_headers`` go on the problem response (``Accept-Encoding`` for a content coding,
    as §15.5.16 asks)."""

    code = "unsupported_media_type"
    status = 415
    title = "Unsupported media type"

    def __init__(self, detail: str | None = None, response_headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.response_headers = response_headers or {}


class ContentTooLarge(OpsgateError):
    """A request body larger than the route reads; refused before it is read to the end (413,
    RFC 9110 §15.5.14)."""

    code = "content_too_large"
    status = 413
    title = "Content too large"


class NotFound(OpsgateError):
    """The named resource (e.g. an operation id) does not exist (404)."""

    code = "not_found"
    status = 404
    title = "Not found"


class NotReady(OpsgateError):
    """Readiness probe: the database is unreachable, its migrations are not current, or the master
    key does not unwrap the key ring (503)."""

    code = "not_ready"
    status = 503
    title = "Not ready"


class DatabaseUnavailable(OpsgateError):
    """The database did not answer a request's query: a restart, a failover, a lost connection
    (503, ``Retry-After: 1``). The API maps the driver's ``OperationalError`` to it wherever it is
    raised, so a database outage reads as one, never as ``internal_error``."""

    code = "database_unavailable"
    status = 503
    title = "Database unavailable"
    retry_after = 1.0


class MethodNotAllowed(OpsgateError):
    """The route exists but not for this HTTP method (405, RFC 9110 §15.5.6)."""

    code = "method_not_allowed"
    status = 405
    title = "Method not allowed"


class HTTPError(OpsgateError):
    """Any other status the web framework raised before a route ran; ``status`` is that status
    (400 when built without one)."""

    code = "http_error"
    status = 400
    title = "HTTP error"

    def __init__(self, status: int = 400) -> None:
        super().__init__()
        self.status = status
