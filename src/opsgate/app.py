"""The FastAPI application: one route per operation, health probes, problem+json errors.

``POST /v1/operations/{operation}`` takes the operation's JSON input and answers::

    {"request_id", "operation", "output": {...}, "provider", "model", "attempts",
     "usage": {"input_tokens", "output_tokens", "cache_write_tokens", "cache_write_1h_tokens",
               "cache_read_tokens", "reasoning_tokens"},
     "cost_micro_usd", "latency_ms"}

Every error is an RFC 9457 problem (see :mod:`opsgate.problems`). Once the request limits counted
a call (step 3), its answer, result or problem, carries their ``RateLimit-Policy`` and
``RateLimit`` fields (:mod:`opsgate.metering.ratelimit`). OpenAPI at ``/docs``.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from opsgate import __version__, tracing
from opsgate.bodies import read_body
from opsgate.clock import Clock
from opsgate.config import Settings
from opsgate.deps import BEARER, RuntimeDep, get_runtime
from opsgate.errors import HTTPError, InvalidInput, MethodNotAllowed, NotFound, NotReady, OpsgateError
from opsgate.localserver import freeze_heap
from opsgate.metering.views import router as budgets_router
from opsgate.monitoring.prometheus import observe, observe_error
from opsgate.security.counts import count_refusal
from opsgate.monitoring.views import router as monitoring_router
from opsgate.operations import OPERATIONS
from opsgate.operations.base import Operation
from opsgate.pipeline import MAX_BODY_BYTES, RECORD_PENDING_HEADER, Call, Outcome
from opsgate.problems import as_opsgate_error, problem_response
from opsgate.responses import json_response
from opsgate.rollout.views import router as rollout_router
from opsgate.runtime import Runtime, start_runtime
from opsgate.security.auth import bearer_token
from opsgate.security.errors import KeyRingError
from opsgate.security.views import install as install_security
from opsgate.store.db import migrations_current
from opsgate.validation import field_errors
from opsgate.web.views import router as dashboard_router

REQUEST_IDS_PER_READ = 256
"""Request ids drawn from one ``os.urandom`` read (see :func:`new_request_id`)."""
_random_ids: list[bytes] = []


def new_request_id() -> str:
    """A new request id: a random UUID (RFC 9562 version 4) as 32 lowercase hex digits, what
    ``uuid.uuid4().hex`` gives. Its 16 random bytes come from ``os.urandom`` as uuid4's do,
    read :data:`REQUEST_IDS_PER_READ` ids at a time: a getrandom call costs ~10 µs on the
    request path of a loaded two-core host (issue 21), one per request before. Each id's bytes are
    used once; a forked child starts with none (``os.register_at_fork``), so worker processes
    never share an id. Safe from several threads (``list.pop`` is atomic)."""
    while True:
        try:
            return uuid.UUID(bytes=_random_ids.pop(), version=4).hex
        except IndexError:
            raw = os.urandom(16 * REQUEST_IDS_PER_READ)
            _random_ids.extend(raw[i:i + 16] for i in range(0, len(raw), 16))


os.register_at_fork(after_in_child=_random_ids.clear)


async def open_app(settings: Settings, clock: Clock | None = None) -> FastAPI:
    """The app with its runtime (database, ledger, providers) already open, for a server to start
    once start-up has succeeded (:mod:`opsgate.localserver`): what start-up raises -- a
    :class:`~opsgate.config.ConfigError` for a provider key reference that cannot be resolved, a
    database that refuses the connection -- propagates to the caller here instead of into the
    server's lifespan, where uvicorn logs it as a traceback. ``app.state.runtime`` is the open
    runtime; the app's lifespan shutdown closes it."""
    runtime = await start_runtime(settings, clock)
    try:
        return create_app(settings, clock, runtime)
    except BaseException:
        await runtime.close()
        raise


def create_app(settings: Settings | None = None, clock: Clock | None = None,
               runtime: Runtime | None = None, *, freeze: bool = False) -> FastAPI:
    """Build the app. The runtime (database, ledger, providers) opens in the lifespan, unless
    ``runtime`` is one already open for ``settings`` (:func:`open_app`); either way the lifespan
    shutdown closes it. ``freeze``: the lifespan freezes the heap once the runtime is open
    (:func:`opsgate.localserver.freeze_heap`; for a process that serves until it exits)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        opened = runtime or await start_runtime(settings, clock)
        app.state.runtime = opened
        if freeze:
            freeze_heap()
        try:
            yield
        finally:
            await opened.close()

    app = _App(
        title="opsgate",
        version=__version__,
        description="A governed gateway for an app's AI operations.",
        lifespan=lifespan,
    )
    _add_error_handlers(app)
    components: dict[str, Any] = {}
    for op in OPERATIONS.values():  # first: the hot routes are matched before every other
        # Served by OperationRoutes ahead of the middleware stack, and, for the requests it leaves
        # to the stack, by a plain Starlette route: FastAPI's request handler solves the (empty)
        # dependencies on every call, ~6 % of a governed call's event-loop time (py-spy, issue 21).
        # The APIRoute of the same path and endpoint below, never reached, documents it in OpenAPI.
        endpoint = app.operation_endpoints[f"/v1/operations/{op.id}"] = _operation_endpoint(op.id)
        app.router.add_route(f"/v1/operations/{op.id}", endpoint, methods=["POST"], name=op.id,
                             include_in_schema=False)
    for op in OPERATIONS.values():
        app.add_api_route(
            f"/v1/operations/{op.id}",
            _operation_endpoint(op.id),
            methods=["POST"],
            name=op.id,
            summary=(op.__doc__ or op.id).strip().splitlines()[0],
            tags=["operations"],
            openapi_extra=_openapi_for(op, components),
        )
    _add_probes(app)
    app.include_router(monitoring_router)
    app.include_router(budgets_router)
    install_security(app, settings)
    app.include_router(rollout_router)
    app.include_router(dashboard_router)
    app.openapi = _with_components(app, components)  # type: ignore[method-assign]  # FastAPI's documented override
    if runtime is not None:
        app.state.runtime = runtime
    return app


def create_served_app() -> FastAPI:
    """The app of one worker process of ``opsgate serve --workers N`` (uvicorn's factory, called
    with no arguments): :func:`create_app` with its heap frozen once its runtime is open."""
    return create_app(freeze=True)


Endpoint = Callable[[Request], Awaitable[Response]]


class _App(FastAPI):
    """The FastAPI application, its middleware stack entered through :class:`OperationRoutes`
    (``operation_endpoints``: path -> endpoint, filled by :func:`create_app`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.operation_endpoints: dict[str, Endpoint] = {}

    def build_middleware_stack(self) -> ASGIApp:
        return OperationRoutes(super().build_middleware_stack(), self, self.operation_endpoints)


class OperationRoutes:
    """ASGI: ``POST`` to a path of ``endpoints`` (the operations) served ahead of Starlette's
    middleware stack and router, which cost a governed call ~10 % of the event loop's samples
    (py-spy, issue 21): a dict lookup instead of the route scan, and none of the error, body
    limit and exit-stack middlewares' wrapping.

    What the stack gives those routes stays: the request passes the app's own middlewares
    (``app.user_middleware``, in the stack's order: security headers, CSRF for cookie sessions,
    CORS) around the endpoint, and an exception the endpoint raises becomes the response the stack
    would send, from the handler ``app.exception_handlers`` names for its class (nearest in its
    MRO); one only the ``Exception`` handler takes (the 500 problem) is raised again once that
    response is sent, as Starlette's ``ServerErrorMiddleware`` does, so the server logs it. Every
    other request, and every request while FastAPI's own telemetry wraps it (its middleware
    records exceptions), goes to ``stack``.
    """

    def __init__(self, stack: ASGIApp, app: FastAPI, endpoints: Mapping[str, Endpoint]) -> None:
        self._stack = stack
        self._endpoints = endpoints
        self._handlers = app.exception_handlers
        served: ASGIApp = self._serve
        for cls, args, kwargs in reversed(app.user_middleware):
            served = cls(served, *args, **kwargs)
        self._served = served

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self._endpoints
                and not scope.get("root_path") and "fastapi.telemetry" not in scope):
            await self._served(scope, receive, send)
        else:
            await self._stack(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await self._endpoints[scope["path"]](request)
        except Exception as exc:
            handler = next(self._handlers[c] for c in type(exc).__mro__ if c in self._handlers)
            answer = handler(request, exc)
            await (await answer if inspect.isawaitable(answer) else answer)(scope, receive, send)
            if handler is self._handlers[Exception]:
                raise
            return
        await response(scope, receive, send)


def _operation_endpoint(op_id: str) -> Endpoint:
    """The route of ``op_id``. It takes no dependencies: the pipeline authenticates (step 1) and
    the runtime is read directly, so FastAPI solves nothing and hops to no thread per call."""

    async def endpoint(request: Request) -> Response:
        runtime = get_runtime(request)
        request_id = request.state.request_id = new_request_id()
        started = time.perf_counter()
        call = Call(op_id, b"", "", request_id, request.headers.get("content-type"),  # the pipeline fills
                    cancel=ClientDisconnect(request))
        with tracing.request_span(op_id, request_id, request.headers):  # its headers and variant
            try:
                call.body = await read_body(request, MAX_BODY_BYTES)
                call.token = bearer_token(request.headers.get("authorization"))
                outcome = await runtime.gateway.govern(call)
            except Exception as exc:
                known = as_opsgate_error(exc) or OpsgateError()
                code, status = known.code, known.status
                observe_error(op_id, code, status, (time.perf_counter() - started) * 1000,
                              runtime.toggles.variant(op_id, call.variant))
                count_refusal(exc)
                request.state.response_headers = call.response_headers  # for the problem's exception handler
                raise
            observe(outcome, runtime.toggles.variant(op_id, call.variant))
            with tracing.span("respond"):
                headers = {"X-Request-ID": request_id, **call.response_headers}
                if not outcome.recorded:  # served and billed; its result is pending (see docs/ledger.md)
                    headers[RECORD_PENDING_HEADER] = "pending"
                return json_response(_outcome_body(outcome), headers=headers)

    endpoint.__name__ = "operation_" + op_id.replace("-", "_")
    return endpoint


class ClientDisconnect:
    """The router's :class:`~opsgate.routing.router.Cancel` for one HTTP request: whether its
    client closed the connection (ASGI ``http.disconnect``; the ASGI spec's HTTP ``receive``
    returns it once the body was read and the client went away).

    Nothing is read from the connection until the router asks, which it does only before a
    retry, a fallback or a repair and during a retry's wait: a call whose first request
    succeeds costs this object's creation and nothing else (issue 21). :meth:`gone` is
    Starlette's ``Request.is_disconnected`` (a ``receive`` that does not wait); :meth:`wait_gone`
    awaits ``receive`` until ``http.disconnect``. Both only once the body has been read."""

    __slots__ = ("_request", "_gone")

    def __init__(self, request: Request) -> None:
        self._request = request
        self._gone = False

    async def gone(self) -> bool:
        """Whether the client has disconnected (answers without waiting; stays ``True``)."""
        if not self._gone:
            self._gone = await self._request.is_disconnected()
        return self._gone

    async def wait_gone(self) -> None:
        """Return once the client has disconnected (never, while it stays connected)."""
        while not self._gone:
            message = await self._request.receive()
            self._gone = message.get("type") == "http.disconnect"


def _outcome_body(outcome: Outcome) -> dict[str, Any]:
    return {
        "request_id": outcome.request_id,
        "operation": outcome.operation,
        "output": outcome.output,
        "provider": outcome.provider,
        "model": outcome.model,
        "served_model": outcome.served_model,
        "attempts": outcome.attempts,
        "degraded": outcome.degraded,
        "usage": outcome.usage.as_dict(),
        "cost_micro_usd": outcome.cost_micro_usd,
        "latency_ms": round(outcome.latency_ms, 3),
        "privacy": outcome.privacy,
    }


def _add_probes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["probes"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"],
             summary="Readiness: database reachable and taking writes, migrations current, the master key "
                     "unwraps the key ring")
    async def readyz(request: Request, runtime: RuntimeDep) -> Response:
        request.state.request_id = new_request_id()
        if not runtime.gateway.storage_ready():  # two attributes: no write, no read per probe
            pending = runtime.gateway.pending_results
            return problem_response(NotReady(f"The database refuses writes; {pending} call result(s) "
                                             "are waiting to be recorded"), request.state.request_id)
        try:
            current = await asyncio.to_thread(migrations_current, runtime.engine)
        except Exception:
            return problem_response(NotReady("The database is not reachable"), request.state.request_id)
        if not current:
            return problem_response(NotReady("Database migrations are not current"), request.state.request_id)
        try:
            await asyncio.to_thread(runtime.security.keyring.check)
        except KeyRingError as exc:
            return problem_response(NotReady(exc.detail), request.state.request_id)
        return json_response({"status": "ready"})


def _add_error_handlers(app: FastAPI) -> None:
    def problem(exc: BaseException, request: Request) -> Response:
        """The problem response with the request's id and the header fields its call earned."""
        request_id = getattr(request.state, "request_id", None) or new_request_id()
        return problem_response(exc, request_id, getattr(request.state, "response_headers", None))

    @app.exception_handler(OpsgateError)
    async def opsgate_error(request: Request, exc: OpsgateError) -> Response:
        return problem(exc, request)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        """The one validation handler (FastAPI's default, which echoes the input, is replaced)."""
        errors = field_errors(exc.errors(), _declared_names(request))
        error = InvalidInput("The request does not match the expected shape", errors=errors)
        return problem(error, request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return problem(_http_problem(exc.status_code), request)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        return problem(exc, request)


def _declared_names(request: Request) -> frozenset[str]:
    """What a FastAPI validation error's ``loc`` may name: the parameter sources (``path``,
    ``query``, ...) and the names of the parameters the matched route and its dependencies
    declare."""
    names = {"path", "query", "header", "cookie", "body"}
    dependant = getattr(request.scope.get("route"), "dependant", None)
    pending = [dependant] if dependant is not None else []
    while pending:
        d = pending.pop()
        params = (*d.path_params, *d.query_params, *d.header_params, *d.cookie_params, *d.body_params)
        names.update(p.alias for p in params)
        pending.extend(d.dependencies)
    return frozenset(names)


def _http_problem(status: int) -> OpsgateError:
    """The catalogue's error for a status the web framework raised (an unknown route or method)."""
    if status == 404:
        return NotFound("No such route")
    if status == 405:
        return MethodNotAllowed()
    return HTTPError(status)


_COUNTS = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1}}
_PRIVACY_SCHEMA = {
    "type": "object",
    "description": "What the minimise step did (docs/privacy.md): secrets masked and people "
    "pseudonymised per kind, and pseudonyms in the answer that the call never handed out.",
    "properties": {
        "masked": _COUNTS,
        "pseudonymised": _COUNTS,
        "unresolved_pseudonyms": {"type": "array", "items": {"type": "string"}},
    },
}


def _openapi_for(op: Operation, components: dict[str, Any]) -> dict[str, Any]:
    """Request and response schemas for one operation, with shared ``$defs`` hoisted to components."""
    ref = "#/components/schemas/{model}"
    input_schema = op.Input.model_json_schema(ref_template=ref)
    output_schema = op.Output.model_json_schema(ref_template=ref)
    components.update(input_schema.pop("$defs", {}))
    components.update(output_schema.pop("$defs", {}))
    return {
        "security": [{BEARER: ["user"]}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": input_schema}}},
        "responses": {
            "200": {
                "description": "The operation's validated output, provider, usage and cost",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "output": output_schema,
                                "cost_micro_usd": {"type": "integer"},
                                "privacy": _PRIVACY_SCHEMA,
                            },
                        }
                    }
                },
            },
            "default": {
                "description": "RFC 9457 problem details",
                "content": {"application/problem+json": {"schema": {"type": "object"}}},
            },
        },
    }


def _with_components(app: FastAPI, components: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
        return app.openapi_schema  # type: ignore[return-value]  # set by original() above

    return openapi
