"""OpenTelemetry traces of governed calls, exported over OTLP/HTTP, and nothing when not configured.

:func:`configure` turns tracing on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set, unless ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none``; the OpenTelemetry SDK then reads the other standard ``OTEL_*``
variables itself (headers, timeout, compression, certificates, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``). Off, every helper here is a
check of one module variable: no span, no context, no attribute is built.

One trace per governed call (span names are low-cardinality):

- ``POST /v1/operations/{operation}`` (SERVER, :func:`request_span`), the child of an incoming W3C
  ``traceparent`` (https://www.w3.org/TR/trace-context/) when the request has one; a call made
  in-process (``opsgate run``) has ``govern {operation}`` (INTERNAL, :func:`call_span`) instead;
- one INTERNAL span per pipeline step, named after it (:func:`step`): ``authenticate``,
  ``authorize``, ``rate_limit``, ``validate``, ``minimise`` (privacy), ``take_tokens``, ``reserve``, ``ledger_intent``, ``route``,
  ``record`` (with ``meter`` inside), ``respond``;
- under ``route``, one CLIENT span per provider attempt, ``chat {model}`` (:func:`provider_call`),
  with the GenAI semantic-convention attributes (``gen_ai.operation.name``, ``gen_ai.system``,
  ``gen_ai.request.model``, ``gen_ai.request.max_tokens``, ``gen_ai.response.model``,
  ``gen_ai.response.finish_reasons``, ``gen_ai.usage.input_tokens`` (cached input included),
  ``gen_ai.usage.output_tokens``) and ``error.type`` (the provider error's kind) on failure.

What never goes on a span: prompt or answer text, email content, user ids or emails, keys, hosts.
Attributes are ids, model names, counts and codes, and every string value still passes
:func:`opsgate.security.sanitizer.sanitize`; exceptions are recorded as their stable code only
(``error.type``), never as a message or stack trace.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from opsgate.providers.base import Completion, CompletionRequest

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

GEN_AI_SYSTEM = {"anthropic": "anthropic", "deepseek": "deepseek", "gemini": "gcp.gemini"}
"""opsgate's provider names as ``gen_ai.system`` values (OpenTelemetry GenAI semantic conventions)."""

_provider: TracerProvider | None = None
_tracer: Tracer | None = None
_sanitize: Callable[[str], str] = str
_users = 0


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the standard variables ask for an OTLP trace export (see the module docstring)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def configure() -> bool:
    """Start the OTLP/HTTP exporter when :func:`wanted`; True when tracing is on. Counted: each
    call is paired with one :func:`shutdown` (several runtimes in one process share the exporter)."""
    global _provider, _tracer, _sanitize, _users
    if _tracer is None:
        if not wanted():
            return False
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from opsgate import __version__
        from opsgate.security.sanitizer import sanitize

        name = os.environ.get("OTEL_SERVICE_NAME") or "opsgate"
        _provider = TracerProvider(resource=Resource.create({"service.name": name, "service.version": __version__}))
        _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        _tracer = _provider.get_tracer("opsgate", __version__)
        _sanitize = sanitize
    _users += 1
    return True


def shutdown() -> None:
    """Release one :func:`configure`; the last one flushes pending spans and stops the exporter."""
    global _provider, _tracer, _users
    if _tracer is None:
        return
    _users -= 1
    if _users == 0 and _provider is not None:
        _provider.shutdown()
        _provider = _tracer = None


def enabled() -> bool:
    """True while spans are being exported."""
    return _tracer is not None


@contextmanager
def request_span(operation: str, request_id: str, headers: Mapping[str, str]) -> Iterator[None]:
    """The SERVER span of one ``POST /v1/operations/{operation}``, continuing the caller's trace
    when ``headers`` carry a valid W3C ``traceparent``. An escaping :class:`OpsgateError` marks it
    failed with its ``code`` as ``error.type`` and its HTTP status."""
    if _tracer is None:
        yield
        return
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    route = f"/v1/operations/{operation}"
    with _root(f"POST {route}", SpanKind.SERVER, TraceContextTextMapPropagator().extract(carrier=dict(headers)),
               {"http.request.method": "POST", "http.route": route}, operation, request_id, http=True):
        yield


@contextmanager
def call_span(operation: str, request_id: str) -> Iterator[None]:
    """The root span of one governed call made in-process, without HTTP (``opsgate run``):
    INTERNAL ``govern {operation}``, so its steps form one trace as a served call's do. An
    escaping :class:`OpsgateError` sets ``error.type`` to its ``code`` (an error status only
    for a 5xx one)."""
    if _tracer is None:
        yield
        return
    from opentelemetry.trace import SpanKind

    with _root(f"govern {operation}", SpanKind.INTERNAL, None, {}, operation, request_id, http=False):
        yield


@contextmanager
def _root(name: str, kind: Any, parent: Any, attributes: dict[str, Any], operation: str, request_id: str,
          http: bool) -> Iterator[None]:
    """A call's root span ``name`` of ``kind`` under ``parent`` (a context, or ``None``) with
    ``attributes``, the operation and the request id; ``http`` adds ``http.response.status_code``."""
    assert _tracer is not None
    with _tracer.start_as_current_span(name, context=parent, kind=kind, record_exception=False,
                                       set_status_on_exception=False) as span:
        _set(span, {**attributes, "opsgate.operation": operation, "opsgate.request_id": request_id})
        try:
            yield
        except Exception as exc:
            status = getattr(exc, "status", 500)
            _fail(span, getattr(exc, "code", "internal_error"), error=status >= 500)  # 4xx: unset (semconv)
            if http:
                _set(span, {"http.response.status_code": status})
            raise
        if http:
            _set(span, {"http.response.status_code": 200})


@contextmanager
def span(name: str) -> Iterator[None]:
    """An INTERNAL span ``name`` under the current one (a pipeline step); nothing when off."""
    if _tracer is None:
        yield
        return
    with _tracer.start_as_current_span(name, record_exception=False, set_status_on_exception=False) as current:
        try:
            yield
        except Exception as exc:
            _fail(current, getattr(exc, "code", "internal_error"))
            raise


def step(name: str) -> Callable[[F], F]:
    """Decorate a pipeline step (sync or async method) so that it runs in :func:`span` ``name``."""

    def decorate(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                if _tracer is None:
                    return await fn(*args, **kwargs)
                with span(name):
                    return await fn(*args, **kwargs)

            return cast(F, run_async)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            if _tracer is None:
                return fn(*args, **kwargs)
            with span(name):
                return fn(*args, **kwargs)

        return cast(F, run)

    return decorate


async def provider_call(
    provider: str, model: str, request: CompletionRequest, call: Awaitable[Completion]
) -> Completion:
    """Await ``call`` (one provider attempt) inside a CLIENT span ``chat {model}`` with the GenAI
    attributes; a :class:`~opsgate.providers.errors.ProviderError` sets ``error.type`` to its kind."""
    if _tracer is None:
        return await call
    from opentelemetry.trace import SpanKind

    with _tracer.start_as_current_span(f"chat {model}", kind=SpanKind.CLIENT, record_exception=False,
                                       set_status_on_exception=False) as current:
        _set(current, {"gen_ai.operation.name": "chat", "gen_ai.system": GEN_AI_SYSTEM.get(provider, provider),
                       "gen_ai.request.model": model, "gen_ai.request.max_tokens": request.max_tokens})
        try:
            completion = await call
        except BaseException as exc:
            _fail(current, getattr(exc, "kind", None) or type(exc).__name__)
            raise
        usage = completion.usage
        _set(current, {
            "gen_ai.response.model": completion.model,
            "gen_ai.response.finish_reasons": [completion.finish_reason.value],
            "gen_ai.usage.input_tokens": usage.input_tokens + usage.cache_write_tokens
            + usage.cache_write_1h_tokens + usage.cache_read_tokens,
            "gen_ai.usage.output_tokens": usage.output_tokens,
        })
        return completion


def _set(current: Span, attributes: Mapping[str, Any]) -> None:
    """Set ``attributes``, every string (and string in a list) through the sanitizer."""
    for key, value in attributes.items():
        if isinstance(value, str):
            value = _sanitize(value)
        elif isinstance(value, list):
            value = [_sanitize(v) if isinstance(v, str) else v for v in value]
        current.set_attribute(key, value)


def _fail(current: Span, error_type: str, *, error: bool = True) -> None:
    from opentelemetry.trace import Status, StatusCode

    error_type = _sanitize(str(error_type))
    current.set_attribute("error.type", error_type)
    if error:
        current.set_status(Status(StatusCode.ERROR, error_type))
