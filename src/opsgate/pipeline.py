"""The path of one governed AI operation, step by step (see docs/architecture.md).

:meth:`Gateway.govern` reads top to bottom like the ten steps of the design:

  1 authenticate   JWT access token                       -> Principal          401
  2 authorize      feature toggle for (operation, user)   -> Operation          403/404
                   and the variant (route + prompt version) serving the user
  3 rate limit     (user) and (user, operation); a counted call's answer,       429
                   whatever it is, carries the RateLimit header fields
  4 validate       the operation's input schema           -> Prepared           422
    minimise       secrets -> placeholders, personal data -> pseudonyms (what is really sent)
  5 reserve        worst-case tokens against token limits (429), the worst case of the
                   first request at the first target's price against budgets    402
                   (input bounded by the prompt's bytes; when that does not fit, by
                   the first target's exact token count, if its provider counts; or,
                   where the budgets without room are ``cheaper``, at the first
                   further target whose worst case fits: the call is degraded)
  6 ledger intent  durable before any provider call, one transaction with 5     503
  7 route          provider chain with retries, breaker, fallback; JSON repair. Each
                   further request first extends the reservation, in a ledger
                   ``extend`` entry, or stops the call                          402
  8 meter          every request the provider may have billed: reported usage ->
                   micro-USD at the served model's price, unknown usage -> that
                   request's worst case (flagged)
  9 record         ledger result entry + ai_operation_log row (one CallRecord) + one
                  ai_operation_attempts row per billed request + settlement, in one transaction;
                  when the store refuses it, retried (short back-off), then kept pending in the
                  process and written by a background retry once the store is back: the answer,
                  served and billed, still goes out (``Outcome.recorded`` False)
 10 respond        the API layer turns the Outcome or the OpsgateError into HTTP

Each step runs in its own OpenTelemetry span when tracing is configured (:mod:`opsgate.tracing`).
Steps 2, 3 and 5 are delegated to the rollout (toggles) and metering (rate limits, budgets)
domains; without them (``toggles=None``, ``metering=None``) those steps admit every call.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from opsgate import bodies
from opsgate.bodies import JSON
from opsgate.clock import Clock
from opsgate.errors import ContentTooLarge, OpsgateError
from opsgate.ledger.errors import LedgerUnavailable, ResultClosed
from opsgate.ledger.recovery import RECORDED, unless_closed
from opsgate.ledger.writer import AppendedEntry, InTransaction, Ledger
from opsgate.metering.attempts import ESTIMATED, INTERRUPTED, REPORTED, AttemptCharge, billing
from opsgate.metering.cost import cost_micro_usd
from opsgate.metering.counting import CountOutcome, count_input
from opsgate.metering.errors import BudgetExceeded
from opsgate.metering.models import ai_operation_attempts
from opsgate.metering.prices import PRICE_FIELDS, ModelPrice, PriceBook, ResolvedPrice
from opsgate.metering.reservations import Reservation
from opsgate.metering.service import MeteringService
from opsgate.metering.tokenlimits import TokenHold
from opsgate.metering.worstcase import attempt_worst_case_micro_usd
from opsgate.operations import get_operation
from opsgate.operations.base import Operation, Prepared, prepare_input
from opsgate.operations.errors import InvalidModelOutput
from opsgate.operations.privacy import CallPrivacy, PrivacyPolicy
from opsgate.operations.repair import repair_request
from opsgate.providers.base import Completion, CompletionRequest, FinishReason, Usage
from opsgate.providers.errors import IncompleteAnswer, ProviderError
from opsgate.rollout.models import shadow_calls
from opsgate.rollout.shadow import ERROR as SHADOW_ERROR
from opsgate.rollout.shadow import OK as SHADOW_OK
from opsgate.rollout.shadow import REFUSED, agrees
from opsgate.rollout.toggles import ToggleSnapshot
from opsgate.rollout.variants import DEFAULT_VARIANT, Variant, VariantBook, default_book
from opsgate.routing.policy import RoutePolicy, Target
from opsgate.routing.errors import ClientClosed
from opsgate.routing.router import CALLER, Admit, Attempt, Cancel, Router
from opsgate.routing.served import MODEL_UNAVAILABLE, ModelWatch, substituted
from opsgate.security.auth import Principal, TokenService
from opsgate.store.models import ai_operation_log
from opsgate.tracing import step
from opsgate.validation import invalid_input

MAX_BODY_BYTES = 2 * 1024 * 1024
COUNT_TIMEOUT_S = 2.0
"""Default wait for a provider's token count (``OPSGATE_TOKEN_COUNT_TIMEOUT_S``)."""
SERVED_MODEL_UNPRICED = "served_model_unpriced"
SHADOW_DRAIN_S = 5.0
"""How long shutdown waits for shadow calls in flight before cancelling them."""
RECORD_RETRY_DELAYS_S: tuple[float, ...] = (0.05, 0.25, 1.0)
"""Step 9's waits, in seconds, before each further try of a result write the store refused,
within the call (1.3 s at most): a PostgreSQL restart or a lost connection often passes in that."""
PENDING_RETRY_S = 2.0
"""How often, in seconds, the background retry tries the results still pending."""
RECORD_PENDING_HEADER = "Opsgate-Record"
"""The response header field (value ``pending``) of an answer whose result is not recorded yet."""
PREPARE_THREADS = 4
"""The worker threads of :meth:`Gateway.prepare` (one pool per gateway, its own): requests whose
input is prepared off the event loop wait for one of these, never for the loop's default
executor, which token refreshes, admin routes, /metrics and ledger checkpoints share (six
threads on a two-core machine) and a few slow parses would otherwise fill. Parsing is CPU work
under the GIL, so more threads would not prepare more at once."""

log = logging.getLogger("opsgate.pipeline")


@dataclass(slots=True)
class Call:
    """One incoming operation call: the operation id, the raw JSON body, the bearer token (the
    API layer takes it from the ``Authorization`` header, RFC 6750 §2.1), the request id and the
    body's ``Content-Type`` (step 4 refuses one that is not JSON, 415). ``response_headers``
    (field name -> value) is filled as the call goes: once step 3 counted it, the RateLimit
    fields; the API layer sends them with the answer, a result or any later refusal.
    ``variant`` is the name of the variant chosen to serve it (None before step 2 chose one),
    for the API layer's metrics label. ``cancel`` (the API layer's
    :class:`~opsgate.app.ClientDisconnect`; ``None`` in process, e.g. ``opsgate run``) tells
    step 7 that the client went away: no further provider request, retry, fallback or repair
    starts, and the call is recorded ``client_closed`` (:class:`~opsgate.routing.router.Cancel`)."""

    operation: str
    body: bytes
    token: str
    request_id: str
    content_type: str | None = JSON
    response_headers: dict[str, str] = field(default_factory=dict)
    variant: str | None = None
    cancel: Cancel | None = None


@dataclass(slots=True)
class Outcome:
    """A successful operation: the validated output plus what it cost and where it ran:
    ``provider`` and ``model`` the target asked (the route's), ``served_model`` the model the
    provider said answered (``model`` when it named none), whose price ``cost_micro_usd`` is."""

    request_id: str
    operation: str
    output: dict[str, Any]
    provider: str
    model: str
    usage: Usage
    cost_micro_usd: int
    latency_ms: float
    attempts: int
    privacy: dict[str, Any] = field(default_factory=dict)
    degraded: bool = False
    recorded: bool = True
    """False when the result could not be written yet: it is pending in the process
    (:meth:`Gateway.flush_pending`), its intent durable and its reservation still held."""
    served_model: str | None = None


@dataclass(frozen=True, slots=True)
class CallRecord:
    """What step 9 records about one call, succeeded (``status="ok"``) or failed (``"error"``
    with its stable ``error_code``). The ``ai_operation_log`` row and the ledger ``result``
    payload are two views of this one value, so they cannot disagree. Money in integer
    micro-USD, latencies in milliseconds (``latency_ms`` on the injected Clock's ``monotonic``, so a
    rehearsal's simulated clock decides it; ``provider_latency_ms`` the HTTP exchanges' wall time),
    ``created_at`` tz-aware UTC from the injected Clock;
    ``variant`` served the call, ``repaired`` says its answer needed the schema repair request,
    ``shadow`` marks a shadow call (:meth:`Gateway.shadow`), ``degraded`` a call a ``cheaper``
    budget sent past its chain's first target. ``finish_reason`` is why the last answer's
    generation stopped (:class:`~opsgate.providers.base.FinishReason` value: ``stop``,
    ``tool_use``, ... for a used answer; ``length``, ``pause`` or ``context_exceeded`` for a
    call that failed on a cut-off answer), ``None`` when no answer arrived."""

    request_id: str
    user_id: str
    operation: str
    intent_seq: int
    status: str
    error_code: str | None
    provider: str | None
    model: str | None
    served_model: str | None
    attempts: int
    latency_ms: float
    provider_latency_ms: float | None
    usage: Usage
    cost_micro_usd: int
    created_at: datetime
    price: ResolvedPrice | None = None
    price_flag: str | None = None
    variant: str | None = None
    repaired: bool = False
    shadow: bool = False
    degraded: bool = False
    finish_reason: str | None = None

    @property
    def cache_write_tokens(self) -> int:
        """Input written to either cache (5-minute and 1-hour writes share one column)."""
        return self.usage.cache_write_tokens + self.usage.cache_write_1h_tokens

    def log_row(self) -> dict[str, Any]:
        """The ``ai_operation_log`` row."""
        return {
            "request_id": self.request_id,
            "user_id": self.user_id,
            "operation": self.operation,
            "provider": self.provider,
            "model": self.model,
            "served_model": self.served_model,
            "variant": self.variant,
            "repaired": self.repaired,
            "shadow": self.shadow,
            "degraded": self.degraded,
            "status": self.status,
            "error_code": self.error_code,
            "attempts": self.attempts,
            "latency_ms": self.latency_ms,
            "provider_latency_ms": self.provider_latency_ms,
            "input_tokens": self.usage.input_tokens,
            "output_tokens": self.usage.output_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "cache_read_tokens": self.usage.cache_read_tokens,
            "reasoning_tokens": self.usage.reasoning_tokens,
            "cost_micro_usd": self.cost_micro_usd,
            "created_at": self.created_at,
        }

    def ledger_payload(self) -> dict[str, Any]:
        """The payload of the ledger ``result`` entry (no user id, no latencies: those stay in
        the log row; ``intent_seq`` links it to its intent). It names the price's source and
        version, so the call can be re-priced later, ``price_flag`` when there is one,
        ``degraded: true`` when the call was degraded, and the last answer's ``finish_reason``
        (a truncated answer is never a success, so ``ok`` never comes with ``length``)."""
        flag: dict[str, Any] = {"price_flag": self.price_flag} if self.price_flag else {}
        flag |= {"shadow": True} if self.shadow else {}
        flag |= {"degraded": True} if self.degraded else {}
        return {**flag,
            "request_id": self.request_id,
            "intent_seq": self.intent_seq,
            "status": self.status,
            "error_code": self.error_code,
            "provider": self.provider,
            "model": self.model,
            "served_model": self.served_model,
            "input_tokens": self.usage.input_tokens,
            "output_tokens": self.usage.output_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "cache_read_tokens": self.usage.cache_read_tokens,
            "cost_micro_usd": self.cost_micro_usd,
            "price_source": self.price.source if self.price else None,
            "price_version": self.price.version if self.price else None,
            "finish_reason": self.finish_reason,
        }


@dataclass(slots=True)
class _Spend:
    """What one call sent and holds: the variant serving it, the completions it got (a repair
    adds a second one), every attempt the router recorded, each request admitted with its worst
    case in micro-USD (one per sent attempt, in order; the last may have no attempt when the call
    broke off mid-request), the micro-USD its reservation holds so far, the worst-case tokens
    it holds against the token rate limits until it is recorded, and ``counted``: the price key,
    request and input count the first target's provider counted, when the
    byte bound did not fit a budget. ``chain`` is the router's chain the call was reserved on and
    ``start`` the index of the target it starts at (> 0: degraded). ``max_tokens`` is the output
    cap of its requests (a repair keeps the first request's), set when the first is admitted."""

    variant: Variant
    completions: list[Completion] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    admitted: list[tuple[Target, int]] = field(default_factory=list)
    held_micro_usd: int = 0
    tokens: TokenHold | None = None
    prices: list[tuple[ResolvedPrice, str | None]] = field(default_factory=list)
    priced_at: datetime | None = None
    charges: list[AttemptCharge] = field(default_factory=list)
    counted: tuple[str, CompletionRequest, int] | None = None
    chain: tuple[Target, ...] = ()
    start: int = 0
    max_tokens: int = 0

    def input_tokens(self, target: Target, request: CompletionRequest) -> int | None:
        """The counted input bound of ``request`` to ``target`` when that is the request the
        provider counted (a retry to the same target, not a repair or a fallback), else ``None``
        (the byte bound)."""
        if self.counted is None:
            return None
        key, counted_request, tokens = self.counted
        return tokens if key == _key(target) and counted_request == request else None


Intent = AppendedEntry[Reservation | None]
"""The committed ``intent`` entry; its ``work_result`` is the call's budget reservation (``None``
without metering)."""


@dataclass(frozen=True, slots=True)
class _Pending:
    """A call's step 9 write, complete and ready to append again: its record, its intent (with
    the reservation to settle), its spend (charges and token hold) and every row of the write."""

    record: CallRecord
    intent: Intent
    spend: _Spend
    rows: tuple[tuple[Any, dict[str, Any]], ...]


class Gateway:
    """Runs governed operations. One instance per process; safe for concurrent calls."""

    def __init__(
        self,
        *,
        tokens: TokenService,
        ledger: Ledger,
        router: Router,
        policies: dict[str, RoutePolicy],
        prices: PriceBook,
        clock: Clock,
        metering: MeteringService | None = None,
        toggles: ToggleSnapshot | None = None,
        privacy: PrivacyPolicy | None = None,
        models: ModelWatch | None = None,
        variants: VariantBook | None = None,
        count_timeout_s: float = COUNT_TIMEOUT_S,
        count_observer: Callable[[CountOutcome], None] | None = None,
        charge_observer: Callable[[str, Sequence[AttemptCharge]], None] | None = None,
        record_retry_delays_s: Sequence[float] = RECORD_RETRY_DELAYS_S,
        pending_retry_s: float = PENDING_RETRY_S,
    ) -> None:
        """``count_observer`` gets each token count of step 5; ``charge_observer`` gets, once a
        call (a shadow call too) is recorded, its operation and its charges, the rows just
        written to ``ai_operation_attempts`` (the metrics' cost per provider and model).
        ``record_retry_delays_s`` and ``pending_retry_s`` pace step 9's retries (seconds, see
        :data:`RECORD_RETRY_DELAYS_S`, :data:`PENDING_RETRY_S`)."""
        self._tokens = tokens
        self._ledger = ledger
        self.router = router
        self.variants = variants or default_book(policies)
        self._prices = prices
        self._clock = clock
        self.metering = metering
        self.models = models or ModelWatch()
        self._toggles = toggles
        self._privacy = privacy or PrivacyPolicy()
        self._shadows: set[asyncio.Task[None]] = set()
        self._count_timeout_s = count_timeout_s
        self._count_observer = count_observer
        self._charge_observer = charge_observer
        self._prepare_pool = ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="opsgate-prepare")
        self._record_retry_delays_s = tuple(record_retry_delays_s)
        self._pending_retry_s = pending_retry_s
        self._pending: list[_Pending] = []
        self._flushing = asyncio.Lock()
        self._retrier: asyncio.Task[None] | None = None

    async def govern(self, call: Call) -> Outcome:
        """Run ``call`` through the ten steps; raise an :class:`OpsgateError` subclass on refusal."""
        started = self._clock.monotonic()
        principal = self.authenticate(call)
        op = self.authorize(principal, call.operation)
        variant = self.choose_variant(principal, op)
        call.variant = variant.name
        call.response_headers.update(await self.rate_limit(principal, op))
        prepared, input_digest = await self.prepare(op, variant, call.body, call.content_type)
        prepared, privacy = self.minimise(op, prepared)
        spend = _Spend(variant, tokens=await self.take_tokens(principal, op, prepared))
        reserve = self.reserve(call, principal, op, prepared, spend)
        intent = await self.ledger_intent(call, principal, op, prepared, input_digest, reserve, privacy,
                                          spend)
        try:
            output = await self.route(call, op, prepared, spend, privacy, intent)
        except Exception as exc:
            await self.record_failure(call, principal, intent, spend, exc, started)
            raise
        outcome = await self.record(call, principal, intent, spend, output, started)
        outcome.privacy = privacy.report()
        self.shadow(call, principal, op, outcome)
        return outcome

    # shadow calls -------------------------------------------------------------------------------
    def shadow(self, call: Call, principal: Principal, op: Operation, live: Outcome) -> None:
        """After the user's answer is produced: when a variant rollout's shadow stage samples
        this call (:meth:`ToggleSnapshot.shadow_variant`), start :meth:`govern_shadow` as a
        background task the gateway tracks (:meth:`drain_shadows`). The caller does not wait.
        Nothing is shadowed without metering (no budget could govern it), when the candidate is
        no longer configured, or when ``live`` was degraded (its answer and cost come from a
        cheaper target, not the live variant's route, so comparing would mislead)."""
        if live.degraded:
            return
        name = None if self._toggles is None else self._toggles.shadow_variant(op.id, call.request_id)
        variant = None if name is None or self.metering is None else self.variants.serving(op.id, name)
        if variant is None or variant.name != name:
            return
        task = asyncio.create_task(self.govern_shadow(call, principal, op, variant, live))
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def govern_shadow(self, call: Call, principal: Principal, op: Operation, variant: Variant,
                            live: Outcome) -> None:
        """The live ``call`` again through ``variant``, as a governed call of its own (request
        id :func:`shadow_request_id`) whose answer nobody receives: validated and minimised with
        the variant's prompt; no rate or token limit (it must not take the user's room); reserved
        against the ``shadow`` budget scope in its ``intent`` entry (marked ``shadow`` and naming
        the live call), refused when that has no room (a ``shadow.refused`` entry and row: counted,
        never queued, never retried); routed and
        recorded like any call (log row ``shadow``), plus its ``shadow_calls`` row: whether it
        agrees with ``live`` (:func:`~opsgate.rollout.shadow.agrees`) and both costs. Never
        raises: a failure is recorded or logged."""
        # nobody waits for a shadow's answer: the live client leaving does not stop it
        shadow = replace(call, request_id=shadow_request_id(call.request_id), cancel=None)
        started = self._clock.monotonic()
        try:
            prepared, input_digest = await self.prepare(op, variant, call.body, call.content_type)
            prepared, privacy = self.minimise(op, prepared)
            spend = _Spend(variant)
            reserve = self.reserve(shadow, principal, op, prepared, spend, shadow=True)
            try:
                intent = await self.ledger_intent(shadow, principal, op, prepared, input_digest, reserve,
                                                  privacy, spend, shadow_of=call.request_id)
            except BudgetExceeded as refused:
                payload = {"request_id": shadow.request_id, "shadow_of": call.request_id, "operation": op.id,
                           "variant": variant.name, "reason": refused.detail}
                row = self._shadow_row(shadow, call, variant, live, REFUSED)
                await self._ledger.append("shadow.refused", payload, [(shadow_calls, row)])
                return
            try:
                output = await self.route(shadow, op, prepared, spend, privacy, intent)
            except Exception as exc:
                record = self._failure_record(shadow, principal, intent, spend, exc, started, shadow=True)
                row = self._shadow_row(shadow, call, variant, live, SHADOW_ERROR, record.cost_micro_usd)
                await self._write(record, intent, spend, [(shadow_calls, row)])
                return
            record = self._call_record(shadow, principal, intent, spend, started, error_code=None, shadow=True)
            agreed = agrees(op.id, live.output, output.model_dump(mode="json"))
            row = self._shadow_row(shadow, call, variant, live, SHADOW_OK, record.cost_micro_usd, agreed)
            await self._write(record, intent, spend, [(shadow_calls, row)])
        except Exception:
            log.exception("shadow call %s of %s could not be completed", shadow.request_id, call.request_id)

    def _shadow_row(self, shadow: Call, call: Call, variant: Variant, live: Outcome, status: str,
                    cost: int = 0, agreed: bool = False) -> dict[str, Any]:
        """The ``shadow_calls`` row of ``shadow``, the shadow call of ``call``."""
        return {"request_id": shadow.request_id, "live_request_id": call.request_id,
                "operation": call.operation, "variant": variant.name, "status": status, "agreed": agreed,
                "live_cost_micro_usd": live.cost_micro_usd, "shadow_cost_micro_usd": cost,
                "created_at": self._clock.now()}

    def close_prepare_pool(self) -> None:
        """Shutdown: let the :meth:`prepare` threads end once their work is done (no wait)."""
        self._prepare_pool.shutdown(wait=False)

    async def drain_shadows(self, timeout_s: float = SHADOW_DRAIN_S) -> None:
        """Shutdown: wait up to ``timeout_s`` for the shadow calls in flight, then cancel the
        rest (a cancelled call's reservation expires and is charged its worst case, like any
        call cut off by a crash). Returns when every shadow task has ended."""
        pending = set(self._shadows)
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=timeout_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    # 1 ------------------------------------------------------------------------------------------
    @step("authenticate")
    def authenticate(self, call: Call) -> Principal:
        """Verify the bearer token (401 on any failure)."""
        return self._tokens.verify(call.token)

    # 2 ------------------------------------------------------------------------------------------
    @step("authorize")
    def authorize(self, principal: Principal, operation_id: str) -> Operation:
        """Resolve the operation (404 if unknown), then its feature toggle for this user: kill
        switch, enabled, rollout bucket, opt-in (403 ``operation_disabled``)."""
        op = get_operation(operation_id)
        if self._toggles is not None:
            self._toggles.require(op.id, principal.user_id)
        return op

    def choose_variant(self, principal: Principal, op: Operation) -> Variant:
        """The variant serving ``principal`` for ``op``: a variant rollout's candidate when the
        user's bucket is within its percentage, else the live variant (sticky per user)."""
        name = DEFAULT_VARIANT if self._toggles is None else self._toggles.serving_variant(op.id, principal.user_id)
        return self.variants.serving(op.id, name)

    # 3 ------------------------------------------------------------------------------------------
    @step("rate_limit")
    async def rate_limit(self, principal: Principal, op: Operation) -> Mapping[str, str]:
        """Per user and per (user, operation) request limits (429 with Retry-After); returns the
        RateLimit header fields of the counted request (none without request limits)."""
        if self.metering is None:
            return {}
        return await self.metering.rate_limit(principal.user_id, op.id)

    # 4 ------------------------------------------------------------------------------------------
    async def prepare(self, op: Operation, variant: Variant, body: bytes,
                      content_type: str | None = JSON) -> tuple[Prepared, str]:
        """:meth:`validate`, in a thread of the gateway's own pool (:data:`PREPARE_THREADS`, with
        the caller's context variables, as :func:`asyncio.to_thread` passes them) when ``body`` has
        at least ``op.off_loop_bytes`` bytes (:data:`opsgate.operations.base.OFF_LOOP_BYTES`; 0 for
        the calendar operations), so a long parse does not hold the event loop and with it every
        other request, health checks included (tester A F1: a 200-byte calendar held the process
        41 s; a 1.9 MB CSV held /healthz 2.5 s). A smaller body is validated on the loop, without
        the thread hop."""
        if len(body) < op.off_loop_bytes:
            return self.validate(op, variant, body, content_type)
        work = functools.partial(contextvars.copy_context().run, self.validate, op, variant, body, content_type)
        return await asyncio.get_running_loop().run_in_executor(self._prepare_pool, work)

    @step("validate")
    def validate(self, op: Operation, variant: Variant, body: bytes,
                 content_type: str | None = JSON) -> tuple[Prepared, str]:
        """Parse and validate the JSON body (:func:`opsgate.bodies.decode`: 415 for a media type
        that is not JSON, 422 for a body that is not JSON, repeats a key or overflows an integer); prepare the provider request with the variant's
        prompt version.

        Returns the prepared request and the SHA-256 hex of the body (the ledger stores only this).
        Error messages name fields and rules, never submitted values.
        """
        if len(body) > MAX_BODY_BYTES:
            raise ContentTooLarge(f"The request body exceeds {MAX_BODY_BYTES} bytes")
        payload = bodies.decode_json(body, content_type)
        try:
            data = op.Input.model_validate(payload)
        except ValidationError as exc:
            raise invalid_input(exc, op.Input, "The request body does not match the operation's input") from None
        return prepare_input(op, data, variant.prompt), hashlib.sha256(body).hexdigest()

    @step("minimise")
    def minimise(self, op: Operation, prepared: Prepared) -> tuple[Prepared, CallPrivacy]:
        """The prepared request as it will really be sent: secrets masked, personal data
        pseudonymised per the privacy policy (:mod:`opsgate.operations.privacy`). Runs before
        the reservation, so the reserved worst case covers this prompt."""
        request, privacy = self._privacy.minimise(op.id, prepared.request, prepared.people)
        return replace(prepared, request=request), privacy

    # 5 ------------------------------------------------------------------------------------------
    @step("take_tokens")
    async def take_tokens(self, principal: Principal, op: Operation, prepared: Prepared) -> TokenHold | None:
        """Hold the call's worst-case tokens against the token rate limits (429); the hold is
        settled to the billed tokens when the call is recorded. ``None`` without limits."""
        if self.metering is None:
            return None
        return await self.metering.take_tokens(principal.user_id, op.id, prepared.request)

    @step("reserve")
    def reserve(
        self, call: Call, principal: Principal, op: Operation, prepared: Prepared, spend: _Spend,
        *, shadow: bool = False, input_tokens: int | None = None, retry: bool = False,
    ) -> InTransaction[Reservation] | None:
        """The work that reserves the worst case of the first request (``prepared.request`` to
        the first target the router will try, at its price, its input bounded by the prompt's
        bytes or by ``input_tokens`` when counted) against every applicable budget (402). It
        commits inside the intent's transaction (step 6): a call is admitted and ledgered
        atomically, and a refused call leaves no intent. ``None`` without metering. A ``shadow``
        call reserves against the ``shadow`` budget scope instead, and is never degraded.

        The last try (a ``retry``, or the first when the first target's provider cannot count)
        counts a refusal against the budgets without room, and where every one of them is
        ``cheaper`` it reserves at the first further target of the chain (kept in
        ``spend.chain``) that fits instead: the call is degraded."""
        if self.metering is None:
            return None
        spend.chain = self.router.chain(spend.variant.policy)
        first, *further = (_key(t) for t in spend.chain)
        last = retry or not self.countable(spend.chain[0])
        return self.metering.reserve_in(call.request_id, principal.user_id, op.id, prepared.request,
                                        first, shadow=shadow, input_tokens=input_tokens,
                                        cheaper=further if last and not shadow else (), note=last)

    @step("count_input")
    async def count_input(
        self, call: Call, principal: Principal, op: Operation, prepared: Prepared, spend: _Spend,
        *, shadow: bool = False,
    ) -> InTransaction[Reservation] | None:
        """When the byte bound did not fit a budget: ask the first target's provider for the
        exact input count of ``prepared.request`` (the minimised request, as it will be sent)
        and return the last try's work (:meth:`reserve` with ``retry``): at that count
        (kept in ``spend.counted`` for the first request's admission), or at the byte
        bound again when the count failed or timed out. ``None`` when the provider has no count
        API: the first try was the last, its refusal stands."""
        first = spend.chain[0]
        counter = self.router.counter(first.provider)
        if self.metering is None or counter is None or not self.countable(first):
            return None
        counted = await count_input(counter, prepared.request, first.model, self._count_timeout_s)
        if self._count_observer is not None:
            self._count_observer(counted)
        if counted.input_tokens is not None:
            spend.counted = (_key(first), prepared.request, counted.input_tokens)
        return self.reserve(call, principal, op, prepared, spend, shadow=shadow,
                            input_tokens=counted.input_tokens, retry=True)

    def countable(self, target: Target) -> bool:
        """Whether a reservation for ``target`` may rest on its provider's input count: the
        provider counts (:meth:`Router.counter`) and ``target`` may serve no other model
        (:meth:`PriceBook.may_serve`: configured or seen). The count is the requested model's;
        a substitute with another tokenizer can bill more tokens for the same text, so such a
        target keeps the byte bound, which holds for every tokenizer of the three providers."""
        if self.router.counter(target.provider) is None:
            return False
        return not self._prices.may_serve(target.provider, target.model)

    # 6 ------------------------------------------------------------------------------------------
    @step("ledger_intent")
    async def ledger_intent(
        self,
        call: Call,
        principal: Principal,
        op: Operation,
        prepared: Prepared,
        input_digest: str,
        reserve: InTransaction[Reservation] | None,
        privacy: CallPrivacy,
        spend: _Spend,
        shadow_of: str | None = None,
    ) -> Intent:
        """Durably append the ``intent`` entry with the reservation (its ``work_result``);
        when the byte bound does not fit a budget, once more with the exact count
        (:meth:`count_input`) if the provider gives one. :class:`LedgerUnavailable` (503) or a
        budget refusal stops the call here and gives its held tokens back. The entry counts what
        was masked and pseudonymised, never the values, and names the variant serving the call
        with its prompt's version id and digest, never the prompt. A shadow call's entry is marked ``shadow`` and names the live call
        (``shadow_of``); a degraded call's entry adds ``degraded: true`` and the ``target`` chosen."""
        payload = {
            "request_id": call.request_id,
            "user_id": principal.user_id,
            "operation": op.id,
            "input_sha256": input_digest,
            "policy": spend.variant.targets(),
            "privacy": privacy.ledger_counts(),
            **spend.variant.ledger_ref(),
            **({"shadow": True, "shadow_of": shadow_of} if shadow_of else {}),
        }
        try:
            if reserve is None:
                return await self._ledger.append("intent", payload)
            try:
                intent = await self._ledger.append("intent", payload, work=reserve,
                                                   amend=_degraded(spend.chain))
            except BudgetExceeded:
                last = await self.count_input(call, principal, op, prepared, spend,
                                              shadow=shadow_of is not None)
                if last is None:
                    raise
                intent = await self._ledger.append("intent", payload, work=last,
                                                   amend=_degraded(spend.chain))
            spend.held_micro_usd = intent.work_result.worst_micro_usd
            spend.start = intent.work_result.choice
            return intent
        except BaseException:
            if self.metering is not None:
                await self.metering.settle_tokens(spend.tokens, 0)
            raise

    # 7 ------------------------------------------------------------------------------------------
    @step("route")
    async def route(
        self, call: Call, op: Operation, prepared: Prepared, spend: _Spend, privacy: CallPrivacy,
        intent: Intent,
    ) -> BaseModel:
        """Send the request along the operation's provider chain, map the call's pseudonyms in
        the answer back, and validate it. Every request is first admitted (:meth:`admit`).

        An answer that does not match ``op.answer_model(prepared)`` (its ``ModelOutput``, or the
        tighter model the input chose) gets one repair request that quotes the
        validation errors; a second miss raises :class:`InvalidModelOutput`. A degraded call
        starts at its reserved target: the dearer targets before it had no room. An answer whose
        generation stopped early (:attr:`FinishReason.incomplete`, e.g. cut at ``max_tokens``)
        is never returned: the adapters refuse it, so the router falls back as after any
        unusable answer, and one that still arrives here raises :class:`IncompleteAnswer` (502).
        With ``call.cancel``, no retry, fallback or repair request starts once the client has
        gone (:class:`ClientClosed`, 499 ``client_closed``).
        """
        policy = spend.variant.policy
        if spend.start:
            policy = replace(policy, chain=spend.chain[spend.start:])
        request = prepared.request
        admit = self.admit(call, spend, intent)
        caller = CALLER.set(call.cancel)  # the router reads it (its signature stays as it is)
        try:
            for attempt in range(2):
                if attempt and call.cancel is not None and await call.cancel.gone():
                    raise ClientClosed()
                routed = await self.router.complete(request, policy, admit)
                spend.completions.append(routed.completion)
                spend.attempts += routed.attempts
                self.models.unavailable(op.id, _unavailable(routed.attempts))
                self.models.completed(op.id, routed.completion)
                _require_complete(routed.completion)
                try:
                    answer = op.answer_model(prepared).model_validate(privacy.restore(routed.completion.data))
                except ValidationError as exc:
                    if attempt:
                        raise InvalidModelOutput(routed.completion.provider) from None
                    request = repair_request(prepared.request, exc)
                    continue
                return op.finish(prepared, answer)
        finally:
            CALLER.reset(caller)
        raise AssertionError("unreachable")

    def admit(self, call: Call, spend: _Spend, intent: Intent) -> Admit:
        """The router's hook before each request leaves: its worst case at the target's price is
        added to ``spend.admitted``; when what the call may already owe (:meth:`charges`) plus
        that worst case is more than the reservation holds, the reservation is first extended by
        the difference in a ledger ``extend`` entry, atomically on every budget, or the call
        stops with :class:`BudgetExceeded` (402) and nothing more is sent."""

        async def admit(target: Target, request: CompletionRequest, routing: Sequence[Attempt]) -> None:
            spend.max_tokens = request.max_tokens
            so_far = replace(spend, attempts=[*spend.attempts, *routing], prices=[])
            self.learn_served(so_far.attempts)
            self.learn_output(so_far.attempts, request.max_tokens)
            worst = attempt_worst_case_micro_usd(request, _key(target), self._prices,
                                                 spend.input_tokens(target, request))
            owed = self.owed(so_far, self._clock.now())
            missing = owed + worst - spend.held_micro_usd
            reservation = intent.work_result
            if missing > 0 and reservation is not None and reservation.budgets and self.metering:
                payload = {"request_id": call.request_id, "intent_seq": intent.seq,
                           "target": _key(target), "extend_micro_usd": missing,
                           "held_micro_usd": spend.held_micro_usd + missing}
                await self._ledger.append("extend", payload,
                                          work=self.metering.extend_in(reservation, missing))
            spend.held_micro_usd = max(spend.held_micro_usd, owed + worst)
            spend.admitted.append((target, worst))

        return admit

    def owed(self, spend: _Spend, now: datetime) -> int:
        """The most the requests ``spend`` has admitted so far can be charged when the call is
        metered, in micro-USD: per request, the highest of its :meth:`charges` at ``now`` and at
        every later instant of the reservation horizon where a price of its models may change
        (:meth:`PriceBook.change_times`). The call is metered within that horizon, at the meter's
        time, so an answer taken off-peak and metered after a peak window opened (DeepSeek's
        01:00 UTC) costs no more than this. Before, the answers were priced at ``now`` only, and
        the extension for a repair or a retry taken just before a price rise held too little."""
        models = {(a.provider, m) for a in spend.attempts if a.sent and a.usage is not None
                  for m in (a.model, a.served_model) if m}
        most: dict[int, int] = {}
        for at in self._prices.change_times(models, now) if models else [now]:
            for c in self.charges(spend, at):
                most[c.seq] = max(most.get(c.seq, 0), c.cost_micro_usd)
        return sum(most.values())

    # 8 ------------------------------------------------------------------------------------------
    @step("meter")
    def meter(self, spend: _Spend) -> tuple[Usage, int]:
        """Total reported usage and the call's cost in integer micro-USD: the sum of
        :meth:`charges` at the call's time (kept in ``spend.charges``)."""
        self.learn_served(spend.attempts)
        self.learn_output(spend.attempts, spend.max_tokens)
        now = self._clock.now()
        spend.priced_at = now
        spend.charges = self.charges(spend, now, spend.prices)
        usage = Usage()
        for c in spend.charges:
            usage += c.usage
        return usage, sum(c.cost_micro_usd for c in spend.charges)

    def learn_served(self, attempts: Sequence[Attempt]) -> None:
        """Teach the price book every model other than the requested one that ``attempts`` were
        answered with (:meth:`PriceBook.observe_served`, in memory), so that every later
        reservation for that target covers its price: a dearer model a provider substitutes
        unannounced can take a budget over its limit only with the requests to that target
        already sent when its first answer arrives. Called as soon as answers are seen: before
        each further request of a call is admitted and when the call is metered."""
        for a in attempts:
            if a.sent and self._prices.observe_served(a.provider, a.model, a.served_model):
                log.warning("%s/%s answered by %s: budget reservations for it now cover that "
                            "model's price", a.provider, a.model, a.served_model)

    def learn_output(self, attempts: Sequence[Attempt], max_tokens: int) -> None:
        """Teach the price book every target that billed more output than the ``max_tokens``
        cap its request carried (:meth:`PriceBook.observe_output`, in memory): Gemini bills its
        thoughts as output, and Google's thinking guide describes them as apart from
        ``maxOutputTokens``; any provider may ignore its cap. Every later reservation for that
        target then holds output at the highest ratio seen, so, as with an unannounced dearer
        model (:meth:`learn_served`), only the requests already sent when the first such answer
        arrives can cost more than they hold. Called where :meth:`learn_served` is."""
        for a in attempts:
            if (a.sent and a.usage is not None
                    and self._prices.observe_output(a.provider, a.model, max_tokens, a.usage.output_tokens)):
                log.warning("%s/%s billed %d output tokens for a cap of %d: budget reservations for it "
                            "now hold that ratio", a.provider, a.model, a.usage.output_tokens, max_tokens)

    def charges(
        self, spend: _Spend, at: datetime, prices: list[tuple[ResolvedPrice, str | None]] | None = None,
    ) -> list[AttemptCharge]:
        """One :class:`AttemptCharge` per admitted request the provider may have billed (see
        :mod:`opsgate.metering.attempts`): reported usage priced by :meth:`price` (appended to
        ``prices`` when given), unknown usage at that request's worst case. ``admit`` passes
        the attempts of the routing call in progress too. A request admitted
        without a recorded attempt (the call broke off while it was in flight) is estimated."""
        sent = [a for a in spend.attempts if a.sent]
        found = []
        for seq, (target, worst) in enumerate(spend.admitted):
            a = sent[seq] if seq < len(sent) else None
            if a is None:
                found.append(AttemptCharge(seq, target.provider, target.model, None, INTERRUPTED,
                                           ESTIMATED, Usage(), worst))
                continue
            how = billing(sent=True, outcome_kind=a.outcome_kind, http_status=a.http_status,
                          reported=a.usage is not None)
            if how == ESTIMATED:
                found.append(AttemptCharge(seq, a.provider, a.model, None, a.outcome_kind,
                                           ESTIMATED, Usage(), worst))
            elif how == REPORTED and a.usage is not None:
                resolved, flag = self.price(spend.variant, a.provider, a.model, a.served_model,
                                            a.usage, at)
                if prices is not None:
                    prices.append((resolved, flag))
                found.append(AttemptCharge(seq, a.provider, a.model, a.served_model, a.outcome_kind,
                                           REPORTED, a.usage, cost_micro_usd(a.usage, resolved.price)))
        return found

    def price(
        self, variant: Variant, provider: str, model: str, served_model: str | None, usage: Usage,
        at: datetime,
    ) -> tuple[ResolvedPrice, str | None]:
        """The price ``usage`` of ``provider``/``model`` pays: the served model's when the provider
        substituted another model; when that model has no known price, the dearer, per token kind,
        of the requested model's price and the dearest on the variant's chain, flagged
        ``served_model_unpriced``. Raises UnknownModelPrice for an unpriced requested model."""
        tokens = usage.total_tokens - usage.output_tokens
        requested = self._prices.price_at(provider, model, at, tokens)
        if not substituted(model, served_model):
            return requested, None
        served = self._prices.lookup(provider, served_model or model, at, tokens)
        if served is not None:
            return served, None
        log.warning("%s/%s served by %s, which has no price: charged at the dearer price",
                    provider, model, served_model)
        chain = [self._prices.price_for(target) for target in variant.targets()]
        return replace(requested, price=_dearer(requested.price, *chain)), SERVED_MODEL_UNPRICED

    # 9 ------------------------------------------------------------------------------------------
    @step("record")
    async def record(
        self,
        call: Call,
        principal: Principal,
        intent: Intent,
        spend: _Spend,
        output: BaseModel,
        started: float,
    ) -> Outcome:
        """Append the ``result`` entry and the ``ai_operation_log`` row and settle the reservation,
        in one transaction; build the Outcome. When the store refuses the write (see
        :meth:`_write`) the answer is still returned, ``recorded=False``: the provider served
        and billed it, its intent is durable and its reservation stays held until the pending
        result is written, so refusing it would only make the user pay again for a retry."""
        record = self._call_record(call, principal, intent, spend, started, error_code=None)
        recorded = await self._write(record, intent, spend)
        last = spend.completions[-1]
        return Outcome(
            request_id=call.request_id,
            operation=call.operation,
            output=output.model_dump(mode="json"),
            provider=last.provider,
            model=last.model,
            usage=record.usage,
            cost_micro_usd=record.cost_micro_usd,
            latency_ms=record.latency_ms,
            attempts=record.attempts,
            degraded=record.degraded,
            recorded=recorded,
            served_model=record.served_model,
        )

    @step("record")
    async def record_failure(
        self,
        call: Call,
        principal: Principal,
        intent: Intent,
        spend: _Spend,
        exc: Exception,
        started: float,
    ) -> None:
        """Record a failed call (every request the provider may have billed is still metered)
        and settle its reservation; usage billed unseen is charged at that request's worst case.
        When the store refuses the write the record is kept pending (:meth:`_write`) and the
        call's own error still goes to the caller, not ``audit_unavailable``."""
        record = self._failure_record(call, principal, intent, spend, exc, started)
        await self._write(record, intent, spend)

    def _failure_record(
        self, call: Call, principal: Principal, intent: Intent, spend: _Spend, exc: Exception,
        started: float, *, shadow: bool = False,
    ) -> CallRecord:
        code = exc.code if isinstance(exc, OpsgateError) else "internal_error"
        attempts = list(getattr(exc, "attempts", ()) or ())
        spend.attempts += [a for a in attempts if isinstance(a, Attempt)]
        self.models.unavailable(call.operation, _unavailable(attempts))
        stopped = exc.finish_reason if isinstance(exc, ProviderError) else None
        return self._call_record(call, principal, intent, spend, started, error_code=code, shadow=shadow,
                                 finish_reason=stopped)

    def _call_record(
        self,
        call: Call,
        principal: Principal,
        intent: Intent,
        spend: _Spend,
        started: float,
        *,
        error_code: str | None,
        shadow: bool = False,
        finish_reason: FinishReason | None = None,
    ) -> CallRecord:
        """The :class:`CallRecord` of the call so far; ``finish_reason`` is the stop reason of
        the answer a failed call ended on (:attr:`ProviderError.finish_reason`), else the last
        completion's is recorded."""
        usage, cost = self.meter(spend)
        provider, model, served_model, price, flag = self._named(spend)
        last = spend.completions[-1] if spend.completions else None
        stopped = finish_reason or (last.finish_reason if last else None)
        return CallRecord(
            request_id=call.request_id,
            user_id=principal.user_id,
            operation=call.operation,
            intent_seq=intent.seq,
            status="ok" if error_code is None else "error",
            error_code=error_code,
            provider=provider,
            model=model,
            served_model=served_model,
            attempts=len(spend.attempts),
            latency_ms=(self._clock.monotonic() - started) * 1000,
            provider_latency_ms=sum(c.provider_latency_ms for c in spend.completions) or None,
            usage=usage,
            cost_micro_usd=cost,
            created_at=spend.priced_at or self._clock.now(),
            price=price,
            price_flag=flag,
            variant=spend.variant.name,
            repaired=len(spend.completions) > 1,
            shadow=shadow,
            degraded=spend.start > 0,
            finish_reason=stopped.value if stopped else None,
        )

    def _named(
        self, spend: _Spend,
    ) -> tuple[str | None, str | None, str | None, ResolvedPrice | None, str | None]:
        """The provider, model, served model, price and price flag a call's record names, after
        :meth:`meter`: the last completion's (a success; its price is the last one
        :meth:`charges` resolved, which is that completion's request), else, for a failed call,
        those of its last *billed* request (``spend.charges[-1]``, the last
        ``ai_operation_attempts`` row): a reported charge with the price it was charged at, an
        estimated one with the requested model's price (source and version) at the call's time,
        from which its worst case was computed, and its served model unknown, so the requested
        model is named, as for a success without one. When several requests were billed, the
        attempt rows hold each one's provider, model and cost; the record names the last.
        All ``None`` when nothing was billed."""
        if spend.completions:
            last = spend.completions[-1]
            price, flag = spend.prices[-1] if spend.prices else (None, None)
            return last.provider, last.model, last.served_model or last.model, price, flag
        if not spend.charges:
            return None, None, None, None, None
        billed = spend.charges[-1]
        if billed.billing == REPORTED and spend.prices:
            price, flag = spend.prices[-1]
        else:
            price = self._prices.lookup(billed.provider, billed.model, spend.priced_at or self._clock.now())
            flag = None
        return billed.provider, billed.model, billed.served_model or billed.model, price, flag

    async def _write(self, record: CallRecord, intent: Intent, spend: _Spend,
                     extra: Sequence[tuple[Any, dict[str, Any]]] = ()) -> bool:
        """One transaction: the ``result`` entry, the log row, one attempt row per billed request,
        the ``extra`` rows and (with metering) the settlement, flagged when a request was charged
        its worst case; then :meth:`_recorded`. True once written.

        When the store refuses it (:class:`LedgerUnavailable`: disk full, a database restart),
        it is tried again after each of ``record_retry_delays_s``, each time checking under the
        append lock that the call is not already closed (:func:`~opsgate.ledger.recovery.unless_closed`:
        a commit whose acknowledgement was lost is not written twice). If the store still
        refuses it, the write is kept pending in the process (its reservation stays held, so no
        overspend) for the background retry (:meth:`flush_pending`), and False is returned. The
        first try issues exactly the statements it always did."""
        rows: list[tuple[Any, dict[str, Any]]] = [(ai_operation_log, record.log_row()), *extra]
        rows += [(ai_operation_attempts, c.row(record.request_id, record.created_at))
                 for c in spend.charges]
        pending = _Pending(record, intent, spend, tuple(rows))
        try:
            result = await self._append_result(pending, self._settle_work(pending))
        except LedgerUnavailable:
            try:
                for delay in self._record_retry_delays_s:
                    await asyncio.sleep(delay)
                    try:
                        await self._write_again(pending)
                        return True
                    except LedgerUnavailable:
                        continue
            except asyncio.CancelledError:  # the caller went away: the write is still owed
                self._defer(pending)
                raise
            self._defer(pending)
            return False
        await self._recorded(pending, result)
        return True

    def _settle_work(self, pending: _Pending) -> InTransaction[Any] | None:
        """The settlement of ``pending``'s reservation (``None`` without one or without metering)."""
        reservation = pending.intent.work_result
        if reservation is None or self.metering is None:
            return None
        estimated = any(c.billing == ESTIMATED for c in pending.spend.charges)
        return self.metering.settle_in(reservation, pending.record.cost_micro_usd, unknown_usage=False,
                                       estimated=estimated)

    async def _append_result(self, pending: _Pending, work: InTransaction[Any] | None) -> AppendedEntry[Any]:
        return await self._ledger.append("result", pending.record.ledger_payload(), pending.rows, work=work)

    async def _write_again(self, pending: _Pending) -> None:
        """A later try of ``pending``'s write, idempotent per call (see :meth:`_write`); then
        :meth:`_recorded`. A call found already recorded (by a lost acknowledgement) is done; one
        ``opsgate ledger recover`` closed as ``interrupted`` meanwhile is dropped, logged (recovery
        released its reservation at its worst case). Raises :class:`LedgerUnavailable` while the store
        refuses it."""
        try:
            result = await self._append_result(pending, unless_closed(pending.record.request_id,
                                                                      self._settle_work(pending)))
        except ResultClosed as closed:
            if closed.by != RECORDED:
                log.warning("the pending result of %s was not written: its intent was %s first",
                            closed.request_id, closed.by)
                return
            result = None
        await self._recorded(pending, result)

    async def _recorded(self, pending: _Pending, result: AppendedEntry[Any] | None) -> None:
        """After the write committed (``result`` None: found committed by an earlier try): the
        charges go to the charge observer, the token hold settles to the billed tokens (kept at
        its worst case when usage is unknown) and overspend events go out (not for a shadow
        call: its budget is the shadow scope's, and an event would disable the live operation)."""
        record, spend = pending.record, pending.spend
        self._charged(record.operation, spend.charges)
        reservation = pending.intent.work_result
        if reservation is None or self.metering is None:
            return
        estimated = any(c.billing == ESTIMATED for c in spend.charges)
        await self.metering.settle_tokens(spend.tokens, None if estimated else record.usage.total_tokens)
        if not record.shadow and result is not None:
            await self.metering.settled(reservation, result.work_result)

    # pending results ----------------------------------------------------------------------------
    @property
    def pending_results(self) -> int:
        """How many calls' results are waiting in this process for the store to take them."""
        return len(self._pending)

    def storage_ready(self) -> bool:
        """False while results are pending or the store refused the last write
        (:meth:`Ledger.storage_failing`): what ``/readyz`` reports. Reads two attributes."""
        return not self._pending and not self._ledger.storage_failing()

    def _defer(self, pending: _Pending) -> None:
        log.error("the result of %s could not be recorded (the store refuses writes); kept pending, "
                  "retried every %.1f s", pending.record.request_id, self._pending_retry_s)
        self._pending.append(pending)
        if self._retrier is None or self._retrier.done():
            self._retrier = asyncio.create_task(self._retry_pending())

    async def _retry_pending(self) -> None:
        """The background retry: every ``pending_retry_s`` seconds, :meth:`flush_pending`, until
        nothing is pending."""
        while self._pending:
            await asyncio.sleep(self._pending_retry_s)
            try:
                await self.flush_pending()
            except Exception:  # a bug, not the store: keep the results, keep trying
                log.exception("retrying the pending results failed")

    async def flush_pending(self) -> int:
        """Write the pending results, oldest first, each idempotently (:meth:`_write_again`),
        stopping at the first the store still refuses; return how many remain. One flush at
        a time (a lock), so a result's follow-up runs once."""
        async with self._flushing:
            while self._pending:
                try:
                    await self._write_again(self._pending[0])
                except LedgerUnavailable:
                    break
                self._pending.pop(0)
            return len(self._pending)

    async def drain_pending(self) -> None:
        """Shutdown, before the ledger closes: stop the background retry, try the pending
        results once more, and log each still pending (its intent stays open; ``opsgate ledger
        recover`` closes it as ``interrupted`` and releases its reservation at its worst case)."""
        if self._retrier is not None:
            self._retrier.cancel()
            await asyncio.gather(self._retrier, return_exceptions=True)
        if await self.flush_pending():
            for pending in self._pending:
                log.error("the result of %s was never recorded: `opsgate ledger recover` will close "
                          "it as interrupted", pending.record.request_id)

    def _charged(self, operation: str, charges: Sequence[AttemptCharge]) -> None:
        if self._charge_observer is not None:
            self._charge_observer(operation, charges)


def shadow_request_id(request_id: str) -> str:
    """The request id of ``request_id``'s shadow call (``<id>.shadow``, at most 64 characters)."""
    return request_id[:57] + ".shadow"


def _key(target: Target) -> str:
    """``provider/model``: the price book's key of ``target``."""
    return f"{target.provider}/{target.model}"


def _degraded(chain: Sequence[Target]) -> Callable[[Reservation], dict[str, Any]]:
    """The intent's extra fields for a reservation on ``chain``: ``degraded`` and the ``target``
    chosen when it is not the first, none otherwise."""
    return lambda r: {"degraded": True, "target": _key(chain[r.choice])} if r.degraded else {}


def _require_complete(completion: Completion) -> None:
    """Raise :class:`IncompleteAnswer` (502) for a ``completion`` whose generation stopped
    early (:attr:`FinishReason.incomplete`): the pipeline's own check, for a provider that
    returned one instead of raising as the built-in adapters do."""
    if completion.finish_reason.incomplete:
        raise IncompleteAnswer(completion.provider, completion.finish_reason,
                               completion.raw_finish_reason,
                               provider_request_id=completion.provider_request_id)


def _unavailable(attempts: Any) -> list[tuple[str, str]]:
    """The (provider, model) targets among ``attempts`` that answered ``model_unavailable``."""
    return [(a.provider, a.model) for a in attempts if isinstance(a, Attempt)
            and a.outcome_kind == MODEL_UNAVAILABLE]


def _dearer(first: ModelPrice, *others: ModelPrice) -> ModelPrice:
    """Per token kind, the highest of the prices (reported under ``first``'s model name)."""
    return replace(first, **{f: max(getattr(p, f) for p in (first, *others)) for f in PRICE_FIELDS})
